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
