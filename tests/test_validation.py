"""Bad input to the functional ops: a clear ValueError/TypeError naming the argument, on every backend."""
import numpy as np
import pytest

import fastcnn.functional as F

X = np.zeros((2, 3, 8, 8), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(x=np.zeros((3, 8, 8), np.float32)), ValueError, r"x must be 4-D, got shape \(3, 8, 8\)"),
        (dict(weight=np.zeros((4, 2, 3, 3), np.float32)), ValueError, r"x has 3 channels .* weight expects 2"),
        (dict(weight=np.zeros((4, 3, 9, 3), np.float32)), ValueError, r"kernel .* larger than the padded input \(8, 8\)"),
        (dict(dilation=5), ValueError, r"spans \(11, 11\)"),
        (dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
        (dict(dilation=(1, -1)), ValueError, r"dilation must be >= 1"),
        (dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
        (dict(padding="full"), ValueError, r"padding must be an int, a pair, a 4-tuple, 'valid' or 'same', got 'full'"),
        (dict(padding=(1, 2, 3)), ValueError, r"padding must be an int or a pair of ints"),
        (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
        (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair"),
        (dict(stride=True), TypeError, r"stride must be an int"),
        (dict(x=X.astype(np.int32)), TypeError, r"x must be a float32 or float64 array, got dtype int32"),
        (dict(x=X.astype(np.complex64)), TypeError, r"x must be a float32 or float64 array, got dtype complex64"),
        (dict(x=X.astype(np.float16)), TypeError, r"got dtype float16"),
        (dict(weight=W.astype(np.float64)), TypeError, r"weight has dtype float64 but x has dtype float32"),
        (dict(bias=np.zeros(5, np.float32)), ValueError, r"bias must have shape \(4,\) .* got \(5,\)"),
        (dict(bias=np.zeros(4, np.float64)), TypeError, r"bias has dtype float64 but x has dtype float32"),
        (dict(x=np.zeros((2, 0, 8, 8), np.float32), weight=np.zeros((4, 0, 3, 3), np.float32)), ValueError, r"at least one channel"),
    ],
)
def test_conv2d_rejects(backend, kwargs, error, pattern):
    args = dict(x=X, weight=W, bias=None, stride=1, padding=0, dilation=1)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        F.conv2d(backend=backend, **args)


def test_conv2d_backward_rejects_wrong_grad(backend):
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 4, 5, 5\) but the forward output has shape \(2, 4, 6, 6\)"):
        F.conv2d_backward(np.zeros((2, 4, 5, 5), np.float32), X, W, backend=backend)
    with pytest.raises(TypeError, match=r"grad_y has dtype float64 but x has dtype float32"):
        F.conv2d_backward(np.zeros((2, 4, 6, 6)), X, W, backend=backend)


@pytest.mark.parametrize(
    "args, error, pattern",
    [
        ((X, 0), ValueError, r"kernel_size must be >= 1, got 0"),
        ((X, 9), ValueError, r"kernel_size \(9, 9\) is larger than the padded input \(8, 8\)"),
        ((X, 2, 2, 2), ValueError, r"padding \(2, 2\) must be at most half of kernel_size \(2, 2\)"),
        ((X, 2, -1), ValueError, r"stride must be >= 1"),
        ((X[0], 2), ValueError, r"x must be 4-D"),
        ((X.astype(bool), 2), TypeError, r"got dtype bool"),
    ],
)
def test_pools_reject(backend, args, error, pattern):
    with pytest.raises(error, match=pattern):
        F.max_pool2d(*args, backend=backend)
    with pytest.raises(error, match=pattern):
        F.avg_pool2d(*args, backend=backend)


def test_max_pool2d_backward_rejects_bad_indices(backend):
    y, idx = F.max_pool2d(X, 2, backend=backend)
    with pytest.raises(ValueError, match=r"argmax holds indices outside \[0, 64\)"):
        F.max_pool2d_backward(y, idx + 64, X.shape, backend=backend)
    with pytest.raises(ValueError, match=r"argmax holds indices outside"):
        F.max_pool2d_backward(y, idx - 1, X.shape, backend=backend)
    with pytest.raises(TypeError, match=r"argmax must be an integer array"):
        F.max_pool2d_backward(y, idx.astype(np.float32), X.shape, backend=backend)
    with pytest.raises(ValueError, match=r"do not match"):
        F.max_pool2d_backward(y, idx[:1], X.shape, backend=backend)
    with pytest.raises(ValueError, match=r"input_shape must be 4 non-negative ints"):
        F.max_pool2d_backward(y, idx, (2, 3, 8), backend=backend)
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of 4 ints"):
        F.max_pool2d_backward(y, idx, (2, 3, 8, 8.0), backend=backend)


def test_avg_pool2d_backward_rejects_wrong_grad(backend):
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 3, 3, 3\) but the forward output has shape \(2, 3, 4, 4\)"):
        F.avg_pool2d_backward(np.zeros((2, 3, 3, 3), np.float32), X.shape, 2, backend=backend)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'numba', 'numpy', got 'cuda'"):
        F.conv2d(X, W, backend="cuda")


@pytest.mark.parametrize("call, pattern", [
    (lambda b: F.conv2d(X, W, padding=10**6, backend=b), r"padded conv2d input of shape \(2, 3, 2000008, 2000008\) would need"),
    (lambda b: F.conv2d(np.zeros((2**20, 1, 3, 3), np.float32), np.zeros((2**14, 1, 1, 1), np.float32), backend=b),
     r"conv2d output of shape \(1048576, 16384, 3, 3\) would need .* GiB, more than this machine's"),
    (lambda b: F.max_pool2d_backward(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.int64),
                                     (1, 1, 10**6, 10**6), backend=b), r"max_pool2d_backward output .* would need"),
])
def test_arrays_larger_than_memory_are_refused_before_allocating(backend, call, pattern):
    with pytest.raises(MemoryError, match=pattern):
        call(backend)


@pytest.mark.parametrize("pool", [F.max_pool2d, F.avg_pool2d])
def test_pooling_an_empty_plane_is_refused_even_with_padding(backend, pool):
    """Found by the fuzzer: with padding, a 0x0 plane had windows of padding only."""
    with pytest.raises(ValueError, match=r"non-empty height and width to pool, got shape \(1, 1, 0, 0\)"):
        pool(np.zeros((1, 1, 0, 0), np.float32), 2, 1, 1, backend=backend)
