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
