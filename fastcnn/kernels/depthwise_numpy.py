"""Depthwise convolution in vectorised NumPy: each input channel convolved with its own ``m`` filters
(``groups == C_in``, weight ``(C_in * m, 1, kH, kW)``), one strided window per kernel tap.

Like the :mod:`.conv_numpy` namesakes, the functions take the input unpadded and pad it as the
conv's geometry says (the Numba kernels pad each plane in cache instead of the whole batch), and the
input gradient comes back without the padding; the gradients also take ``c``, the number of input
channels.
"""
from __future__ import annotations

import numpy as np

from ._windows import window
from .scratch import zero_padded


def _split(w, c):
    """The weight (C*m, 1, kH, kW) as (C, m, kH, kW): output channel ``c*m + k`` reads input channel ``c``."""
    return w.reshape(c, w.shape[0] // c, w.shape[2], w.shape[3])


def conv2d_forward(x, w, b, geo, out=None):
    """``y = depthwise_conv(x, w) + b`` for an input ``x`` (N, C, H, W), zero-padded as ``geo`` (the conv's
    :class:`~fastcnn._checks.ConvGeometry`) says; into ``out`` (C-contiguous, the output's shape) if given."""
    (sh, sw), (dh, dw), (oh, ow) = geo.stride, geo.dilation, geo.out_hw
    xp = zero_padded(x, geo.padding)
    n, c = xp.shape[:2]
    wc = _split(w, c)
    if out is None:
        out = np.empty((n, w.shape[0], oh, ow), dtype=xp.dtype)
    y = out.reshape(n, c, wc.shape[1], oh, ow)
    y[...] = b.reshape(c, wc.shape[1])[:, :, None, None]
    for i in range(wc.shape[2]):
        for j in range(wc.shape[3]):
            y += window(xp, i * dh, j * dw, sh, sw, oh, ow)[:, :, None] * wc[None, :, :, i, j, None, None]
    return out


def conv2d_relu_forward(x, w, b, geo, out=None):
    """``relu(conv2d_forward(x, w, b, geo))``, the ReLU in place on the conv's output (NaN kept)."""
    y = conv2d_forward(x, w, b, geo, out)
    return np.maximum(y, 0, out=y)


def conv2d_grad_weight(gy, x, geo, c):
    """Gradients with respect to the weight (C*m, 1, kH, kW) and the bias (``c`` = C)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    xp = zero_padded(x, geo.padding)
    n = xp.shape[0]
    c_out, oh, ow = gy.shape[1:]
    g = gy.reshape(n, c, c_out // c, oh, ow)
    grad_w = np.empty((c, c_out // c, kh, kw), dtype=gy.dtype)
    for i in range(kh):
        for j in range(kw):
            grad_w[:, :, i, j] = np.einsum("ncmrq,ncrq->cm", g, window(xp, i * dh, j * dw, sh, sw, oh, ow))
    return grad_w.reshape(c_out, 1, kh, kw), gy.sum(axis=(0, 2, 3))


def conv2d_grad_input(gy, w, geo, c):
    """Gradient with respect to the input, shape (N, c, H, W)."""
    (hp, wp), (sh, sw), (dh, dw) = geo.padded_hw, geo.stride, geo.dilation
    n, c_out, oh, ow = gy.shape
    g = gy.reshape(n, c, c_out // c, oh, ow)
    wc = _split(w, c)
    grad_xp = np.zeros((n, c, hp, wp), dtype=gy.dtype)
    for i in range(wc.shape[2]):
        for j in range(wc.shape[3]):
            window(grad_xp, i * dh, j * dw, sh, sw, oh, ow)[...] += np.einsum("ncmrq,cm->ncrq", g, wc[:, :, i, j])
    (top, bottom), (left, right) = geo.padding
    return np.ascontiguousarray(grad_xp[:, :, top : hp - bottom, left : wp - right])
