"""Depthwise convolution (``groups == C_in``) as parallel Numba loops: direct loops over each channel's
plane, one (sample, output channel) plane per task for the output and one (sample, input channel)
plane for the input gradient, so every task writes its own plane; the weight gradient takes one
output channel per task. A depthwise conv does ``kH*kW`` multiply-adds per output element and is
bound by memory, not arithmetic: no GEMM to feed.

The functions take the arguments of their :mod:`.depthwise_numpy` namesakes.
"""
from __future__ import annotations

import numpy as np

from .jit import parallel_kernel, prange, sized


def conv2d_forward(xp, w, b, geo):
    """``y = depthwise_conv(xp, w) + b`` for a padded input ``xp`` (N, C, Hp, Wp); ``geo`` the conv's
    :class:`~fastcnn._checks.ConvGeometry`."""
    (sh, sw), (dh, dw), (oh, ow) = geo.stride, geo.dilation, geo.out_hw
    return sized(_forward, xp.shape[0] * w.size * oh * ow)(xp, w, b, sh, sw, dh, dw, oh, ow)


def conv2d_grad_weight(gy, xp, geo, c):
    """Gradients with respect to the weight (C*m, 1, kH, kW) and the bias (``c`` = C)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    return sized(_grad_weight, gy.size * kh * kw)(gy, xp, kh, kw, sh, sw, dh, dw)


def conv2d_grad_input(gy, w, geo, c):
    """Gradient with respect to the padded input, shape (N, c) + ``geo.padded_hw``."""
    (hp, wp), (sh, sw), (dh, dw) = geo.padded_hw, geo.stride, geo.dilation
    return sized(_grad_input, gy.size * w.shape[2] * w.shape[3])(gy, w, hp, wp, sh, sw, dh, dw, c)


@parallel_kernel
def _forward(xp, w, b, sh, sw, dh, dw, oh, ow):
    n, c = xp.shape[0], xp.shape[1]
    c_out, _, kh, kw = w.shape
    m = c_out // c
    y = np.empty((n, c_out, oh, ow), dtype=xp.dtype)
    for task in prange(n * c_out):
        s, o = task // c_out, task % c_out
        plane, out = xp[s, o // m], y[s, o]
        for r in range(oh):
            row = out[r]
            row[:] = b[o]
            for i in range(kh):
                src = plane[r * sh + i * dh]
                for j in range(kw):
                    wv = w[o, 0, i, j]
                    for q in range(ow):
                        row[q] += wv * src[q * sw + j * dw]
    return y


@parallel_kernel
def _grad_weight(gy, xp, kh, kw, sh, sw, dh, dw):
    n, c_out, oh, ow = gy.shape
    m = c_out // xp.shape[1]
    grad_w = np.empty((c_out, 1, kh, kw), dtype=gy.dtype)
    grad_b = np.empty(c_out, dtype=gy.dtype)
    for o in prange(c_out):
        acc = np.zeros((kh, kw))
        total = 0.0
        for s in range(n):
            plane, g = xp[s, o // m], gy[s, o]
            for r in range(oh):
                for q in range(ow):
                    total += g[r, q]
                for i in range(kh):
                    src = plane[r * sh + i * dh]
                    for j in range(kw):
                        part = 0.0
                        for q in range(ow):
                            part += g[r, q] * src[q * sw + j * dw]
                        acc[i, j] += part
        for i in range(kh):
            for j in range(kw):
                grad_w[o, 0, i, j] = acc[i, j]
        grad_b[o] = total
    return grad_w, grad_b


@parallel_kernel
def _grad_input(gy, w, hp, wp, sh, sw, dh, dw, c):
    n, c_out, oh, ow = gy.shape
    kh, kw = w.shape[2], w.shape[3]
    m = c_out // c
    grad_xp = np.zeros((n, c, hp, wp), dtype=gy.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        plane = grad_xp[s, ch]
        for k in range(m):
            o = ch * m + k
            g = gy[s, o]
            for r in range(oh):
                for i in range(kh):
                    dst = plane[r * sh + i * dh]
                    for j in range(kw):
                        wv = w[o, 0, i, j]
                        for q in range(ow):
                            dst[q * sw + j * dw] += wv * g[r, q]
    return grad_xp
