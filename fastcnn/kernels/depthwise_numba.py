"""Depthwise convolution (``groups == C_in``) as parallel Numba loops over each channel's planes in the
wide layout of :mod:`._planes`: every tap is one vectorised run over a stack of a few samples' planes
(a strided conv's over their phases), instead of a short loop per output row. A depthwise conv does
``kH*kW`` multiply-adds per output element and is bound by memory, not arithmetic: no GEMM to feed.

A task is one input channel of one stack of samples (:func:`._planes.stack_size`, which depends on
the shapes only); for the output and input gradient of the convs that keep the width (below), a few
planes (:func:`.jit.planes_per_task`) with buffers made once for them; for their weight gradient, one
output channel of a fixed part of the batch. The output and the input gradient: every task writes its
own planes. The weight gradient: every task sums into its own row of partial sums, which are added up
in a fixed order afterwards, so there is no race and the sums are the same for any thread count.

The input is padded implicitly: each task copies its plane into a zero-bordered one (split into
phases for a strided conv) that stays in cache, rather than the whole batch being copied once more.

A conv that keeps the rows' width at stride 1 ("same" padding, the common case) pads its planes with
zero rows only, one contiguous copy per plane: tap ``(i, j)`` of output position ``p`` reads that plane
at ``p + i*dh*W + j*dw``, and where that column lies outside the row it reads a neighbouring row's
end instead, which a column mask selects away (:func:`_correlate_rows`; a 3x3 kernel's nine taps in
one pass over the output, others three a pass). Runs are a whole plane long, without the wide layout's
scratch columns or its row-by-row copies. The input gradient is the same
pass over the output gradient with the kernel turned round; the weight gradient its dot products.

The functions take the arguments of their :mod:`.depthwise_numpy` namesakes.
"""
from __future__ import annotations

import numpy as np

from ._planes import (backward_offsets, check_offsets, dot_taps, forward_offsets, gather_taps, narrow, phase_size,
                      place, split_phases, stack_size)
from ._rows import copy_relu, row_sum
from .jit import CHECK_BOUNDS, kernel_helper, parallel_kernel, planes_per_task, prange, sized


def conv2d_forward(x, w, b, geo, out=None):
    """``y = depthwise_conv(x, w) + b`` for an input ``x`` (N, C, H, W), zero-padded as ``geo`` (the conv's
    :class:`~fastcnn._checks.ConvGeometry`) says; into ``out`` (C-contiguous, the output's shape) if given."""
    return _conv2d_forward(x, w, b, geo, out, False)


def conv2d_relu_forward(x, w, b, geo, out=None):
    """:func:`conv2d_forward` through a ReLU (NaN kept), applied to each output plane while it is in cache."""
    return _conv2d_forward(x, w, b, geo, out, True)


def _conv2d_forward(x, w, b, geo, out, relu):
    (sh, sw), (dh, dw), (oh, ow) = geo.stride, geo.dilation, geo.out_hw
    (hp, wp), ((top, _), (left, _)) = geo.padded_hw, geo.padding
    y = np.empty((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype) if out is None else out
    work = x.shape[0] * w.size * oh * ow
    if _same_width(geo, x.shape[3]):
        return sized(_flat_planes, work)(x, w, b, False, 1, w.shape[0] // x.shape[1], dh, dw, top, left, y,
                                         planes_per_task(y.shape[0] * y.shape[1]), relu)
    if _by_column_pairs(geo, x.shape[3]):
        return sized(_forward_pairs, work)(x, w, b, top, left, y, relu)
    return sized(_forward, work)(x, w, b, sh, sw, dh, dw, hp, wp, top, left, y, relu)


def conv2d_grad_weight(gy, x, geo, c):
    """Gradients with respect to the weight (C*m, 1, kH, kW) and the bias (``c`` = C)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    (hp, wp), ((top, _), (left, _)) = geo.padded_hw, geo.padding
    if _same_width(geo, x.shape[3]):
        return sized(_grad_weight_flat, gy.size * kh * kw)(gy, x, kh, kw, dh, dw, top, left)
    if _by_column_pairs(geo, x.shape[3]):
        return sized(_grad_weight_pairs, gy.size * kh * kw)(gy, x, kh, kw, top, left)
    return sized(_grad_weight, gy.size * kh * kw)(gy, x, kh, kw, sh, sw, dh, dw, hp, wp, top, left)


def conv2d_grad_input(gy, w, geo, c):
    """Gradient with respect to the input, shape (N, c, H, W)."""
    (hp, wp), (sh, sw), (dh, dw), (h, width) = geo.padded_hw, geo.stride, geo.dilation, geo.input_hw
    (top, _), (left, _) = geo.padding
    work = gy.size * w.shape[2] * w.shape[3]
    if _same_width(geo, width):  # the output gradient correlated with the kernel turned by 180 degrees
        kh, kw = w.shape[2:]
        grad_x = np.empty((gy.shape[0], c, h, width), dtype=gy.dtype)
        return sized(_flat_planes, work)(gy, w, np.zeros(c, gy.dtype), True, w.shape[0] // c, 1, dh, dw,
                                         (kh - 1) * dh - top, (kw - 1) * dw - left, grad_x,
                                         planes_per_task(gy.shape[0] * c), False)
    if _by_column_pairs(geo, width):
        return sized(_grad_input_pairs, work)(gy, w, c, top, left, h, width)
    return sized(_grad_input, work)(gy, w, hp, wp, sh, sw, dh, dw, c, top, left, h, width)


def _same_width(geo, width: int) -> bool:
    """Whether the conv ``geo`` of an input ``width`` columns wide keeps that width at stride 1, with no
    more zero rows above or below than the kernel reaches, so that it runs over planes padded with rows
    only (see the module docstring)."""
    ((top, bottom), _), reach = geo.padding, (geo.kernel[0] - 1) * geo.dilation[0]
    return geo.stride == (1, 1) and geo.out_hw[1] == width and top <= reach and bottom <= reach


def _by_column_pairs(geo, width: int) -> bool:
    """Whether the conv ``geo`` of an input ``width`` columns wide is a stride-2 one without dilation on
    rows of whole pairs, whose output rows are no wider than the input's (so that they fit the run of
    rows ``width`` apart): the convs :func:`_forward_pairs` and its gradients run."""
    return geo.stride == (2, 2) and geo.dilation == (1, 1) and width % 2 == 0 and geo.out_hw[1] <= width


@parallel_kernel
def _forward_pairs(x, w, b, top, left, y, relu):
    """:func:`conv2d_forward` of a stride-2 conv without dilation on rows of an even width ``W`` into
    ``y`` (through a ReLU with ``relu``): a task is one input channel of a stack of samples.

    Each plane is split into its even and its odd columns in one long loop over its pairs (rows of
    ``W/2``; a loop per row of a phase was most of the time), the stack's planes ``B`` values apart
    (zeros between them, which the padding's taps read). Output ``(r, q)`` of sample ``k`` sits at
    ``k*B + r*W + q`` in one run, so input row ``2r + i - top`` of either half lies at a fixed shift
    from it: tap ``(i, j)`` reads half ``(j - left) % 2`` shifted by ``(i - top) * W/2 + (j - left) // 2``,
    masked where that column falls outside the row (see :func:`_pair_layout`). Each sample's rows then
    give the output their first ``OW`` columns."""
    n, c, h, width = x.shape
    c_out, _, kh, kw = w.shape
    m = c_out // c
    oh, ow = y.shape[2], y.shape[3]
    half = width // 2
    group = stack_size(n, h * width)
    head, stride, shifts, halves, masks, inside = _pair_layout(h, half, oh, ow, kh, kw, top, left, group)
    for task in prange(phase_size(n, group) * c):
        first, ch = task // c * group, task % c
        count = min(n - first, group)
        pairs = _stacked_halves(x, first, count, ch, head, stride)
        acc = np.empty((count - 1) * stride + (oh - 1) * width + ow, dtype=x.dtype)
        weights = np.empty((kw, kh), dtype=x.dtype)
        for o in range(ch * m, ch * m + m):
            _by_columns(weights, w[o, 0], False)
            _correlate_rows(acc, pairs, halves, weights, shifts, masks, inside, b[o], False)
            for k in range(count):
                narrow(y[first + k, o], acc[k * stride :], width, 1, 1, 0, 0)
                _finish_plane(y[first + k, o], relu)
    return y


@parallel_kernel
def _grad_weight_pairs(gy, x, kh, kw, top, left):
    """:func:`conv2d_grad_weight` of the convs :func:`_forward_pairs` runs: each tap's sum is a dot
    product of the output gradient, in that kernel's run (zero off its rows), with the tap's half of
    the input planes at the tap's shift (masked as there); a task is one input channel of a fixed part
    of the batch (the same parts for any thread count), its sums added up in a fixed order afterwards."""
    n, c_out, oh, ow = gy.shape
    c, h, width = x.shape[1], x.shape[2], x.shape[3]
    m = c_out // c
    half = width // 2
    group = stack_size(n, h * width)
    head, stride, shifts, halves, masks, inside = _pair_layout(h, half, oh, ow, kh, kw, top, left, group)
    parts = phase_size(n, group)
    partial = np.zeros((parts, c_out, kh * kw + 1))  # the bias's sum last
    for task in prange(parts * c):
        part, ch = task // c, task % c
        first, count = part * group, min(n - part * group, group)
        pairs = _stacked_halves(x, first, count, ch, head, stride)
        g = np.zeros((count - 1) * stride + (oh - 1) * width + ow, dtype=gy.dtype)
        column = np.empty(kh, dtype=gy.dtype)
        for o in range(ch * m, ch * m + m):
            for k in range(count):
                place(g[k * stride :], gy[first + k, o], width, 0, 0)
            sums = partial[part, o]
            for j in range(kw):
                column[:] = 0
                if inside[j]:
                    dot_taps(column, g, pairs[halves[j]], shifts[j])
                else:
                    dot_taps(column, g, pairs[halves[j]], shifts[j], masks[j])
                for i in range(kh):
                    sums[i * kw + j] += column[i]
            bias = 0.0
            for p in range(g.size):
                bias += g[p]
            sums[kh * kw] += bias
    return _weight_and_bias(partial.sum(axis=0), c_out, kh, kw, gy.dtype)


@parallel_kernel
def _grad_input_pairs(gy, w, c, top, left, h, width):
    """:func:`conv2d_grad_input` of the convs :func:`_forward_pairs` runs, an input channel of a stack
    of samples per task: the forward pass turned round, each tap's weight times the output gradient
    (in the forward run's layout, without the positions where the tap's column is padding) summed into
    the tap's half at minus its shift, a fixed shift for the whole stack; then the halves back into the
    planes' even and odd columns, one long loop a plane."""
    n, c_out, oh, ow = gy.shape
    kh, kw = w.shape[2], w.shape[3]
    m = c_out // c
    half = width // 2
    group = stack_size(n, h * width)
    head, stride, shifts, halves, masks, inside = _pair_layout(h, half, oh, ow, kh, kw, top, left, group)
    lowest, highest = shifts.min(), shifts.max()
    ahead = max(0, highest - head)  # zeros before the output gradient, for the largest shift
    grad_x = np.empty((n, c, h, width), dtype=gy.dtype)
    for task in prange(phase_size(n, group) * c):
        first, ch = task // c * group, task % c
        count = min(n - first, group)
        size = (count - 1) * stride + h * half  # the stack's halves, from the first plane's first value
        run = (count - 1) * stride + (oh - 1) * width + ow  # the output gradient's, as the forward pass's
        g = np.zeros(ahead + max(head + size - lowest + 1, run), dtype=gy.dtype)
        masked = np.zeros_like(g)
        sums = np.zeros((2, size), dtype=gy.dtype)
        offsets = np.empty(kh, np.int64)
        weights = np.empty(kh, dtype=gy.dtype)
        for o in range(ch * m, ch * m + m):
            for k in range(count):
                place(g[ahead + k * stride :], gy[first + k, o], width, 0, 0)
            for j in range(kw):
                source = g
                if not inside[j]:  # the output gradient without the positions whose tap column is padding
                    source = masked
                    column = (j - left) // 2
                    for k in range(count):
                        start = ahead + k * stride
                        place(masked[start:], gy[first + k, o], width, 0, 0)
                        for r in range(oh):
                            row = masked[start + r * width : start + r * width + ow]
                            for q in range(min(ow, max(0, -column))):
                                row[q] = 0
                            for q in range(max(0, half - column), ow):
                                row[q] = 0
                for i in range(kh):
                    weights[i] = w[o, 0, i, j]
                    offsets[i] = ahead + head - shifts[j, i]
                gather_taps(sums[halves[j]], source, weights, offsets)
        for k in range(count):
            plane = grad_x[first + k, ch].reshape(h * width)
            evens, odds = sums[0, k * stride :], sums[1, k * stride :]
            for p in range(h * half):
                plane[2 * p] = evens[p]
                plane[2 * p + 1] = odds[p]
    return grad_x


@kernel_helper
def _stacked_halves(x, first, count, ch, head, stride):
    """Channel ``ch`` of samples ``first`` to ``first + count`` of ``x`` as :func:`_forward_pairs` reads
    it: ``pairs[0]`` the even and ``pairs[1]`` the odd columns, in rows of ``W/2``, plane ``k`` from
    ``head + k * stride``, zeros around; each plane one loop over its pairs."""
    h, width = x.shape[2], x.shape[3]
    half = width // 2
    pairs = np.zeros((2, head + count * stride), dtype=x.dtype)
    for k in range(count):
        plane = x[first + k, ch].reshape(h * width)
        evens, odds = pairs[0, head + k * stride :], pairs[1, head + k * stride :]
        for p in range(h * half):
            evens[p] = plane[2 * p]
            odds[p] = plane[2 * p + 1]
    return pairs


@kernel_helper
def _pair_layout(h, half, oh, ow, kh, kw, top, left, group):
    """For :func:`_forward_pairs` of stacks of ``group`` planes: the zeros before the first plane's
    halves, the distance ``B`` between planes (whole rows of the output run; zeros between the planes
    for every tap's reach), and for each tap column ``j`` the shifts of its taps (``shifts[j, i]``), its
    half, the mask of run positions whose column lies inside the row, and whether all do."""
    width = 2 * half
    size = (oh - 1) * width + ow
    head = top * half - min(0, (0 - left) // 2)
    reach = max(0, (kh - 1 - top) * half + (kw - 1 - left) // 2)
    stride = -(-max(h * half + head, size + reach + 1) // width) * width
    run = (group - 1) * stride + size
    shifts = np.empty((kw, kh), np.int64)
    halves = np.empty(kw, np.int64)
    masks = np.empty((kw, run), np.bool_)
    inside = np.empty(kw, np.bool_)
    for j in range(kw):
        column = (j - left) // 2
        halves[j] = (j - left) % 2
        for i in range(kh):
            shifts[j, i] = head + (i - top) * half + column
        inside[j] = 0 <= column and ow - 1 + column < half
        for p in range(run):
            q = p % width + column
            masks[j, p] = 0 <= q < half
    return head, stride, shifts, halves, masks, inside


@parallel_kernel
def _forward(x, w, b, sh, sw, dh, dw, hp, wp, top, left, y, relu):
    """:func:`conv2d_forward` of any other conv into ``y`` (through a ReLU with ``relu``): a task is one
    input channel of a stack of samples, split into phases (see the module docstring)."""
    n, c = x.shape[0], x.shape[1]
    c_out, _, kh, kw = w.shape
    oh, ow = y.shape[2], y.shape[3]
    m = c_out // c
    h2, w2 = phase_size(hp, sh), phase_size(wp, sw)
    block = h2 * w2  # a sample's phase
    group = stack_size(n, sh * sw * block)
    offsets = forward_offsets(kh, kw, sh, sw, dh, dw, group * h2, w2)
    taps = w.reshape(c_out, kh * kw)
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
                _finish_plane(y[first + k, o], relu)
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
            sums[kh * kw] += row_sum(g)
    return _weight_and_bias(partial.sum(axis=0), c_out, kh, kw, gy.dtype)


@kernel_helper
def _weight_and_bias(total, c_out, kh, kw, dtype):
    """The weight (C_out, 1, kH, kW) and bias gradients in ``dtype`` from the sums ``total`` (C_out,
    kH*kW + 1), the bias's last."""
    grad_w = np.empty((c_out, 1, kh, kw), dtype=dtype)
    grad_b = np.empty(c_out, dtype=dtype)
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


@kernel_helper
def _flat_layout(out_rows, kh, kw, dh, dw, left, width):
    """For ``out_rows`` output rows of ``width``: their number of values, the length of a plane padded
    with rows only (:func:`_padded_length`), the taps' offsets in it (:func:`_column_offsets`), the
    column masks (:func:`_column_masks`), which columns lie inside the row everywhere and need none
    (the one that reads straight down), and each column's source plane (all the one: see
    :func:`_correlate_rows`)."""
    size = out_rows * width
    inside = np.empty(kw, np.bool_)
    for j in range(kw):
        inside[j] = j * dw == left
    return (size, _padded_length(out_rows, kh, kw, dh, dw, width), _column_offsets(kh, kw, dh, dw, width),
            _column_masks(kw, dw, left, width, size), inside, np.zeros(kw, np.int64))


@kernel_helper
def _padded_length(out_rows, kh, kw, dh, dw, width):
    """Values in a plane padded with rows only (see :func:`_row_padded`) for ``out_rows`` output rows,
    with the columns that the first and last rows' taps reach before and after it."""
    return (out_rows + (kh - 1) * dh) * width + (kw - 1) * dw


@kernel_helper
def _row_padded(buf, plane, start):
    """Copy the flat ``plane`` into ``buf`` from ``start``; the rest of ``buf`` keeps its zeros."""
    if CHECK_BOUNDS:
        assert 0 <= start and start + plane.shape[0] <= buf.shape[0], "_row_padded: the plane does not fit"
    dst = buf[start : start + plane.shape[0]]  # indices from 0: no check for negative ones, so LLVM vectorises
    for p in range(plane.shape[0]):
        dst[p] = plane[p]


@kernel_helper
def _column_offsets(kh, kw, dh, dw, width):
    """``offsets[j, i]``: where tap ``(i, j)`` of output position 0 reads in a row-padded plane."""
    offsets = np.empty((kw, kh), np.int64)
    for j in range(kw):
        for i in range(kh):
            offsets[j, i] = i * dh * width + j * dw
    return offsets


@kernel_helper
def _column_masks(kw, dw, left, width, size):
    """``masks[j, p]``: whether tap column ``j`` of output position ``p`` (rows ``width`` wide) reads
    inside its row rather than a neighbouring row's end."""
    masks = np.empty((kw, size), np.bool_)
    for j in range(kw):
        for p in range(size):
            q = p % width + j * dw - left
            masks[j, p] = 0 <= q < width
    return masks


@kernel_helper
def _finish_plane(plane, relu):
    """The ReLU (NaN kept) on an output ``plane`` just written, with ``relu``."""
    _finish_flat(plane.reshape(plane.size), relu)


@kernel_helper
def _finish_flat(flat, relu):
    """:func:`_finish_plane` of a plane given flat."""
    if relu:
        copy_relu(flat, flat, flat.dtype.type(0))


@kernel_helper
def _by_columns(weights, k, flip):
    """Into ``weights`` (kW, kH): the kernel ``k`` (kH, kW) as ``weights[j, i] = k[i, j]``, or the kernel
    turned by 180 degrees."""
    kh, kw = k.shape
    for j in range(kw):
        for i in range(kh):
            weights[j, i] = k[kh - 1 - i, kw - 1 - j] if flip else k[i, j]


@kernel_helper
def _correlate_rows(out, sources, halves, weights, offsets, masks, inside, base, add):
    """``out[p] = (out[p] if add else base) + weights[j, i] * sources[halves[j], p + offsets[j, i]]``
    summed over the taps whose column lies inside the row (``masks[j, p]``; not needed where
    ``inside[j]``): a row-padded plane (one source) or a plane's two halves of columns (stride 2, see
    :func:`_forward_pairs`). A 3x3 kernel in one pass over ``out`` (:func:`_correlate_3x3`), others
    three taps a pass."""
    if offsets.shape[0] == 3 and offsets.shape[1] == 3:
        _correlate_3x3(out, sources[halves[0]], sources[halves[1]], sources[halves[2]], weights, offsets, masks,
                       base, add)
        return
    if not add:
        out[:] = base
    for j in range(offsets.shape[0]):
        if inside[j]:
            gather_taps(out, sources[halves[j]], weights[j], offsets[j])
        else:
            gather_taps(out, sources[halves[j]], weights[j], offsets[j], masks[j])


@kernel_helper
def _correlate_3x3(out, left_source, middle_source, right_source, weights, offsets, masks, base, add):
    """:func:`_correlate_rows` of a 3x3 kernel, tap column ``j`` reading its own source: the nine taps in
    one pass, each column's three summed and selected by its mask (so an inf a masked column reads is
    never multiplied in). (Measured, 2 threads, batch 256, 3x3 "same" convs of 32 to 256 channels on
    32x32 to 8x8: with the flat kernels' buffers made once for several planes, forward passes took
    0.54-0.78x the time of three passes of three taps with buffers made per plane. At stride 2, by
    column pairs, 0.95-1.05x: shared for one code path, not for speed.)"""
    n = out.shape[0]
    if CHECK_BOUNDS:
        for j, source in enumerate((left_source, middle_source, right_source)):
            check_offsets(source, offsets[j], n)
        assert masks.shape[1] >= n, "_correlate_3x3: the masks are too short"
    zero = out.dtype.type(0)
    w00, w01, w02 = weights[0, 0], weights[0, 1], weights[0, 2]
    w10, w11, w12 = weights[1, 0], weights[1, 1], weights[1, 2]
    w20, w21, w22 = weights[2, 0], weights[2, 1], weights[2, 2]
    a0, a1, a2 = left_source[offsets[0, 0] :], left_source[offsets[0, 1] :], left_source[offsets[0, 2] :]
    b0, b1, b2 = middle_source[offsets[1, 0] :], middle_source[offsets[1, 1] :], middle_source[offsets[1, 2] :]
    c0, c1, c2 = right_source[offsets[2, 0] :], right_source[offsets[2, 1] :], right_source[offsets[2, 2] :]
    m0, m1, m2 = masks[0], masks[1], masks[2]
    for p in range(n):
        left = w00 * a0[p] + w01 * a1[p] + w02 * a2[p]
        middle = w10 * b0[p] + w11 * b1[p] + w12 * b2[p]
        right = w20 * c0[p] + w21 * c1[p] + w22 * c2[p]
        total = (left if m0[p] else zero) + (middle if m1[p] else zero) + (right if m2[p] else zero)
        out[p] = (out[p] if add else base) + total


@parallel_kernel
def _flat_planes(src, w, base, flip, count, divisor, dh, dw, top, left, out, per_task, relu):
    """The forward pass or input gradient of a conv that keeps the width at stride 1, into ``out``, a
    plane ``(s, q)`` of it being ``base[q]`` plus, for ``k < count``, plane ``(s, o // divisor)`` of
    ``src`` (padded with ``top`` zero rows, ``left`` columns) correlated with kernel ``o = q * count + k``
    (turned by 180 degrees with ``flip``), then through a ReLU with ``relu``. The forward pass: ``count``
    1, ``divisor`` the channel multiplier; the input gradient: the output gradient, ``count`` the
    multiplier, ``divisor`` 1, and the padding the kernel's reach leaves (``(kH - 1) * dh - top`` rows
    above, ``(kW - 1) * dw - left`` columns left). ``per_task`` planes a task, which share one
    row-padded plane (its zero rows written once) and one array of the kernel's columns."""
    n, planes_per_sample, rows, width = out.shape
    kh, kw = w.shape[2], w.shape[3]
    src_size = src.shape[2] * width
    size, length, offsets, masks, inside, halves = _flat_layout(rows, kh, kw, dh, dw, left, width)
    planes = n * planes_per_sample
    src_flat, out_flat = src.reshape(src.size), out.reshape(out.size)  # planes as slices: no reshape per plane
    for task in prange(-(-planes // per_task)):
        buf = np.zeros((1, length), dtype=out.dtype)
        weights = np.empty((kw, kh), dtype=out.dtype)
        in_buf = -1  # the source plane buf holds (a multiplier's planes read one source in turn)
        for plane in range(task * per_task, min(planes, (task + 1) * per_task)):
            s, q = plane // planes_per_sample, plane % planes_per_sample
            out_plane = out_flat[plane * size : (plane + 1) * size]
            for k in range(count):
                o = q * count + k
                source = s * src.shape[1] + o // divisor
                if source != in_buf:
                    in_buf = source
                    _row_padded(buf[0], src_flat[source * src_size : (source + 1) * src_size], left + top * width)
                _by_columns(weights, w[o, 0], flip)
                _correlate_rows(out_plane, buf, halves, weights, offsets, masks, inside, base[q], k > 0)
            _finish_flat(out_plane, relu)
    return out


@parallel_kernel
def _grad_weight_flat(gy, x, kh, kw, dh, dw, top, left):
    """:func:`conv2d_grad_weight` of a conv that keeps the width at stride 1: a task is one output
    channel of a fixed part of the batch (the same parts for any thread count), whose sums are added
    up in a fixed order afterwards."""
    n, c_out, oh, width = gy.shape
    c, h = x.shape[1], x.shape[2]
    m = c_out // c
    size, length, offsets, masks, inside, _ = _flat_layout(oh, kh, kw, dh, dw, left, width)
    group = stack_size(n, size)
    parts = phase_size(n, group)
    partial = np.zeros((parts, c_out, kh * kw + 1))  # the bias's sum last
    gy_flat, x_flat = gy.reshape(gy.size), x.reshape(x.size)  # planes as slices: no reshape per plane
    for task in prange(parts * c_out):
        part, o = task // c_out, task % c_out
        buf, column = np.zeros(length, dtype=x.dtype), np.empty(kh)
        sums = partial[part, o]
        for s in range(part * group, min(n, part * group + group)):
            g = gy_flat[(s * c_out + o) * size : (s * c_out + o + 1) * size]
            source = s * c + o // m
            _row_padded(buf, x_flat[source * h * width : (source + 1) * h * width], left + top * width)
            for j in range(kw):
                column[:] = 0
                if inside[j]:
                    dot_taps(column, g, buf, offsets[j])
                else:
                    dot_taps(column, g, buf, offsets[j], masks[j])
                for i in range(kh):
                    sums[i * kw + j] += column[i]
            bias = 0.0
            for p in range(size):
                bias += g[p]
            sums[kh * kw] += bias
    return _weight_and_bias(partial.sum(axis=0), c_out, kh, kw, gy.dtype)
