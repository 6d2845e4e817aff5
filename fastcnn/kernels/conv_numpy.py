"""Conv2D in vectorised NumPy: im2col / col2im around one batched GEMM.

im2col loops only over the kernel offsets (kH * kW strided slices, as in Chainer's ``utils/conv.py``);
the batch and the output pixels are handled by array operations and BLAS.
"""
from __future__ import annotations

import numpy as np


def _im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int) -> np.ndarray:
    """Columns ``(N, C*kH*kW, OH*OW)`` of the padded input ``xp``."""
    n, c = xp.shape[:2]
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
    return cols.reshape(n, c * kh * kw, oh * ow)


def _col2im(cols: np.ndarray, padded_shape, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int) -> np.ndarray:
    """Sum columns ``(N, C*kH*kW, OH*OW)`` back into an array of ``padded_shape``."""
    n, c = padded_shape[:2]
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    out = np.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw] += cols[:, :, i, j]
    return out


def conv2d_forward(xp, w, b, sh, sw, dh, dw, oh, ow):
    """``y = conv(xp, w) + b`` for a padded input ``xp`` (N, C, Hp, Wp) and weight (C_out, C, kH, kW)."""
    n = xp.shape[0]
    c_out, _, kh, kw = w.shape
    cols = _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow)
    y = np.matmul(w.reshape(c_out, -1), cols)  # (N, C_out, OH*OW): already NCHW
    y += b[:, None]
    return y.reshape(n, c_out, oh, ow)


def conv2d_backward(gy, xp, w, sh, sw, dh, dw):
    """Gradients ``(grad_xp, grad_w)`` of a conv with respect to the padded input and the weight."""
    n, c_out, oh, ow = gy.shape
    kh, kw = w.shape[2:]
    cols = _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow)
    gy2 = gy.reshape(n, c_out, oh * ow)
    w2 = w.reshape(c_out, -1)
    grad_w = np.tensordot(gy2, cols, axes=([0, 2], [0, 2])).reshape(w.shape)
    grad_cols = np.matmul(w2.T, gy2)
    grad_xp = _col2im(grad_cols, xp.shape, kh, kw, sh, sw, dh, dw, oh, ow)
    return grad_xp, grad_w
