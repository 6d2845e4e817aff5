"""Max and average pooling in vectorised NumPy: one strided slice per kernel offset."""
from __future__ import annotations

import numpy as np

from ._windows import window


def max_pool2d_forward(x, pool):
    """Max-pool ``x`` (N, C, H, W) as ``pool`` (a :class:`~fastcnn._checks.PoolGeometry`) says: windows
    of ``kh`` x ``kw`` elements ``dh``, ``dw`` apart; return ``(y, argmax)``, argmax a flat index into
    each input plane. ``oh``, ``ow`` may ask for ceil mode's last windows, which reach past the
    bottom/right padding.

    Padding is ``-inf``. Ties go to the first maximum in row-major window order (as
    :func:`numpy.argmax`) and NaN wins, the last NaN of the window (as PyTorch and the Numba kernel).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = pool.kernel, pool.stride, pool.padding, pool.dilation, pool.out_hw
    h, w = x.shape[2:]
    eh = max((oh - 1) * sh + (kh - 1) * dh + 1 - h - 2 * ph, 0)
    ew = max((ow - 1) * sw + (kw - 1) * dw + 1 - w - 2 * pw, 0)
    padded = ph or pw or eh or ew
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=-np.inf) if padded else x
    windows = np.stack([window(xp, i * dh, j * dw, sh, sw, oh, ow) for i in range(kh) for j in range(kw)])
    k = _first_max_or_last_nan(windows, 0)
    y = np.take_along_axis(windows, k[None], axis=0)[0]
    if padded:
        # A window whose maximum is -inf may have picked padding: use its first real element instead.
        first_i = np.maximum(-((np.arange(oh) * sh - ph) // dh), 0)[:, None]
        first_j = np.maximum(-((np.arange(ow) * sw - pw) // dw), 0)[None, :]
        k = np.where(y == -np.inf, first_i * kw + first_j, k)
    rows = np.arange(oh)[:, None] * sh - ph + k // kw * dh
    cols = np.arange(ow)[None, :] * sw - pw + k % kw * dw
    return y, rows * w + cols


def _first_max_or_last_nan(values, axis):
    """The index along ``axis`` of the first maximum of ``values``, or of the last NaN where there is one
    (PyTorch's rule)."""
    k = np.argmax(values, axis=axis)
    nan = np.isnan(values)
    if nan.any():
        last = values.shape[axis] - 1 - np.argmax(np.flip(nan, axis=axis), axis=axis)
        k = np.where(nan.any(axis=axis), last, k)
    return k


def max_pool2d_backward(gy, argmax, h, w):
    """Scatter ``gy`` (N, C, OH, OW) to the input positions named by ``argmax``; sums overlaps."""
    n, c = gy.shape[:2]
    planes = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    flat = (argmax + planes).ravel()
    grad = np.bincount(flat, weights=gy.ravel(), minlength=n * c * h * w)
    return grad.astype(gy.dtype, copy=False).reshape(n, c, h, w)


def avg_pool2d_forward(xp, pool, scale, out=None):
    """Average-pool a zero-padded input with the windows of ``pool``: each window's sum times ``scale``
    (OH, OW), 1 / its divisor; into ``out`` (the output's shape) if given."""
    (kh, kw), (sh, sw), (oh, ow) = pool.kernel, pool.stride, pool.out_hw
    y = np.empty(xp.shape[:2] + (oh, ow), dtype=xp.dtype) if out is None else out
    y[...] = 0
    for i in range(kh):
        for j in range(kw):
            y += window(xp, i, j, sh, sw, oh, ow)
    y *= scale
    return y


def avg_pool2d_backward(gy, padded_shape, pool, scale):
    """Gradient of :func:`avg_pool2d_forward` with respect to the padded input."""
    (kh, kw), (sh, sw) = pool.kernel, pool.stride
    oh, ow = gy.shape[2:]
    grad_xp = np.zeros(padded_shape, dtype=gy.dtype)
    share = gy * scale
    for i in range(kh):
        for j in range(kw):
            window(grad_xp, i, j, sh, sw, oh, ow)[...] += share
    return grad_xp


def global_avg_pool2d_forward(x, out=None):
    """The mean of every (sample, channel) plane of ``x`` (N, C, H, W): (N, C), into ``out`` if given."""
    n, c, h, w = x.shape
    y = np.sum(x.reshape(n, c, h * w), axis=2, out=out)
    y *= x.dtype.type(1 / (h * w))
    return y


def global_avg_pool2d_backward(gy, shape):
    """Gradient of :func:`global_avg_pool2d_forward`: every plane of ``shape`` filled with its ``gy / (H * W)``."""
    grad = np.empty(shape, dtype=gy.dtype)
    grad[...] = (gy * gy.dtype.type(1 / (shape[2] * shape[3])))[:, :, None, None]
    return grad


def global_max_pool2d_forward(x):
    """The maximum of every plane of ``x`` (N, C, H, W) and its flat index in the plane, (N, C) twice:
    the first maximum, or the plane's last NaN (as :func:`max_pool2d_forward`)."""
    n, c, h, w = x.shape
    rows = x.reshape(n, c, h * w)
    idx = _first_max_or_last_nan(rows, 2)
    return np.take_along_axis(rows, idx[:, :, None], axis=2)[:, :, 0], idx


def global_max_pool2d_backward(gy, argmax, shape):
    """Gradient of :func:`global_max_pool2d_forward`: ``gy`` at each plane's ``argmax``, 0 elsewhere."""
    n, c, h, w = shape
    grad = np.zeros((n, c, h * w), dtype=gy.dtype)
    np.put_along_axis(grad, argmax[:, :, None], gy[:, :, None], axis=2)
    return grad.reshape(shape)
