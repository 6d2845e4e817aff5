"""1x1 convs without padding, which run as a product per sample on the arrays as they lie (stride 1) or on
the input subsampled by the stride: every backend against float64 products, on planes whose positions
do not fill whole vectors, output channels that do not fill whole tiles, inputs with enough channels for
several passes and position blocks, planes longer than the weight gradient sums at a time, and work
large enough for every thread; forward (with and without the ReLU), both input gradients and both
weight and bias gradients; strides that do not divide the planes, and different per axis."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F

from .conftest import BACKENDS

SHAPES = [  # (N, C_in, H, W), C_out
    ((3, 5, 7, 7), 10),       # 49 positions: a narrow tile of 3 float32 vectors (AVX-512) or whole tiles
                              # (AVX2), and a tail; a ragged row tile
    ((2, 12, 9, 9), 11),      # 81 positions: whole tiles, a narrower one (1 or 2 vectors) and 1 more, in every
                              # geometry and dtype; a ragged row tile
    ((2, 32, 32, 32), 64),    # MobileNet's first pointwise conv, parallel
    ((1, 128, 8, 8), 20),     # one sample: tasks by groups of rows
    ((2, 520, 5, 10), 9),     # several channel passes, two position blocks with a tail
    ((4, 3, 2, 2), 3),        # fewer positions than a vector: all tail
    ((2, 64, 41, 40), 5),     # planes longer than the weight gradient's stretch: a plane in pieces, the last ragged
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
    np.testing.assert_allclose(gb, gy.astype(np.float64).sum((0, 2, 3)), **tol)
    gated = np.where(relu > 0, gy, 0)
    gx, gw, gb = F.conv2d_relu_backward(gy, relu, x, w, backend=backend)
    np.testing.assert_allclose(gx, _product(w2.T, gated), **tol)
    np.testing.assert_allclose(gw[:, :, 0, 0], np.einsum("nrhw,nchw->rc", gated.astype(np.float64), x), **tol)
    np.testing.assert_allclose(gb, gated.astype(np.float64).sum((0, 2, 3)), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, c_out, stride", [
    ((2, 16, 32, 32), 32, 2),        # a ResNet shortcut, parallel
    ((3, 5, 7, 9), 10, 2),           # odd planes: the last row and column are read, 4x5 outputs
    ((1, 8, 10, 11), 3, (3, 2)),     # different strides per axis, not dividing the planes
    ((2, 4, 5, 5), 6, (1, 2)),       # stride 1 on one axis only
    ((0, 4, 6, 6), 8, 2),            # no samples
])
def test_strided_1x1_convs_against_double_precision_products(backend, dtype, x_shape, c_out, stride):
    """The output is the product on ``x[:, :, ::sh, ::sw]``; the input gradient is the product's, spread to
    those positions with zeros between (ReLU-gated for ``conv2d_relu_backward``)."""
    rng = np.random.default_rng(c_out)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((c_out, x_shape[1], 1, 1)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    w2, xs = w[:, :, 0, 0], x[:, :, ::sh, ::sw]
    want = _product(w2, xs) + b[:, None, None]
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(x_shape[1])) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = F.conv2d(x, w, b, stride=stride, backend=backend)
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, **tol)
    relu = F.conv2d_relu(x, w, b, stride=stride, backend=backend)
    np.testing.assert_allclose(relu, np.maximum(want, 0), **tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    for gx, gate in (F.conv2d_backward(gy, x, w, stride=stride, backend=backend)[0], None), \
            (F.conv2d_relu_backward(gy, relu, x, w, stride=stride, backend=backend)[0], relu):
        want_gx = np.zeros(x_shape)
        want_gx[:, :, ::sh, ::sw] = _product(w2.T, gy if gate is None else np.where(gate > 0, gy, 0))
        assert gx.dtype == dtype and gx.shape == x_shape
        np.testing.assert_allclose(gx, want_gx, **tol)
    gw = F.conv2d_backward(gy, x, w, stride=stride, backend=backend)[1]
    np.testing.assert_allclose(gw[:, :, 0, 0], np.einsum("nrhw,nchw->rc", gy.astype(np.float64), xs), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_1x1_conv_transpose2d_with_output_padding(backend):
    """The input gradient of a strided 1x1 conv, spread into a plane one row and column larger than its
    last strided one (``output_padding``): those stay zero (but for the bias)."""
    from .test_conv_transpose import naive_conv_transpose2d
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(2)
    y = F.conv_transpose2d(x, w, b, 2, 0, 1, backend=backend)
    assert y.shape == (2, 2, 8, 10)
    np.testing.assert_allclose(y, naive_conv_transpose2d(x, w, b, (2, 2), (0, 0), (1, 1), 1, (1, 1)), rtol=1e-10,
                               atol=1e-12)


def test_1x1_weight_gradient_is_the_same_bits_on_any_thread_count():
    """The weight gradient's tasks and sums are fixed by the shapes (shares of the samples, stretches of a
    plane), not by the threads that run them, and its serial twin sums in the same order."""
    from fastcnn.kernels import pointwise_numba
    rng = np.random.default_rng(3)
    before = fastcnn.get_num_threads()
    for n, rows, channels, positions in ((64, 20, 9, 49), (3, 64, 16, 1600), (1, 2, 3, 5)):
        g = rng.standard_normal((n, rows, positions)).astype(np.float32)
        x = rng.standard_normal((n, channels, positions)).astype(np.float32)
        got = []
        try:
            for threads in (1, fastcnn.threads.max_threads()):
                fastcnn.set_num_threads(threads)
                got.append(pointwise_numba.grad_weight(g, x))
        finally:
            fastcnn.set_num_threads(before)
        for one, many in zip(*got):
            np.testing.assert_array_equal(one, many)
        np.testing.assert_allclose(got[0][0], np.einsum("nrp,ncp->rc", g.astype(np.float64), x), rtol=1e-4,
                                   atol=1e-4 * np.sqrt(n * positions))
