"""Conv2D in vectorised NumPy: im2col / col2im around BLAS matrix products.

The batch is cut into blocks of samples whose columns (about 1 MB) stay in cache, and each block
becomes one large GEMM: ``(C_out, C_in*kH*kW) @ (C_in*kH*kW, block*OH*OW)``. im2col loops only over
the kernel offsets (kH * kW strided copies, as in Chainer's ``utils/conv.py``).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ._blas import matmul
from ._windows import window

_BLOCK_ELEMENTS = 1 << 18  # columns per block: 1 MB of float32, resident in L2


def _block_size(n: int, k: int, p: int) -> int:
    """Samples per block for ``k`` rows of columns and ``p`` output pixels per sample."""
    return max(1, min(n, _BLOCK_ELEMENTS // (k * p)))


def _column_blocks(xp, kh, kw, sh, sw, dh, dw, oh, ow) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(first_sample, samples, cols)`` with ``cols`` (C*kH*kW, samples*OH*OW) for each block.

    Rows are ordered (c, i, j) to match ``weight.reshape(C_out, -1)``, columns (sample, r, q). The
    buffer is reused: each ``cols`` is valid until the next one is yielded.
    """
    n, c = xp.shape[:2]
    k, p = c * kh * kw, oh * ow
    m = _block_size(n, k, p)
    buf = np.empty(k * m * p, dtype=xp.dtype)
    for s0 in range(0, n, m):
        size = min(m, n - s0)
        cols = buf[: k * size * p].reshape(c, kh, kw, size, oh, ow)
        xt = xp[s0 : s0 + size].transpose(1, 0, 2, 3)
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = window(xt, i * dh, j * dw, sh, sw, oh, ow)
        yield s0, size, cols.reshape(k, size * p)


def _channels_first(a: np.ndarray) -> np.ndarray:
    """(m, C, OH, OW) -> (C, m*OH*OW), the column order of :func:`_column_blocks`."""
    m, c = a.shape[:2]
    if m == 1:
        return a.reshape(c, -1)
    return np.ascontiguousarray(a.reshape(m, c, -1).transpose(1, 0, 2)).reshape(c, -1)


def conv2d_forward(xp, w, b, sh, sw, dh, dw, oh, ow):
    """``y = conv(xp, w) + b`` for a padded input ``xp`` (N, C, Hp, Wp) and weight (C_out, C, kH, kW)."""
    n = xp.shape[0]
    c_out, _, kh, kw = w.shape
    w2 = w.reshape(c_out, -1)
    y = np.empty((n, c_out, oh * ow), dtype=xp.dtype)
    for s0, size, cols in _column_blocks(xp, kh, kw, sh, sw, dh, dw, oh, ow):
        prod = matmul(w2, cols).reshape(c_out, size, oh * ow)
        np.add(prod.transpose(1, 0, 2), b[:, None], out=y[s0 : s0 + size])
    return y.reshape(n, c_out, oh, ow)


def conv2d_grad_weight(gy, xp, kh, kw, sh, sw, dh, dw):
    """Gradient of a conv with respect to its weight, shape (C_out, C, kH, kW)."""
    c_out, oh, ow = gy.shape[1:]
    grad_w = np.zeros((c_out, xp.shape[1] * kh * kw), dtype=gy.dtype)
    for s0, size, cols in _column_blocks(xp, kh, kw, sh, sw, dh, dw, oh, ow):
        grad_w += matmul(_channels_first(gy[s0 : s0 + size]), cols.T)
    return grad_w.reshape(c_out, xp.shape[1], kh, kw)


def conv2d_grad_input(gy, w, hp, wp, sh, sw, dh, dw):
    """Gradient of a conv with respect to its padded input, shape (N, C, hp, wp)."""
    n, _, oh, ow = gy.shape
    c_out, c, kh, kw = w.shape
    w2t = w.reshape(c_out, -1).T
    grad_xp = np.zeros((n, c, hp, wp), dtype=gy.dtype)
    m = _block_size(n, c * kh * kw, oh * ow)
    for s0 in range(0, n, m):
        block = grad_xp[s0 : s0 + m]
        cols = matmul(w2t, _channels_first(gy[s0 : s0 + m])).reshape(c, kh, kw, block.shape[0], oh, ow)
        bt = block.transpose(1, 0, 2, 3)
        for i in range(kh):
            for j in range(kw):
                window(bt, i * dh, j * dw, sh, sw, oh, ow)[...] += cols[:, i, j]
    return grad_xp
