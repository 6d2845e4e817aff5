"""conv_transpose2d: every backend against a naive scatter loop, finite differences and PyTorch when
importable; the layer, empty batches and bad arguments."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
import fastcnn.functional as F
from fastcnn import layers as L

from . import reference as ref
from .conftest import BACKENDS

try:
    import torch
except ImportError:
    torch = None

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def naive_conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation):
    """Every input element scatters its weighted kernel into the full output, which is then cut."""
    n, c_in, h, wd = x.shape
    _, cog, kh, kw = w.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    full = np.zeros((n, cog * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw))
    cig = c_in // groups
    for s in range(n):
        for ci in range(c_in):
            g = ci // cig
            for r in range(h):
                for q in range(wd):
                    for co in range(cog):
                        for i in range(kh):
                            for j in range(kw):
                                full[s, g * cog + co, r * sh + i * dh, q * sw + j * dw] += x[s, ci, r, q] * w[ci, co, i, j]
    y = full[:, :, ph: full.shape[2] - ph, pw: full.shape[3] - pw]
    return y if b is None else y + b[:, None, None]


@st.composite
def cases(draw):
    groups = draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    return dict(n=draw(st.integers(1, 2)), c_in=groups * draw(st.integers(1, 2)), cog=draw(st.integers(1, 2)),
                groups=groups, h=draw(st.integers(1, 5)), w=draw(st.integers(1, 5)), kernel=kernel, stride=stride,
                padding=padding, output_padding=output_padding, dilation=dilation,
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2**31)))


def _args(case):
    return (case["stride"], case["padding"], case["output_padding"], case["groups"], case["dilation"])


@SETTINGS
@given(case=cases())
def test_conv_transpose2d_matches_naive_loops(case):
    rng = np.random.default_rng(case["seed"])
    d = case["dtype"]
    x = rng.standard_normal((case["n"], case["c_in"], case["h"], case["w"])).astype(d)
    w = rng.standard_normal((case["c_in"], case["cog"]) + case["kernel"]).astype(d)
    b = rng.standard_normal(case["cog"] * case["groups"]).astype(d)
    try:
        want = naive_conv_transpose2d(x, w, b, *_args(case))
        assert min(want.shape[2:]) >= 1
    except (ValueError, AssertionError):
        with pytest.raises(ValueError, match="empty output"):
            F.conv_transpose2d(x, w, b, *_args(case))
        return
    tol = dict(rtol=2e-4, atol=2e-5) if d == np.float32 else dict(rtol=1e-10, atol=1e-12)
    gy = rng.standard_normal(want.shape).astype(d)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for backend in BACKENDS:
        y = F.conv_transpose2d(x, w, b, *_args(case), backend=backend)
        assert y.dtype == d
        np.testing.assert_allclose(y, want, **tol)
        gx, gw, gb = F.conv_transpose2d_backward(gy, x, w, *_args(case), backend=backend)
        # The op is linear in x and in w: its gradients are the adjoint, <gy, T(x)> = <gx, x>.
        np.testing.assert_allclose((gx.astype(np.float64) * x64).sum(), (gy * (want - b[:, None, None])).sum(),
                                   rtol=1e-3 if d == np.float32 else 1e-9, atol=1e-3 if d == np.float32 else 1e-9)
        np.testing.assert_allclose((gw.astype(np.float64) * w64).sum(), (gy * (want - b[:, None, None])).sum(),
                                   rtol=1e-3 if d == np.float32 else 1e-9, atol=1e-3 if d == np.float32 else 1e-9)
        np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)), **tol)


def test_1x1_conv_transpose2d_with_output_padding(backend):
    """A 1x1, stride-1 transposed conv with dilation and ``output_padding``: its output is larger than its
    input, so it is not the product per sample a 1x1 conv is (``ConvGeometry.pointwise``)."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(2)
    want = naive_conv_transpose2d(x, w, b, (1, 1), (0, 0), (1, 1), 1, (2, 2))
    y = F.conv_transpose2d(x, w, b, 1, 0, 1, 1, 2, backend=backend)
    assert y.shape == (2, 2, 5, 6)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


def test_strided_conv_transpose2d_with_output_padding_runs_by_phases(monkeypatch):
    """A stride-2 transposed conv with ``output_padding`` 1 (a last row and column no input reaches) on
    the Numba backend: the forward pass is the strided conv's input gradient, phase by phase in
    conv_channels, and equals the naive loops."""
    from fastcnn.kernels import conv_channels
    calls = []
    real = conv_channels.conv2d_channels_grad_input
    monkeypatch.setattr(conv_channels, "conv2d_channels_grad_input", lambda *args: calls.append(1) or real(*args))
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 6, 5, 4)), rng.standard_normal((6, 16, 3, 3)), rng.standard_normal(16)
    want = naive_conv_transpose2d(x, w, b, (2, 2), (1, 1), (1, 1), 1, (1, 1))
    y = F.conv_transpose2d(x, w, b, 2, 1, 1, 1, 1, backend="numba")
    assert y.shape == (3, 16, 10, 8) and calls == [1]
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("args", [((2, 2), 1, 1, 1, 1), ((2, 1), (0, 1), (1, 0), 2, 1), (1, 1, 1, 1, 2)])
def test_conv_transpose2d_finite_differences_and_pytorch(args, backend):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 3, 3, 2)), rng.standard_normal(3 * args[3])
    y = F.conv_transpose2d(x, w, b, *args, backend=backend)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = F.conv_transpose2d_backward(gy, x, w, *args, backend=backend)

    def loss():
        return float((F.conv_transpose2d(x, w, b, *args, backend=backend) * gy).sum())

    for got, wrt in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(got, ref.numeric_grad(loss, wrt), rtol=1e-6, atol=1e-8)
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
        out = torch.nn.functional.conv_transpose2d(tx, tw, tb, *args)
        out.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
        for got, t in ((gx, tx), (gw, tw), (gb, tb)):
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_conv_transpose_layer_round_trip_and_empty_batches(tmp_path, backend):
    layer = L.ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rng=0, backend=backend)
    assert layer.params["weight"].shape == (4, 3, 3, 3)
    model = fastcnn.Sequential([layer, L.ReLU()], input_shape=(4, 5, 5))
    assert model.output_shapes()[0] == (6, 10, 10)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    model.save(tmp_path / "t.npz")
    np.testing.assert_allclose(fastcnn.load_model(tmp_path / "t.npz").predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    empty = np.zeros((0, 4, 5, 5), np.float32)
    y = layer.forward(empty, training=True)
    assert y.shape == (0, 6, 10, 10)
    assert layer.backward(y).shape == empty.shape


def test_conv_transpose_bad_arguments():
    x, w = np.zeros((1, 4, 3, 3), np.float32), np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="output_padding"):
        F.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        F.conv_transpose2d(x, w, groups=3)
    with pytest.raises(ValueError, match="expects 4"):
        F.conv_transpose2d(np.zeros((1, 3, 3, 3), np.float32), w)
    with pytest.raises(ValueError, match="empty output"):
        F.conv_transpose2d(np.zeros((1, 4, 1, 1), np.float32), np.zeros((4, 2, 1, 1), np.float32), padding=1)
