"""Edge cases every op must get right: empty batches (N = 0) forward and backward in every backend, and
NaN in max-pool windows (the index PyTorch's CPU kernel picks)."""
import numpy as np
import pytest

import fastcnn.functional as F

from . import reference as ref

DTYPES = [np.float32, np.float64]


def _zero_gradients(gx, gw, gb, x, w):
    assert gx.shape == x.shape and gx.dtype == x.dtype
    assert gw.shape == w.shape and gw.dtype == w.dtype and not gw.any()
    assert gb.shape == (w.shape[0],) and gb.dtype == w.dtype and not gb.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 1), (2, 1)])
def test_conv2d_with_an_empty_batch(backend, dtype, stride, padding):
    x, w = np.zeros((0, 2, 7, 7), dtype), np.ones((3, 2, 3, 3), dtype)
    y = F.conv2d(x, w, np.ones(3, dtype), stride, padding, backend=backend)
    oh = (7 + 2 * padding - 3) // stride + 1
    assert y.shape == (0, 3, oh, oh) and y.dtype == dtype
    _zero_gradients(*F.conv2d_backward(y, x, w, stride, padding, backend=backend), x, w)
    gx, gw, gb = F.conv2d_backward(y, x, w, stride, padding, input_grad=False, backend=backend)
    assert gx is None and gw.shape == w.shape and gb.shape == (3,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_of_planes_with_no_rows_but_padding(backend, dtype):
    """An input of no rows whose padding alone gives output rows (the padding wider than a register tile):
    the output is the bias, the input gradient empty, the weight gradient zero."""
    x, w, b = np.zeros((2, 3, 0, 40), dtype), np.ones((4, 3, 3, 3), dtype), np.arange(4, dtype=dtype)
    y = F.conv2d(x, w, b, 1, 50, backend=backend)
    assert y.shape == (2, 4, 98, 138) and np.array_equal(y, np.broadcast_to(b[:, None, None], y.shape))
    gx, gw, gb = F.conv2d_backward(np.ones_like(y), x, w, 1, 50, backend=backend)
    assert gx.shape == x.shape and not gw.any() and np.array_equal(gb, np.full(4, 2 * 98 * 138, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, pool_size, relu", [(1, 2, False), (1, 2, True), (2, 2, True), (1, 3, False)])
def test_conv2d_max_pool2d_with_an_empty_batch(backend, dtype, stride, pool_size, relu):
    x, w = np.zeros((0, 2, 12, 12), dtype), np.ones((3, 2, 3, 3), dtype)
    y, idx = F.conv2d_max_pool2d(x, w, None, stride, pool_size=pool_size, relu=relu, backend=backend)
    conv = (12 - 3) // stride + 1
    assert y.shape == idx.shape == (0, 3, conv // pool_size, conv // pool_size) and y.dtype == dtype
    grads = F.conv2d_max_pool2d_backward(y, idx, x, w, stride, relu_output=y if relu else None, backend=backend)
    _zero_gradients(*grads, x, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_pools_with_an_empty_batch(backend, dtype, kernel, stride, padding):
    x = np.zeros((0, 2, 6, 6), dtype)
    y, idx = F.max_pool2d(x, kernel, stride, padding, backend=backend)
    side = (6 + 2 * padding - kernel) // stride + 1
    assert y.shape == idx.shape == (0, 2, side, side) and y.dtype == dtype and idx.dtype == np.int64
    gx = F.max_pool2d_backward(y, idx, x.shape, backend=backend)
    assert gx.shape == x.shape and gx.dtype == dtype
    y = F.avg_pool2d(x, kernel, stride, padding, backend=backend)
    assert y.shape == (0, 2, side, side) and y.dtype == dtype
    gx = F.avg_pool2d_backward(y, x.shape, kernel, stride, padding, backend=backend)
    assert gx.shape == x.shape and gx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_linear_and_loss_with_an_empty_batch(backend, dtype):
    x = np.zeros((0, 3, 4, 4), dtype)
    for y in (F.relu(x, backend=backend), F.relu_backward(x, x, backend=backend), F.dropout(x, 0.5, 7, backend=backend)):
        assert y.shape == x.shape and y.dtype == dtype
    x, w = np.zeros((0, 5), dtype), np.ones((4, 5), dtype)
    y = F.linear(x, w, np.ones(4, dtype), backend=backend)
    assert y.shape == (0, 4) and y.dtype == dtype
    _zero_gradients(*F.linear_backward(y, x, w, backend=backend), x, w)
    loss, grad, correct = F.softmax_cross_entropy(np.zeros((0, 4), dtype), np.zeros(0, np.int64), backend=backend)
    assert (loss, correct) == (0.0, 0) and grad.shape == (0, 4) and grad.dtype == dtype


# ---------------------------------------------------------------- NaN in max-pool windows
try:
    import torch
except ImportError:  # the reference loop stands in for PyTorch
    torch = None


def _expected_pool(x, kernel, stride, padding):
    """``(y, argmax)`` from PyTorch's CPU kernel when importable, else from the reference loop."""
    if torch is None:
        return ref.max_pool2d(x, kernel, stride, padding)
    y, idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding, return_indices=True)
    return y.numpy(), idx.numpy()


def _nan_planes(dtype, rng, shape):
    """Small integers after a ReLU (many ties, many zeros), with NaN, -inf and all-NaN windows."""
    x = np.maximum(rng.integers(-2, 3, shape), 0).astype(dtype)
    x[rng.random(shape) < 0.15] = np.nan
    x[0, 0, :2, :2] = np.nan  # a window of NaN only
    x[0, 0, 2:4, :2] = -np.inf  # a window of -inf only
    x[0, 0, :2, 2:4] = [[np.nan, 1], [1, np.nan]]  # two NaN apart
    x[0, 0, 2:4, 2:4] = [[3, 3], [np.nan, 3]]  # NaN among ties
    return x


def test_pytorch_picks_the_last_nan_and_the_first_maximum():
    if torch is None:
        pytest.skip("PyTorch is not installed")
    x = np.array([[[[1, np.nan, 2, np.nan], [np.nan, np.nan, 1, 1], [5, 5, 1, 1], [-np.inf] * 4]]], np.float32)
    y, idx = _expected_pool(x, (1, 4), (1, 4), (0, 0))
    np.testing.assert_array_equal(idx.ravel(), [3, 5, 8, 12])
    np.testing.assert_array_equal(y.ravel(), [np.nan, np.nan, 5, -np.inf])
    np.testing.assert_array_equal(_expected_pool(x, (1, 4), (1, 4), (0, 0))[1], ref.max_pool2d(x, (1, 4), (1, 4), (0, 0))[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                                     ((2, 2), (1, 1), (0, 0)), ((2, 3), (2, 1), (1, 0))])
def test_max_pool2d_with_nan_picks_what_pytorch_picks(backend, dtype, kernel, stride, padding):
    # 38 windows a row on the 2x2 path: whole vectors of windows and a part vector, in both dtypes.
    x = _nan_planes(dtype, np.random.default_rng(5), (2, 3, 7, 77))
    want_y, want_idx = _expected_pool(x, kernel, stride, padding)
    y, idx = F.max_pool2d(x, kernel, stride, padding, backend=backend)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(y, want_y)  # NaN where PyTorch has NaN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("conv_stride, pool", [(1, 2), (2, 2), (1, 3)])
def test_fused_conv_max_pool_with_nan_picks_what_pytorch_picks(backend, dtype, relu, conv_stride, pool):
    rng = np.random.default_rng(6)
    x = np.maximum(rng.integers(-1, 3, (2, 2, 12, 40)), 0).astype(dtype)
    x[rng.random(x.shape) < 0.02] = np.nan
    w = rng.integers(-1, 2, (3, 2, 3, 3)).astype(dtype)  # integer sums: exact in every backend and in PyTorch
    conv = ref.conv2d(x, w, stride=(conv_stride, conv_stride)).astype(dtype)
    want_y, want_idx = _expected_pool(conv, (pool, pool), (pool, pool), (0, 0))
    if relu:
        want_y = np.where(want_y <= 0, 0, want_y)  # NaN kept
    y, idx = F.conv2d_max_pool2d(x, w, None, conv_stride, pool_size=pool, relu=relu, backend=backend)
    assert np.isnan(want_y).any() and (~np.isnan(want_y)).any()
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(y, want_y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_vector_pool_picks_the_last_nan_in_every_lane(dtype):
    """The LLVM compare-and-select itself (:func:`fastcnn.kernels._pool_vectors.max_pairs`, through
    :func:`~fastcnn.kernels.pool_numba.pool_rows`): every count of windows up to a vector, every lane."""
    pool_numba = pytest.importorskip("fastcnn.kernels.pool_numba")
    from fastcnn.kernels._tiles import lanes

    n, rng = lanes(np.dtype(dtype).itemsize), np.random.default_rng(7)
    width = 2 * n + 3
    for count in range(1, n + 1):
        x = rng.choice(np.array([np.nan, 1, 1, 0, -np.inf], dtype), 2 * width)
        y, idx = np.full(n + 1, 9, dtype), np.full(n + 1, -9, np.int64)
        pool_numba.pool_rows(x, 0, width, width, None, False, y, 0, idx, 1, count)
        for q in range(count):
            at = [2 * q, 2 * q + 1, width + 2 * q, width + 2 * q + 1]
            values = x[at]
            k = 3 - int(np.argmax(np.isnan(values)[::-1])) if np.isnan(values).any() else int(np.argmax(values))
            assert idx[q] == at[k], (count, q, values)
            np.testing.assert_array_equal(y[q], values[k])
        assert (y[count:] == 9).all() and (idx[count:] == -9).all()  # nothing written past the last window
