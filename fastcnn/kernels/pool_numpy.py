"""Max and average pooling in vectorised NumPy: one strided slice per kernel offset."""
from __future__ import annotations

import numpy as np

from ._windows import window


def max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Max-pool ``x`` (N, C, H, W); return ``(y, argmax)``, argmax a flat index into each input plane.

    Padding is ``-inf``. Ties go to the first maximum in row-major window order (as
    :func:`numpy.argmax`) and NaN wins, the last NaN of the window (as PyTorch and the Numba kernel).
    """
    h, w = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf) if ph or pw else x
    windows = np.stack([window(xp, i, j, sh, sw, oh, ow) for i in range(kh) for j in range(kw)])
    k = np.argmax(windows, axis=0)
    nan = np.isnan(windows)
    if nan.any():
        k = np.where(nan.any(axis=0), len(windows) - 1 - np.argmax(nan[::-1], axis=0), k)
    y = np.take_along_axis(windows, k[None], axis=0)[0]
    if ph or pw:
        # A window whose maximum is -inf may have picked padding: use its first real element instead.
        first_i = np.maximum(ph - np.arange(oh) * sh, 0)[:, None]
        first_j = np.maximum(pw - np.arange(ow) * sw, 0)[None, :]
        k = np.where(y == -np.inf, first_i * kw + first_j, k)
    rows = np.arange(oh)[:, None] * sh - ph + k // kw
    cols = np.arange(ow)[None, :] * sw - pw + k % kw
    return y, rows * w + cols


def max_pool2d_backward(gy, argmax, h, w):
    """Scatter ``gy`` (N, C, OH, OW) to the input positions named by ``argmax``; sums overlaps."""
    n, c = gy.shape[:2]
    planes = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    flat = (argmax + planes).ravel()
    grad = np.bincount(flat, weights=gy.ravel(), minlength=n * c * h * w)
    return grad.astype(gy.dtype, copy=False).reshape(n, c, h, w)


def avg_pool2d_forward(xp, kh, kw, sh, sw, oh, ow):
    """Average-pool a zero-padded input; the divisor is always ``kH * kW`` (padding counts)."""
    y = np.zeros(xp.shape[:2] + (oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            y += window(xp, i, j, sh, sw, oh, ow)
    y *= xp.dtype.type(1.0 / (kh * kw))
    return y


def avg_pool2d_backward(gy, padded_shape, kh, kw, sh, sw):
    """Gradient of :func:`avg_pool2d_forward` with respect to the padded input."""
    oh, ow = gy.shape[2:]
    grad_xp = np.zeros(padded_shape, dtype=gy.dtype)
    share = gy * gy.dtype.type(1.0 / (kh * kw))
    for i in range(kh):
        for j in range(kw):
            window(grad_xp, i, j, sh, sw, oh, ow)[...] += share
    return grad_xp
