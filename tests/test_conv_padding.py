"""Conv padding forms: 4-tuples (left, right, top, bottom) and "same" for any stride (TensorFlow's
rule), against the naive loops, PyTorch when importable, and gradients."""
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

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(1, 4), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), seed=st.integers(0, 2**31))
def test_same_padding_for_any_stride_follows_tensorflow(h, w, k, stride, dilation, seed):
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal((1, 2, h, w)), rng.standard_normal((3, 2, k, k))
    span = dilation * (k - 1) + 1
    pads = []
    for size in (h, w):  # TensorFlow: out = ceil(size / stride), the odd extra at the bottom/right
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        pads.append((total // 2, total - total // 2))
    want = ref.conv2d(x, wt, None, (stride, stride), pads, (dilation, dilation))
    assert want.shape[2:] == (-(-h // stride), -(-w // stride))
    for backend in BACKENDS:
        y = F.conv2d(x, wt, stride=stride, padding="same", dilation=dilation, backend=backend)
        np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
        gy = rng.standard_normal(y.shape)
        gx, gw, _ = F.conv2d_backward(gy, x, wt, stride=stride, padding="same", dilation=dilation, backend=backend)
        want_gx, want_gw, _ = ref.conv2d_backward(gy, x, wt, (stride, stride), pads, (dilation, dilation))
        np.testing.assert_allclose(gx, want_gx, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gw, want_gw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("padding", [(1, 0, 2, 3), (0, 2, 0, 1), [3, 1, 1, 0]])
def test_four_tuple_padding_is_left_right_top_bottom(padding, backend, tmp_path):
    rng = np.random.default_rng(0)
    x, wt, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(3)
    left, right, top, bottom = padding
    want = ref.conv2d(x, wt, b, (2, 1), ((top, bottom), (left, right)))
    np.testing.assert_allclose(F.conv2d(x, wt, b, stride=(2, 1), padding=padding, backend=backend), want, rtol=1e-10)
    if torch is not None:
        padded = torch.nn.functional.pad(torch.from_numpy(x), tuple(padding))
        np.testing.assert_allclose(torch.nn.functional.conv2d(padded, torch.from_numpy(wt), torch.from_numpy(b),
                                                              stride=(2, 1)).numpy(), want, rtol=1e-10)
    layer = L.Conv2D(2, 3, (3, 2), stride=(2, 1), padding=padding, rng=0)
    model = fastcnn.Sequential([layer], input_shape=(2, 5, 6))
    assert model.output_shapes()[0] == want.shape[1:]
    model.save(tmp_path / "p.npz")
    assert fastcnn.load_model(tmp_path / "p.npz").layers[0].padding == tuple(padding)


def test_padding_bad_arguments():
    x, wt = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 3, 3), np.float32)
    for bad, error in (((1, 2, 3), ValueError), ((1, -1, 0, 0), ValueError), ("full", ValueError),
                       ((1.5, 0, 0, 0), TypeError)):
        with pytest.raises(error, match="padding"):
            F.conv2d(x, wt, padding=bad)
        with pytest.raises(error, match="padding"):
            L.Conv2D(1, 1, 3, padding=bad)


NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_modes_match_numpy_finite_differences_and_pytorch(mode, backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 6))
    pads = (2, 1, 0, 3)  # left, right, top, bottom
    y = F.pad2d(x, pads, mode)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (0, 0), (0, 3), (2, 1)), mode=NP_MODES[mode]))
    gy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(F.pad2d_backward(gy, x.shape, pads, mode),
                               ref.numeric_grad(lambda: float((F.pad2d(x, pads, mode) * gy).sum()), x), atol=1e-8)
    layer = L.Conv2D(2, 3, 3, stride=(2, 1), padding="same", padding_mode=mode, rng=0, backend=backend).astype(np.float64)
    out = layer.forward(x, training=True)
    g = rng.standard_normal(out.shape)
    gx = layer.backward(g)
    np.testing.assert_allclose(gx, ref.numeric_grad(lambda: float((layer.forward(x) * g).sum()), x), atol=1e-7)
    assert "type" not in layer.get_config() and (mode == "zeros") == ("padding_mode" not in layer.get_config())
    if torch is not None:
        conv = torch.nn.Conv2d(2, 3, 3, padding=(1, 1), padding_mode=mode).double()
        conv.load_state_dict({k: torch.from_numpy(v) for k, v in layer.params.items()})
        mine = L.Conv2D(2, 3, 3, padding=1, padding_mode=mode, rng=0, backend=backend).astype(np.float64)
        mine.params.update({k: v.copy() for k, v in layer.params.items()})
        np.testing.assert_allclose(mine.forward(x), conv(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_padding_mode_layer_is_not_fused_and_round_trips(tmp_path):
    model = fastcnn.Sequential([L.Conv2D(1, 2, 3, padding=1, padding_mode="reflect", rng=0), L.MaxPool2D(2)],
                               input_shape=(1, 6, 6))
    assert [type(s).__name__ for s in model.steps()] == ["Conv2D", "MaxPool2D"]
    model.save(tmp_path / "r.npz")
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(fastcnn.load_model(tmp_path / "r.npz").predict(x), model.predict(x))
    with pytest.raises(ValueError, match="padding_mode"):
        L.Conv2D(1, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="reflect padding"):
        F.pad2d(np.zeros((1, 1, 2, 2)), (2, 0, 0, 0), "reflect")
    with pytest.raises(ValueError, match="mode"):
        F.pad2d(np.zeros((1, 1, 2, 2)), (1, 0, 0, 0), "edge")
