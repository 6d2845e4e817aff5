"""1x1 convs (stride 1, no padding), which run as a product per sample on the arrays as they lie: every
backend against float64 products, on planes whose positions do not fill whole vectors, output channels
that do not fill whole tiles, inputs with enough channels for several passes and position blocks, and
work large enough for every thread; forward (with and without the ReLU) and both input gradients."""
import numpy as np
import pytest

import fastcnn.functional as F

from .conftest import BACKENDS

SHAPES = [  # (N, C_in, H, W), C_out
    ((3, 5, 7, 7), 10),       # 49 positions: one whole vector of float32 and a tail; a ragged row tile
    ((2, 32, 32, 32), 64),    # MobileNet's first pointwise conv, parallel
    ((1, 128, 8, 8), 20),     # one sample: tasks by groups of rows
    ((2, 520, 5, 10), 9),     # several channel passes, two position blocks with a tail
    ((4, 3, 2, 2), 3),        # fewer positions than a vector: all tail
    ((0, 4, 3, 3), 8),        # no samples
]


def _product(w, x):
    """``w (R, C) @ x[s] (C, H, W)`` for every sample, in float64."""
    return np.einsum("rc,nchw->nrhw", w.astype(np.float64), x.astype(np.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, c_out", SHAPES)
def test_1x1_convs_against_double_precision_products(backend, dtype, x_shape, c_out):
    rng = np.random.default_rng(c_out)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((c_out, x_shape[1], 1, 1)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    w2 = w[:, :, 0, 0]
    want = _product(w2, x) + b[:, None, None]
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(x_shape[1])) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = F.conv2d(x, w, b, backend=backend)
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, **tol)
    relu = F.conv2d_relu(x, w, b, backend=backend)
    np.testing.assert_allclose(relu, np.maximum(want, 0), **tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_backward(gy, x, w, backend=backend)
    np.testing.assert_allclose(gx, _product(w2.T, gy), **tol)
    np.testing.assert_allclose(gw[:, :, 0, 0], np.einsum("nrhw,nchw->rc", gy.astype(np.float64), x), **tol)
    gx, _, _ = F.conv2d_relu_backward(gy, relu, x, w, backend=backend)
    np.testing.assert_allclose(gx, _product(w2.T, np.where(relu > 0, gy, 0)), **tol)
