"""Depthwise convolution (``groups == C_in``) as parallel Numba loops over each channel's plane in the
wide layout of :mod:`._planes`: every tap is one vectorised run over a whole plane (a strided conv's
over the plane's phases), instead of a short loop per output row. A depthwise conv does ``kH*kW``
multiply-adds per output element and is bound by memory, not arithmetic: no GEMM to feed.

The output and the input gradient take one (sample, input channel) plane per task, so every task
writes its own planes. The weight gradient cuts the batch into :data:`BATCH_PARTS` parts, one task
per (part, channel) summing into its own row of partial sums, which are added up in a fixed order
afterwards: enough tasks for every thread without a race, and the same sums for any thread count.

The functions take the arguments of their :mod:`.depthwise_numpy` namesakes.
"""
from __future__ import annotations

import numpy as np

from ._planes import (backward_offsets, dot_taps, forward_offsets, gather_taps, narrow, phase_size, place,
                      split_phases)
from .jit import parallel_kernel, prange, sized

BATCH_PARTS = 8


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
    n, c, hp, wp = xp.shape
    c_out, _, kh, kw = w.shape
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    offsets = forward_offsets(kh, kw, sh, sw, dh, dw, h2, w2)
    taps = w.reshape(c_out, kh * kw)
    y = np.empty((n, c_out, oh, ow), dtype=xp.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        src = split_phases(xp[s, ch], sh, sw, h2, w2)
        acc = np.empty((oh - 1) * w2 + ow, dtype=xp.dtype)
        for o in range(ch * m, ch * m + m):
            acc[:] = b[o]
            gather_taps(acc, src, taps[o], offsets)
            narrow(y[s, o], acc, w2, 1, 1, 0, 0)
    return y


@parallel_kernel
def _grad_weight(gy, xp, kh, kw, sh, sw, dh, dw):
    n, c_out, oh, ow = gy.shape
    c, hp, wp = xp.shape[1], xp.shape[2], xp.shape[3]
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    offsets = forward_offsets(kh, kw, sh, sw, dh, dw, h2, w2)
    parts = min(n, BATCH_PARTS)
    partial = np.zeros((parts, c_out, kh * kw + 1))  # the bias's sum last
    for task in prange(parts * c):
        part, ch = task // c, task % c
        g = np.zeros((oh - 1) * w2 + ow, dtype=gy.dtype)  # the columns past each row stay zero
        for s in range(part * n // parts, (part + 1) * n // parts):
            src = split_phases(xp[s, ch], sh, sw, h2, w2)
            for o in range(ch * m, ch * m + m):
                place(g, gy[s, o], w2, 0, 0)
                sums = partial[part, o]
                dot_taps(sums, g, src, offsets)
                sums[kh * kw] += g.sum()
    grad_w = np.empty((c_out, 1, kh, kw), dtype=gy.dtype)
    grad_b = np.empty(c_out, dtype=gy.dtype)
    total = partial.sum(axis=0)
    for o in range(c_out):
        for t in range(kh * kw):
            grad_w[o, 0, t // kw, t % kw] = total[o, t]
        grad_b[o] = total[o, kh * kw]
    return grad_w, grad_b


@parallel_kernel
def _grad_input(gy, w, hp, wp, sh, sw, dh, dw, c):
    n, c_out, oh, ow = gy.shape
    kh, kw = w.shape[2], w.shape[3]
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    top, left = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    width = w2 + left
    order, offsets, starts = backward_offsets(kh, kw, sh, sw, dh, dw, width)
    taps = w.reshape(c_out, kh * kw)
    length = (h2 - 1) * width + w2
    grad_xp = np.empty((n, c, hp, wp), dtype=gy.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        gz = np.zeros((h2 + top) * width, dtype=gy.dtype)
        acc = np.zeros((sh * sw, length), dtype=gy.dtype)
        weights = np.empty(kh * kw, dtype=gy.dtype)
        for o in range(ch * m, ch * m + m):
            place(gz, gy[s, o], width, top, left)
            for t in range(kh * kw):
                weights[t] = taps[o, order[t]]
            for f in range(sh * sw):
                gather_taps(acc[f], gz, weights[starts[f] : starts[f + 1]], offsets[starts[f] : starts[f + 1]])
        for f in range(sh * sw):
            narrow(grad_xp[s, ch], acc[f], width, sh, sw, f // sw, f % sw)
    return grad_xp
