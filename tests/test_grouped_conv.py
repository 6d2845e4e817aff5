"""Grouped and depthwise convolution: every backend against the naive loops, finite differences and
PyTorch when importable; layers, empty batches and bad arguments."""
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
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


@st.composite
def grouped_cases(draw):
    groups = draw(st.integers(1, 4))
    depthwise = draw(st.booleans())
    c_in = groups * (1 if depthwise else draw(st.integers(1, 2)))
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    lo_h, lo_w = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
    return dict(n=draw(st.integers(1, 2)), c_in=c_in, c_out=c_out, groups=groups,
                h=draw(st.integers(lo_h, lo_h + 5)), w=draw(st.integers(lo_w, lo_w + 5)), kernel=(kh, kw),
                stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), padding=(ph, pw), dilation=(dh, dw),
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2**31)))


def _arrays(case):
    rng = np.random.default_rng(case["seed"])
    d = case["dtype"]
    x = rng.standard_normal((case["n"], case["c_in"], case["h"], case["w"])).astype(d)
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]).astype(d)
    return x, w, rng.standard_normal(case["c_out"]).astype(d)


@SETTINGS
@given(case=grouped_cases())
def test_grouped_conv2d_matches_reference(case):
    x, w, b = _arrays(case)
    pads = tuple((p, p) for p in case["padding"])
    geo = (case["stride"], pads, case["dilation"], case["groups"])
    want = ref.conv2d(x, w, b, *geo)
    gy = np.random.default_rng(case["seed"] + 1).standard_normal(want.shape).astype(case["dtype"])
    want_gx, want_gw, want_gb = ref.conv2d_backward(gy, x, w, *geo)
    params = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    for backend in BACKENDS:
        y = F.conv2d(x, w, b, backend=backend, **params)
        assert y.dtype == case["dtype"]
        np.testing.assert_allclose(y, want, **TOL[case["dtype"]])
        gx, gw, gb = F.conv2d_backward(gy, x, w, backend=backend, **params)
        for got, expected in ((gx, want_gx), (gw, want_gw), (gb, want_gb)):
            assert got.dtype == case["dtype"]
            np.testing.assert_allclose(got, expected, **TOL[case["dtype"]])


@pytest.mark.parametrize("c_in, c_out, groups", [(4, 4, 4), (3, 6, 3), (4, 6, 2)])
def test_grouped_conv2d_finite_differences_and_pytorch(c_in, c_out, groups, backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c_in, 5, 6))
    w = rng.standard_normal((c_out, c_in // groups, 3, 3))
    b = rng.standard_normal(c_out)
    params = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=groups)
    gy = rng.standard_normal(F.conv2d(x, w, b, **params).shape)
    gx, gw, gb = F.conv2d_backward(gy, x, w, backend=backend, **params)

    def loss():
        return float((F.conv2d(x, w, b, backend=backend, **params) * gy).sum())

    for got, wrt in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(got, ref.numeric_grad(loss, wrt), rtol=1e-6, atol=1e-8)
    if torch is not None:
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
        out = torch.nn.functional.conv2d(tx, tw, tb, **params)
        out.backward(torch.from_numpy(gy))
        np.testing.assert_allclose(F.conv2d(x, w, b, backend=backend, **params), out.detach().numpy(), rtol=1e-10)
        for got, t in ((gx, tx), (gw, tw), (gb, tb)):
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_grouped_conv_layer_and_empty_batches(tmp_path, backend):
    layer = L.Conv2D(4, 8, 3, padding=1, groups=4, rng=0, backend=backend)
    assert layer.params["weight"].shape == (8, 1, 3, 3) and "groups 4" in layer.describe()
    model = fastcnn.Sequential([layer, L.ReLU(), L.MaxPool2D(2), L.Conv2D(8, 4, 1, groups=2, rng=1), L.Flatten()],
                               input_shape=(4, 6, 6))
    assert type(model.steps()[0]).__name__ == "Conv2D"  # a grouped conv is not fused with its pool
    x = np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)
    model.save(tmp_path / "g.npz")
    np.testing.assert_allclose(fastcnn.load_model(tmp_path / "g.npz").predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    for groups in (4, 2):
        w = np.ones((8, 4 // groups, 3, 3), np.float32)
        empty = np.zeros((0, 4, 5, 5), np.float32)
        y = F.conv2d(empty, w, groups=groups, backend=backend)
        assert y.shape == (0, 8, 3, 3)
        gx, gw, gb = F.conv2d_backward(y, empty, w, groups=groups, backend=backend)
        assert gx.shape == empty.shape and not gw.any() and not gb.any()


def test_grouped_conv_bad_arguments():
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        F.conv2d(x, np.zeros((6, 1, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match=r"groups=2 expects 2"):
        F.conv2d(x, np.zeros((4, 1, 3, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match="groups"):
        F.conv2d(x, np.zeros((4, 4, 3, 3), np.float32), groups=0)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels"):
        L.Conv2D(4, 6, 3, groups=3)
