"""Depthwise convolution (``groups == C_in``) as parallel Numba loops over each channel's planes in the
wide layout of :mod:`._planes`: every tap is one vectorised run over a stack of a few samples' planes
(a strided conv's over their phases), instead of a short loop per output row. A depthwise conv does
``kH*kW`` multiply-adds per output element and is bound by memory, not arithmetic: no GEMM to feed.

A task is one input channel of one stack of samples (:func:`._planes.stack_size`, which depends on
the shapes only). The output and the input gradient: every task writes its own planes. The weight
gradient: every task sums into its own row of partial sums, which are added up in a fixed order
afterwards, so there is no race and the sums are the same for any thread count.

The input is padded implicitly: each task copies its plane into a zero-bordered one (split into
phases for a strided conv) that stays in cache, rather than the whole batch being copied once more.
The functions take the arguments of their :mod:`.depthwise_numpy` namesakes.
"""
from __future__ import annotations

import numpy as np

from ._planes import (backward_offsets, dot_taps, forward_offsets, gather_taps, narrow, phase_size, place,
                      split_phases, stack_size)
from .jit import parallel_kernel, prange, sized


def conv2d_forward(x, w, b, geo):
    """``y = depthwise_conv(x, w) + b`` for an input ``x`` (N, C, H, W), zero-padded as ``geo`` (the conv's
    :class:`~fastcnn._checks.ConvGeometry`) says."""
    (sh, sw), (dh, dw), (oh, ow) = geo.stride, geo.dilation, geo.out_hw
    (hp, wp), ((top, _), (left, _)) = geo.padded_hw, geo.padding
    return sized(_forward, x.shape[0] * w.size * oh * ow)(x, w, b, sh, sw, dh, dw, oh, ow, hp, wp, top, left)


def conv2d_grad_weight(gy, x, geo, c):
    """Gradients with respect to the weight (C*m, 1, kH, kW) and the bias (``c`` = C)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    (hp, wp), ((top, _), (left, _)) = geo.padded_hw, geo.padding
    return sized(_grad_weight, gy.size * kh * kw)(gy, x, kh, kw, sh, sw, dh, dw, hp, wp, top, left)


def conv2d_grad_input(gy, w, geo, c):
    """Gradient with respect to the input, shape (N, c, H, W)."""
    (hp, wp), (sh, sw), (dh, dw) = geo.padded_hw, geo.stride, geo.dilation
    ((top, bottom), (left, right)) = geo.padding
    return sized(_grad_input, gy.size * w.shape[2] * w.shape[3])(gy, w, hp, wp, sh, sw, dh, dw, c, top, left,
                                                                 hp - top - bottom, wp - left - right)


@parallel_kernel
def _forward(x, w, b, sh, sw, dh, dw, oh, ow, hp, wp, top, left):
    n, c = x.shape[0], x.shape[1]
    c_out, _, kh, kw = w.shape
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    block = h2 * w2  # a sample's phase
    group = stack_size(n, sh * sw * block)
    offsets = forward_offsets(kh, kw, sh, sw, dh, dw, group * h2, w2)
    taps = w.reshape(c_out, kh * kw)
    y = np.empty((n, c_out, oh, ow), dtype=x.dtype)
    for task in prange(phase_size(n, group) * c):
        first, ch = task // c * group, task % c
        count = min(n - first, group)
        src = np.zeros(sh * sw * group * block, dtype=x.dtype)
        acc = np.empty(((count - 1) * h2 + oh - 1) * w2 + ow, dtype=x.dtype)
        for k in range(count):
            split_phases(src[k * block :], x[first + k, ch], sh, sw, h2, w2, top, left, group * block)
        for o in range(ch * m, ch * m + m):
            acc[:] = b[o]
            gather_taps(acc, src, taps[o], offsets)
            for k in range(count):
                narrow(y[first + k, o], acc[k * block :], w2, 1, 1, 0, 0)
    return y


@parallel_kernel
def _grad_weight(gy, x, kh, kw, sh, sw, dh, dw, hp, wp, top, left):
    n, c_out, oh, ow = gy.shape
    c = x.shape[1]
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    block = h2 * w2
    group = stack_size(n, sh * sw * block)
    offsets = forward_offsets(kh, kw, sh, sw, dh, dw, group * h2, w2)
    parts = phase_size(n, group)
    partial = np.zeros((parts, c_out, kh * kw + 1))  # the bias's sum last
    for task in prange(parts * c):
        part, ch = task // c, task % c
        first, count = part * group, min(n - part * group, group)
        src = np.zeros(sh * sw * group * block, dtype=x.dtype)
        g = np.zeros(((count - 1) * h2 + oh - 1) * w2 + ow, dtype=gy.dtype)  # zero between the planes
        for k in range(count):
            split_phases(src[k * block :], x[first + k, ch], sh, sw, h2, w2, top, left, group * block)
        for o in range(ch * m, ch * m + m):
            for k in range(count):
                place(g[k * block :], gy[first + k, o], w2, 0, 0)
            sums = partial[part, o]
            dot_taps(sums, g, src, offsets)
            bias = 0.0
            for p in range(g.size):  # a loop: g.sum() is a parallel reduction where this prange is serial
                bias += g[p]
            sums[kh * kw] += bias
    grad_w = np.empty((c_out, 1, kh, kw), dtype=gy.dtype)
    grad_b = np.empty(c_out, dtype=gy.dtype)
    total = partial.sum(axis=0)
    for o in range(c_out):
        for t in range(kh * kw):
            grad_w[o, 0, t // kw, t % kw] = total[o, t]
        grad_b[o] = total[o, kh * kw]
    return grad_w, grad_b


@parallel_kernel
def _grad_input(gy, w, hp, wp, sh, sw, dh, dw, c, top, left, h, wd):
    n, c_out, oh, ow = gy.shape
    kh, kw = w.shape[2], w.shape[3]
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    above, before = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    width = w2 + before
    block = (h2 + above) * width  # a sample's output gradient with its zero border
    group = stack_size(n, sh * sw * block)
    order, offsets, starts = backward_offsets(kh, kw, sh, sw, dh, dw, width)
    taps = w.reshape(c_out, kh * kw)
    grad_x = np.empty((n, c, h, wd), dtype=gy.dtype)
    for task in prange(phase_size(n, group) * c):
        first, ch = task // c * group, task % c
        count = min(n - first, group)
        gz = np.zeros(group * block, dtype=gy.dtype)
        acc = np.zeros((sh * sw, ((count - 1) * (h2 + above) + h2 - 1) * width + w2), dtype=gy.dtype)
        weights = np.empty(kh * kw, dtype=gy.dtype)
        for o in range(ch * m, ch * m + m):
            for k in range(count):
                place(gz[k * block :], gy[first + k, o], width, above, before)
            for t in range(kh * kw):
                weights[t] = taps[o, order[t]]
            for f in range(sh * sw):
                gather_taps(acc[f], gz, weights[starts[f] : starts[f + 1]], offsets[starts[f] : starts[f + 1]])
        for f in range(sh * sw):
            for k in range(count):
                narrow(grad_x[first + k, ch], acc[f, k * block :], width, sh, sw, f // sw - top, f % sw - left)
    return grad_x
