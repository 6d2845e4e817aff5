"""Conv2D as direct ``@njit(parallel=True)`` loops, built for the small-channel convs of MNIST nets.

Stride 1 works in a "wide", channel-major layout: each channel of the whole batch is one flat run of
``N * Hp * Wp`` values, and output pixel ``(s, r, q)`` sits at flat position ``s*Hp*Wp + r*Wp + q`` in
the output run, so kernel element ``(i, j)`` reads the input run shifted by ``i*dh*Wp + j*dw``. The
forward pass and the input gradient are then sums of shifted runs times weights, computed a register
tile of output channels by positions at a time, and the weight gradient is dot products of runs with
shifted runs, a tile of output channels by taps at a time (see :mod:`._tiles`). Positions that are
not real output pixels (the last columns and rows of each sample, and the padding to whole tiles) are
scratch, dropped from the output and zero in the gradient. The runs are cut into cache-sized blocks,
and the parallel tasks are blocks (by groups of output rows, where blocks are few), or samples (see
below). Padding is never
stored: neighbouring rows share their zero columns and neighbouring samples their zero rows
(:class:`_WidePlanes`), so a "same"-padded 3x3 conv on 3x3 planes computes 16 positions a sample, not
25, and no padded copy of the input is made. Other
strides with dilation 1 become a stride-1 conv of the input's phases (:mod:`._polyphase`), except
where :mod:`.conv_channels` runs faster, with output channels in the vector lanes (see its
``takes``): the forward pass and weight gradient of most strided convs whose blocks of output
channels are at least three-quarters full (on AVX-512 16 or 32 float32 channels, 48 to 64, ...) and of every
dilated one, the
weight gradient of stride-1 convs of 512 taps or more (64 or more, on small planes, with 32 output
channels or fewer), and the forward pass and input gradient of stride-1 3x3 convs on small planes
(8x8, and 16x16 for the input gradient), where the wide layout's scratch positions cost most, if their
blocks of output (for the input gradient, input) channels are full and the batch gives each thread a
sample; and the input gradient of every strided conv without dilation (but unpadded 1x1 ones, see
below), phase by phase. The input
gradient of a dilated strided conv runs row by row. A 1x1 conv with stride 1 and no padding needs no layout at all: its
forward pass and input gradient are products per sample in the same register tiles, its weight
gradient dot products over segments of the samples' planes as they lie (:mod:`.pointwise_numba`:
0.48-0.94x the time of the wide layout's or the channel lanes' kernels, which read a copy of both
arrays, for the 1x1 convs of the model zoo on an AVX2 Zen 3, 2026-12-02; 1.07x for 256->512 channels
on 4x4); one with a stride is that conv of its input subsampled by the stride (a copy a quarter of the
input's size, for stride 2), its input gradient spread back to the strided positions.

3x3 stride-1 convs of 32 channels or more run by Winograd's F(2x2, 3x3) instead, where :func:`.winograd.takes`
them (before every route above and below; with a max-pool after one, the pool runs on the full output,
and its gradient is unpooled first).

Where the shapes allow, a stride-1 forward pass is one launch of a :class:`PreparedConv`, whose
tasks are samples: each task's wide output is copied out while it is in cache, not the whole batch's
written and read back; a stride-1 input gradient in the wide layout runs by the same tasks
(:func:`_grad_input_wide`: the same bits as the two launches it replaced, which wrote the whole
batch's wide output and copied it out; 0.82-0.96x their time on 3x3 convs at batch 2 to 256,
2026-12-02). A conv followed by a 2x2, stride-2 max-pool (:func:`conv2d_max_pool2d_forward`
and its gradients) never makes the full-size output: the forward pass pools the wide output as it
copies it out, and the pool's gradient is written straight into the runs the conv's gradients read
(but for a weight gradient that :mod:`.conv_channels` takes: it reads the unpooled gradient).

Every parallel loop writes a disjoint slice of its output, so there are no races and the result does
not depend on the thread count. The public entry points pick the stride-1 or the general kernel in
Python, so only the kernel a network uses is ever compiled, and allocate the large arrays with NumPy,
which asks the kernel for huge pages (far fewer page faults than Numba's own allocations).
"""
from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import numpy as np

from . import _polyphase, conv_channels, elementwise_numba, jit, pointwise_numba, pool_numba, winograd
from ._compose import gated, pooled, unpooled
from .jit import kernel_helper, parallel_kernel, prange, sized
from ._pool_vectors import clear
from ._planes import narrow
from ._rows import copy_gated, copy_plus, copy_relu, row_sum, sum_shares
from ._taps import tap_offsets
from .scratch import NO_PADDING, cropped, derived, scratch
from ._tiles import (DOT_COLS, DOT_ROWS, ROWS, TILE_SPEED, dot_row, dot_tile, lanes, store_row, store_tile, tile_rows,
                     tile_width, whole)

_BLOCK = 576  # positions per block of a run (whole tiles): one parallel task's share of the forward pass and
# the input gradient. Measured (2 threads, 3x3 convs at batch 64, blocks of 288 to 2304): 576 best or within
# 5%; on 128 and 256 channels of 8x8, 1.7-2x faster than 2304, whose runs (1-2 MB a block) left L2 cache
_GRAD_BLOCK = 2304  # positions per block of the weight gradient's dot products (see _grad_weight_wide)
_TAPS_PER_PASS = 144  # a pass's weights, ROWS rows of 144 float32 (4.5 KiB on AVX-512), stay in L1 cache
_ROWS_PER_PASS = 48  # rows of runs that a pass reads, at most (see _pass_taps)
_TASK_POSITIONS = 256  # positions of whole samples that a task of _conv_wide_from takes at least
_GRAD_TASKS = 16  # the weight gradient's tasks, at most: enough to balance two to four threads
_TASKS_PER_THREAD = 8  # the forward pass's and input gradient's tasks, at least (see _groups_for)


@kernel_helper
def _tap_matrix(w, rows, flip):
    """The weight (C_out, C_in, kH, kW) as a (rows, C_in*kH*kW) matrix, the rows past the last
    channel zero. ``flip`` gives the input gradient's: a row per input channel, each kernel row reversed."""
    c_out, c_in, kh, kw = w.shape
    n_cols = c_out if flip else c_in
    taps = np.zeros((rows, n_cols * kh * kw), dtype=w.dtype)
    _write_taps(w, taps, flip)
    return taps


@kernel_helper
def _write_taps(w, taps, flip):
    """The rows of :func:`_tap_matrix` that hold weights, written into ``taps`` (the rows after them untouched)."""
    c_out, c_in, kh, kw = w.shape
    n_rows, n_cols = (c_in, c_out) if flip else (c_out, c_in)
    for r in range(n_rows):
        for c in range(n_cols):
            for i in range(kh):
                for j in range(kw):
                    taps[r, (c * kh + i) * kw + j] = w[c, r, i, kw - 1 - j] if flip else w[r, c, i, j]


@kernel_helper
def _correlate_block(out, taps, runs, offsets, block, r_begin, r_end, pass_taps):
    """Block ``block`` of rows ``r_begin`` to ``r_end`` of ``out``, a register tile at a time (see
    :func:`._tiles.store_tile`), in passes of at most ``pass_taps`` taps (see :func:`_pass_taps`)."""
    total = out.shape[1]
    n_taps = taps.shape[1]
    per_pass = -(-n_taps // -(-n_taps // pass_taps))
    flat = runs.reshape(runs.size)
    step = _row_unit(out.shape[0])
    for r0 in range(r_begin, r_end, step):
        for t0 in range(0, n_taps, per_pass):
            for p in range(block * _BLOCK, min(total, (block + 1) * _BLOCK), tile_width(out.itemsize)):
                if step == ROWS:
                    store_tile(out, taps, r0, p, flat, offsets, t0, min(t0 + per_pass, n_taps), t0 > 0)
                else:
                    store_row(out, taps, r0, p, flat, offsets, t0, min(t0 + per_pass, n_taps), t0 > 0)


@kernel_helper
def _row_unit(rows):
    """The rows of an output that :func:`_correlate_block` computes at once: a tile, or one (see
    :func:`._tiles.tile_rows`)."""
    return ROWS if rows % ROWS == 0 else 1


def _pass_taps(kh: int, kw: int, channel_rows: int | None = None) -> int:
    """Taps in a pass of :func:`_correlate_block`, for a ``kh x kw`` conv whose taps of an input channel
    read ``channel_rows`` rows of runs (None: ``kh``, a tile's rows of one run for a stride-1 conv; rows
    of ``ph*pw`` phase runs for a strided one): as many as read at most :data:`_ROWS_PER_PASS` rows,
    whose values for a tile stay in L1 cache, and at most :data:`_TAPS_PER_PASS`, whose weights do.
    (Measured, 2 threads: a pass of 144 taps of a 3x3, stride-2 conv read 64 phase runs; 36 to 54 taps
    took 20% less time. 256 channels of 1x1: 48 taps, 29% less than 144.)"""
    return max(1, min(_TAPS_PER_PASS, _ROWS_PER_PASS * kh * kw // (channel_rows or kh)))


def _row_groups(rows: int, length: int) -> int:
    """Into how many groups of whole tiles :func:`_correlate_task` cuts the ``rows`` of an output of
    ``length`` positions (see :func:`_groups_for`). Whole blocks alone can be too few to balance the
    threads: a batch of small planes, or few samples. (Measured with blocks of 2304, 3 for 64 samples
    of 8x8, where one of two threads idled through a third of the work: 64 to 256 channels took 23-26%
    less time with 2 to 8 groups than with 1.)"""
    return _groups_for(rows, max(1, -(-length // _BLOCK)))  # an empty batch has no block


def _groups_for(rows: int, tasks: int) -> int:
    """Into how many groups of whole tiles to cut ``rows`` output rows so that ``tasks`` tasks, each cut
    so, make at least :data:`_TASKS_PER_THREAD` a thread: a power of two (so that the groups are even),
    or as many groups as the rows have tiles, if fewer."""
    wanted = -(-_TASKS_PER_THREAD * jit.num_threads() // tasks)
    return max(1, min(rows // _row_unit(rows), 1 << (wanted - 1).bit_length()))


@kernel_helper
def _group_rows(rows, groups, group):
    """The rows ``[first, stop)`` of group ``group`` of the ``groups`` that :func:`_groups_for` cuts ``rows`` into."""
    unit = _row_unit(rows)
    tiles = rows // unit
    return group * tiles // groups * unit, (group + 1) * tiles // groups * unit


@kernel_helper
def _correlate_task(out, taps, runs, offsets, groups, pass_taps, task):
    """Task ``task`` of the ``-(-out.shape[1] // _BLOCK) * groups`` that :func:`_correlate_block` cuts
    ``out`` into: a block of positions by one of ``groups`` groups of rows (whole tiles)."""
    block, group = task // groups, task % groups
    first, stop = _group_rows(out.shape[0], groups, group)
    _correlate_block(out, taps, runs, offsets, block, first, stop, pass_taps)


def _runs(a, hp, wp, role, head=0, tail=0, gate=None):
    """``a`` (N, C, H, W) as runs (C, head + N*hp*wp + tail) in the scratch array ``role``: each
    sample's plane at the top left of an ``hp x wp`` block, zeros elsewhere (the scratch positions, and
    the head and tail that shifted reads run into); with ``gate`` (the shape of ``a``), only where
    ``gate`` is positive (``a`` a gradient through the ReLU whose output is ``gate``). Made once per
    :class:`.scratch.shared_inputs` block."""
    n, c = a.shape[:2]
    gated = gate is not None
    sources = (a, gate) if gated else a
    return derived(role, (c, head + n * hp * wp + tail), a.dtype, sources, (hp, wp, head, tail),
                   lambda runs: sized(_fill_runs, n * c * hp * wp)(a, gate if gated else a, gated, runs, hp, wp, head))


@parallel_kernel
def _fill_runs(a, gate, gated, runs, hp, wp, head):
    """:func:`_runs`, a (sample, channel) plane per task."""
    flat = runs.reshape(runs.size)
    for task in prange(a.shape[0] * a.shape[1]):
        _fill_plane(a, gate, gated, flat, task, runs.shape[1], hp, wp, head)


@kernel_helper
def _fill_plane(a, gate, gated, flat, task, length, hp, wp, head):
    """The (sample, channel) plane ``task`` of :func:`_runs` (rows of ``length`` values in ``flat``);
    with ``gated``, ``a`` only where ``gate`` is positive."""
    n, c, h, w = a.shape
    plane = hp * wp
    s, ch = task // c, task % c
    start = ch * length + head + s * plane
    if w == wp:  # no scratch columns: the plane is one run
        if gated:
            copy_gated(flat[start : start + h * w], a[s, ch].reshape(h * w), gate[s, ch].reshape(h * w))
        else:
            copy_plus(flat[start : start + h * w], a[s, ch].reshape(h * w), 0)
    else:
        for r in range(h):
            row = start + r * wp
            if gated:
                copy_gated(flat[row : row + w], a[s, ch, r], gate[s, ch, r])
            else:
                copy_plus(flat[row : row + w], a[s, ch, r], 0)
            clear(flat, row + w, wp - w)
    clear(flat, start + h * wp, plane - h * wp)
    _clear_ends(flat, ch, length, start, plane, s, n)


@kernel_helper
def _clear_ends(flat, run, length, start, plane, s, n):
    """Zero the values of run ``run`` (the runs are rows of ``length`` values in ``flat``) that lie
    outside every sample's plane: before sample 0's, if ``s == 0``, and after the last sample's, if
    ``s == n - 1``; sample ``s``'s plane of ``plane`` values starts at ``start``."""
    if s == 0:
        clear(flat, run * length, start - run * length)
    if s == n - 1:
        clear(flat, start + plane, (run + 1) * length - start - plane)


def _reach(kh, kw, wp, dh, dw):
    """How far a kernel's shifted reads reach along a run: the zeros the input's runs need after them
    (the forward pass, the weight gradient) and the output gradient's runs before them (the input gradient)."""
    return (kh - 1) * dh * wp + (kw - 1) * dw


def _wide_length(n, hp, wp, itemsize):
    """Positions in a wide array: ``n*hp*wp``, rounded up to whole tiles (see :func:`._tiles.tile_width`)."""
    return whole(n * hp * wp, tile_width(itemsize))


class _WidePlanes(NamedTuple):
    """The wide layout of a stride-1 conv's samples: planes of ``hp x wp`` positions, each sample's
    input, output or gradient at the top left of its own; ``shift`` positions before an output
    position is where its kernel's tap (0, 0) reads (the padding above and left of it)."""

    hp: int
    wp: int
    shift: int


def _wide_planes(h, w, kh, kw, dh, dw, padding=NO_PADDING) -> _WidePlanes:
    """The :class:`_WidePlanes` of an ``h x w`` input zero-padded by ``padding`` ``((top, bottom), (left,
    right))``. The padding is not stored: a row's zero columns on the right are the next row's on the
    left, a sample's zero rows below are the next sample's above (and the runs' head and tail zeros
    the first's and the last's), so the zeros between two rows (two samples) are as many as the wider
    side's padding, and as many more as the output would otherwise not fit in a plane."""
    (top, bottom), (left, right) = padding
    wp = w + max(left, right, left + right - (kw - 1) * dw)
    return _WidePlanes(h + max(top, bottom, top + bottom - (kh - 1) * dh), wp, top * wp + left)


def _input_runs(x, kh, kw, dh, dw, planes):
    """The runs of the input in the layout ``planes``: the forward pass's and the weight gradient's,
    ``planes.shift`` zeros before them (so that an output position's tap (0, 0) reads at its own
    position), with whole tiles of positions and the zeros the shifted reads reach after them."""
    n = x.shape[0]
    hp, wp, shift = planes
    pad = _wide_length(n, hp, wp, x.itemsize) - n * hp * wp
    return _runs(x, hp, wp, "input runs", head=shift, tail=pad + _reach(kh, kw, wp, dh, dw))


def _input_taps(x, kh, kw, dh, dw, planes):
    """The input's runs (:func:`_input_runs`) and where each tap ``(c, i, j)`` of a ``kh x kw`` kernel
    reads in them."""
    xr = _input_runs(x, kh, kw, dh, dw, planes)
    return xr, tap_offsets(x.shape[1], kh, kw, xr.shape[1], 0, dh * planes.wp, dw)


def _phase_taps(x, padding, kh, kw, sh, sw, oh, ow):
    """The runs of the phases of ``x`` zero-padded by ``padding`` (see :mod:`._polyphase`), laid out for
    a stride-1 conv of the phases with the ``ka x kb`` sub-kernels, read from ``x`` in one pass (no
    padded copy, no copy of the phases), where each tap ``(c, i, j)`` of the ``kh x kw`` kernel reads in
    them, and the phases' :class:`_WidePlanes`."""
    ph, pw, ka, kb, hq, wq = _polyphase.phase_shape(kh, kw, sh, sw, oh, ow)
    n, c = x.shape[:2]
    tail = _wide_length(n, hq, wq, x.itemsize) - n * hq * wq + _reach(ka, kb, wq, 1, 1)
    (top, _), (left, _) = padding
    runs = derived("phase runs", (c * ph * pw, n * hq * wq + tail), x.dtype, x, (top, left, sh, sw, ph, pw, hq, wq),
                   lambda runs: sized(_fill_phase_runs, runs.size)(x, runs, top, left, sh, sw, ph, pw, hq, wq))
    return runs, _polyphase.tap_offsets(c, kh, kw, sh, sw, runs.shape[1], wq), _WidePlanes(hq, wq, 0)


@parallel_kernel
def _fill_phase_runs(x, runs, top, left, sh, sw, ph, pw, hq, wq):
    """:func:`_phase_taps`, a (sample, channel) plane of ``x`` per task (see :func:`_fill_phase_plane`)."""
    flat = runs.reshape(runs.size)
    for task in prange(x.shape[0] * x.shape[1]):
        _fill_phase_plane(x, flat, task, runs.shape[1], top, left, sh, sw, ph, pw, hq, wq)


@kernel_helper
def _fill_phase_plane(x, flat, task, length, top, left, sh, sw, ph, pw, hq, wq):
    """The phases of the (sample, channel) plane ``task`` of ``x`` in runs of ``length`` values in
    ``flat``: phase ``(pi, pj)`` of channel ``c`` is run ``(c*ph + pi)*pw + pj``, its value ``(r, q)``
    the padded input's ``(r*sh + pi, q*sw + pj)``, or 0 past its edge."""
    n, c, h, w = x.shape
    plane = hq * wq
    s, ch = task // c, task % c
    for pi in range(ph):
        for pj in range(pw):
            run = (ch * ph + pi) * pw + pj
            start = run * length + s * plane
            q0, q1 = _landing(pj - left, sw, wq, w)  # the columns q0 .. q1 - 1 lie in x: no test per value
            for r in range(hq):
                row, at = r * sh + pi - top, start + r * wq
                if row < 0 or row >= h:
                    clear(flat, at, wq)
                    continue
                for q in range(q0):
                    flat[at + q] = 0.0
                first = q0 * sw + pj - left
                if sw == 2:  # a constant step: vectorised
                    for k in range(q1 - q0):
                        flat[at + q0 + k] = x[s, ch, row, first + 2 * k]
                else:
                    for k in range(q1 - q0):
                        flat[at + q0 + k] = x[s, ch, row, first + k * sw]
                for q in range(q1, wq):
                    flat[at + q] = 0.0
            _clear_ends(flat, run, length, start, plane, s, n)


def _grad_layout(n, kh, kw, planes, dh, dw, itemsize):
    """The output gradient's runs are laid out as the input (whole tiles of positions), after a head of
    zeros that the input gradient's reads reach back into, rounded up to whole vectors so that the
    weight gradient's loads of them are aligned, and before a tail that the weight gradient's reads
    reach ahead into (``planes.shift``, and a tile more: a task of :func:`_grad_input_wide` starts its tiles at a
    sample's first position, not at a whole tile of the batch's). Returns (head, tail): the zeros before
    and after."""
    hp, wp, shift = planes
    head = whole(_reach(kh, kw, wp, dh, dw), lanes(itemsize))
    return head, _wide_length(n, hp, wp, itemsize) - n * hp * wp + shift + tile_width(itemsize)


def _grad_runs(gy, kh, kw, dh, dw, planes, gate=None):
    """The runs of the output gradient (see :func:`_grad_layout`), through the ReLU whose output is
    ``gate`` if it is not None. Returns (runs, head)."""
    head, tail = _grad_layout(gy.shape[0], kh, kw, planes, dh, dw, gy.itemsize)
    return _runs(gy, planes.hp, planes.wp, "grad runs", head=head, tail=tail, gate=gate), head


def _unpooled_runs(gp, argmax, gate, oh, ow, kh, kw, dh, dw, planes):
    """The runs of the gradient of a conv output (N, C, oh, ow) that a 2x2, stride-2 max-pool (and, if
    ``gate`` is not None, a ReLU whose output it is) took to ``gp`` with ``argmax`` (see
    :func:`.pool_numba.unpools_by_blocks`): the gradient written straight into the layout of
    :func:`_grad_runs`, never as an (N, C, oh, ow) array. Returns (runs, head)."""
    n, c = gp.shape[:2]
    hp, wp = planes.hp, planes.wp
    head, tail = _grad_layout(n, kh, kw, planes, dh, dw, gp.itemsize)
    fill = sized(_unpool_runs, n * c * hp * wp)
    sources = (gp, argmax) if gate is None else (gp, argmax, gate)
    shape, layout = (c, head + n * hp * wp + tail), ("unpooled", oh, ow, hp, wp, head)
    gated = gate is not None
    runs = derived("grad runs", shape, gp.dtype, sources, layout,
                   lambda runs: fill(gp, argmax, gate if gated else gp, gated, ow, runs, hp, wp, head))
    return runs, head


@parallel_kernel
def _unpool_runs(gp, argmax, gate, gated, ow, runs, hp, wp, head):
    """:func:`_unpooled_runs`, a (sample, channel) plane per task."""
    n, c, rows, cols = gp.shape
    plane, length = hp * wp, runs.shape[1]
    g_flat, idx_flat, runs_flat = gp.reshape(gp.size), argmax.reshape(argmax.size), runs.reshape(runs.size)
    gate_flat = gate.reshape(gate.size)
    for task in prange(n * c):
        s, ch = task // c, task % c
        start = ch * length + head + s * plane
        pool_numba.unpool_plane(g_flat, task * rows * cols, idx_flat, ow, gate_flat, gated, runs_flat, start, wp, plane,
                                rows, cols)
        _clear_ends(runs_flat, ch, length, start, plane, s, n)


@parallel_kernel
def _conv_wide(xr, taps, offsets, b, yr, y, idx, relu, hp, wp, ow, groups, pass_taps):
    """Stride-1 forward pass in the wide layout (see the module docstring): runs ``xr`` -> ``yr``, tap
    ``k`` (weights ``taps[:, k]``) reading the runs from ``offsets[k]`` on, in ``groups`` groups of rows
    a block (see :func:`_row_groups`) and passes of ``pass_taps`` taps; then the output, ``ow``
    columns a row, to ``y`` (the padding and scratch positions dropped); or, if ``idx`` has planes that
    are not empty, the output's 2x2, stride-2 max-pool (through a ReLU with ``relu``) to ``y`` and its
    argmax to ``idx``."""
    for task in prange(-(-yr.shape[1] // _BLOCK) * groups):
        _correlate_task(yr, taps, xr, offsets, groups, pass_taps, task)
    wide, c_out = yr.reshape(yr.size), y.shape[1]
    for task in prange(y.shape[0] * c_out):
        s, co = task // c_out, task % c_out
        _emit_plane(wide, co * yr.shape[1] + s * hp * wp, wp, ow, b[co], relu, y[s, co], idx.shape[2] > 0, idx[s, co])


@parallel_kernel
def _conv_wide_from(x, w, b, runs, taps, write_taps, offsets, y, relu, pooled, ow, per_task, groups, used, hp, wp, head,
                    pass_taps, phases, idx):
    """The forward pass of :func:`_conv_wide` (pooled with ``pooled``) in one kernel launch, from the
    input ``x`` (in planes ``hp x wp``, after ``head`` zeros: see :func:`_input_runs`; or, for a strided
    conv, its phases' runs, ``phases`` ``(top, left, sh, sw, ph, pw)`` with ``sh > 0``: see
    :func:`_phase_taps`) and the weight ``w``: their runs and, with ``write_taps``, tap matrix are
    written into ``runs`` and ``taps`` (the caller's temporaries, see :class:`PreparedConv`;
    without, ``taps`` is the weight itself), then each task correlates the planes of ``per_task`` samples, for one of ``groups`` groups of the
    output channels (see :func:`_groups_for`), into a wide output of its own and emits them at once,
    while they are in cache, the pool's argmax to ``idx`` (None: not kept). Of the last plane of a task only the first
    ``used`` positions are computed (the rows and columns the output or the pool reads); ``runs``
    reach whole tiles past them (see :func:`_task_span`)."""
    n, plane = x.shape[0], hp * wp
    flat = runs.reshape(runs.size)
    top, left, sh, sw, ph, pw = phases
    for task in prange(n * x.shape[1]):
        if sh:
            _fill_phase_plane(x, flat, task, runs.shape[1], top, left, sh, sw, ph, pw, hp, wp)
        else:
            _fill_plane(x, x, False, flat, task, runs.shape[1], hp, wp, head)
    if write_taps:
        _write_taps(w, taps, False)
    for task in prange(-(-n // per_task) * groups):
        wide, span, s0, s1, first, stop = _correlate_samples(taps, runs, offsets, n, per_task, groups, plane, used,
                                                             pass_taps, task)
        for s in range(s0, s1):
            for co in range(first, min(stop, y.shape[1])):
                if idx is None:  # (a branch per type, which Numba prunes: an optional array would cost)
                    _emit_plane(wide, co * span + (s - s0) * plane, wp, ow, b[co], relu, y[s, co], pooled, None)
                else:
                    _emit_plane(wide, co * span + (s - s0) * plane, wp, ow, b[co], relu, y[s, co], pooled, idx[s, co])


@kernel_helper
def _correlate_samples(taps, runs, offsets, n, per_task, groups, plane, used, pass_taps, task):
    """Task ``task`` of :func:`_conv_wide_from` and :func:`_grad_input_wide`: the wide output of samples
    ``s0`` to ``s1`` (``per_task`` of the ``n``, planes of ``plane`` positions, the last only up to its
    ``used`` ones) for the rows ``first`` to ``stop`` of one of ``groups`` groups (the other rows are not
    written). Returns (wide, span, s0, s1, first, stop): the output flat, in rows of ``span`` positions."""
    first, stop = _group_rows(taps.shape[0], groups, task % groups)
    s0 = task // groups * per_task
    s1 = min(n, s0 + per_task)
    span = _task_span(s1 - s0, plane, used, runs.itemsize)
    out = np.empty((taps.shape[0], span), dtype=runs.dtype)
    at = offsets + s0 * plane
    for block in range(-(-span // _BLOCK)):
        _correlate_block(out, taps, runs, at, block, first, stop, pass_taps)
    return out.reshape(out.size), span, s0, s1, first, stop


@kernel_helper
def _emit_plane(wide, start, wp, ow, bias, relu, y, pooled, idx):
    """The plane of a wide output at ``wide[start:]`` (rows ``wp`` apart) plus ``bias`` to ``y`` (rows,
    cols), through a ReLU with ``relu``; or, with ``pooled``, its 2x2, stride-2 max-pool (through a
    ReLU with ``relu``) to ``y`` and, unless ``idx`` is None, its argmax, in rows of the conv's output
    width ``ow``, to ``idx`` (rows, cols)."""
    rows, cols = y.shape
    if pooled:
        if idx is None:  # (a branch per type, as above)
            pool_numba.pool_rows(wide, start, wp, ow, bias, relu, y.reshape(rows * cols), 0, None, rows, cols)
        else:
            pool_numba.pool_rows(wide, start, wp, ow, bias, relu, y.reshape(rows * cols), 0, idx.reshape(rows * cols),
                                 rows, cols)
    elif relu:
        for r in range(rows):
            copy_relu(y[r], wide[start + r * wp :], bias)
    else:
        for r in range(rows):
            copy_plus(y[r], wide[start + r * wp :], bias)


def conv2d_forward(x, w, b, geo, out=None):
    """``y = conv(x, w) + b`` for an input ``x`` (N, C, H, W) and weight (C_out, C, kH, kW); ``geo`` is
    the conv's :class:`~fastcnn._checks.ConvGeometry` (its padding, stride, dilation and output size).
    A stride-1 conv reads ``x`` into its working layout with the padding's zeros, a strided one into
    its phases' layout (no padded copy), or, where :func:`.conv_channels.takes` it (most strided
    convs, stride-1 ones on small planes), a padded copy of each sample with the output channels in
    the vector lanes; a 1x1 conv without padding is a product per sample on the arrays as they lie
    (:mod:`.pointwise_numba`), a strided one on the input subsampled by the stride; a 3x3 stride-1 conv
    of 32 channels or more runs by Winograd's F(2x2, 3x3) (:mod:`.winograd`). Into ``out``
    (C-contiguous, the output's shape) if given."""
    return _conv2d_forward(x, w, b, geo, False, out)


def conv2d_relu_forward(x, w, b, geo, out=None):
    """``relu(conv2d_forward(x, w, b, geo))``, the ReLU applied as the output is written."""
    return _conv2d_forward(x, w, b, geo, True, out)


def _conv2d_forward(x, w, b, geo, relu, out):
    """:func:`conv2d_forward`, through a ReLU with ``relu``."""
    (sh, sw), (oh, ow) = geo.stride, geo.out_hw
    y = np.empty((x.shape[0], w.shape[0], oh, ow), dtype=x.dtype) if out is None else out
    if _unpadded_1x1(geo):
        _pointwise(_pointwise_input(x, geo), w.reshape(w.shape[:2]), b, relu, y)
        return y
    if winograd.takes(x.shape, w.shape, geo):
        return winograd.forward(x, w, b, geo, relu, y)
    if conv_channels.takes(x.shape, w.shape, geo):
        return conv_channels.conv2d_channels_forward(x, w, b, geo, relu, y)
    if geo.stride == (1, 1):
        prepared = _kept_prepared(x.shape, w.shape, x.dtype, geo, None, relu, jit.num_threads(), jit.SERIAL_WORK)
        if prepared is not None:  # each task's wide output copied out while it is in cache
            return prepared(x, w, b, y)
        _conv_wide_into(x, w, b, y, _no_index(y), relu, geo)
        return y
    kh, kw = w.shape[2:]  # a strided conv without dilation (see conv_channels.takes): the phases' conv
    xr, offsets, (hq, wq, _) = _phase_taps(x, geo.padding, kh, kw, sh, sw, oh, ow)
    _run_conv_wide(xr, w, offsets, b, y, _no_index(y), relu, hq, wq, ow, x.shape[0] * oh * ow * w.size,
                   _phase_pass_taps(kh, kw, sh, sw))
    return y


def _unpadded_1x1(geo) -> bool:
    """Whether ``geo`` is a 1x1 conv without padding, of any stride: a stride-1 1x1 conv
    (``geo.pointwise``) of its input subsampled by the stride (:func:`_pointwise_input`), whose input
    gradient is spread back to the strided positions (:func:`_pointwise_grad_input`)."""
    return geo.kernel == (1, 1) and geo.padding == ((0, 0), (0, 0))


def _pointwise_input(x, geo):
    """What the 1x1 conv ``geo`` without padding reads as a stride-1 one: ``x``, or ``x`` subsampled by
    the stride (a new array)."""
    return x if geo.pointwise else pointwise_numba.subsample(x, *geo.stride, *geo.out_hw)


def _phase_pass_taps(kh: int, kw: int, sh: int, sw: int) -> int:
    """:func:`_pass_taps` of a strided conv run by phases: phases x sub-kernel rows is an upper bound on
    the rows of phase runs a channel's taps read (6 of 8 for 3x3, stride 2), which measured best."""
    return _pass_taps(kh, kw, min(sh, kh) * min(sw, kw) * -(-kh // sh))


def _no_index(y):
    """:func:`_conv_wide`'s argmax when it does not pool: empty planes."""
    return np.empty(y.shape[:2] + (0, 0), dtype=np.int64)


def _by_phases(sh, sw, dh, dw) -> bool:
    """Whether a conv runs as a stride-1 conv of its input's phases (see :mod:`._polyphase`)."""
    return (sh, sw) != (1, 1) and dh == dw == 1


def _conv_wide_into(x, w, b, y, idx, relu, geo):
    """Run :func:`_conv_wide` of the stride-1 conv ``geo`` on the input ``x`` into ``y`` (and ``idx``)."""
    (dh, dw), (oh, ow) = geo.dilation, geo.out_hw
    kh, kw = w.shape[2:]
    planes = _conv_planes(geo)
    xr, offsets = _input_taps(x, kh, kw, dh, dw, planes)
    _run_conv_wide(xr, w, offsets, b, y, idx, relu, planes.hp, planes.wp, ow, x.shape[0] * oh * ow * w.size,
                   _pass_taps(kh, kw))


def _conv_planes(geo) -> _WidePlanes:
    """The :class:`_WidePlanes` of the stride-1 conv ``geo``."""
    return _wide_planes(*geo.input_hw, *geo.kernel, *geo.dilation, geo.padding)


def _run_conv_wide(xr, w, offsets, b, y, idx, relu, hp, wp, ow, work, pass_taps):
    """Run :func:`_conv_wide` on the runs ``xr`` of planes ``hp x wp``, with the weight's taps reading
    from ``offsets``, in passes of ``pass_taps`` taps."""
    yr = scratch("wide out", (tile_rows(w.shape[0]), _wide_length(y.shape[0], hp, wp, xr.itemsize)), xr.dtype)
    taps = _tap_matrix(w, yr.shape[0], False)
    sized(_conv_wide, work // TILE_SPEED)(xr, taps, offsets, b, yr, y, idx, relu, hp, wp, ow,
                                          _row_groups(yr.shape[0], yr.shape[1]), pass_taps)


def conv2d_max_pool2d_forward(x, w, b, geo, pool, relu):
    """``max_pool2d(conv2d(...))``, and a ReLU after it with ``relu``: the conv's arguments as
    :func:`conv2d_forward`'s, ``pool`` the pool's :class:`~fastcnn._checks.PoolGeometry`. A 2x2,
    stride-2 pool after a stride-1 conv pools the conv's wide output as it leaves it, so the full-size
    output is never written: where a :class:`PreparedConv` takes the shapes, each task's samples in
    one launch, while their wide output is in cache (see :func:`_kept_prepared`); else the whole
    batch's wide output, then its pool."""
    if geo.stride != (1, 1) or not pool_numba.vector_pool(pool, *geo.out_hw) or winograd.takes(x.shape, w.shape, geo):
        return pooled(pool_numba, elementwise_numba, conv2d_forward(x, w, b, geo), pool, relu)
    prepared = _kept_prepared(x.shape, w.shape, x.dtype, geo, pool, relu, jit.num_threads(), jit.SERIAL_WORK)
    if prepared is not None:  # each task's wide output pooled while it is in cache
        return prepared(x, w, b)
    shape = (x.shape[0], w.shape[0]) + pool.out_hw
    y, idx = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int64)
    _conv_wide_into(x, w, b, y, idx, relu, geo)
    return y, idx


@functools.lru_cache(maxsize=64)  # a network's stride-1 convs, with and without their last short batch
def _kept_prepared(x_shape, w_shape, dtype, geo, pool, relu, threads, serial_work) -> "PreparedConv | None":
    """The :class:`PreparedConv` that training runs for a stride-1 conv's forward pass (``pool`` None:
    :func:`conv2d_forward`) or a conv + pool's (with the pool's argmax: :func:`conv2d_max_pool2d_forward`),
    for these arguments (and the thread count and serial threshold, on which its tasks and kernel
    depend), if it takes them; else None. Each task's wide output leaves it while it is in cache,
    where the two-pass kernel writes the whole batch's wide output and reads it back: 13-27% less time
    for 3x3 convs of 3 to 128 channels at batch 32 and 64 (measured, 2 threads). Strided convs keep
    the two passes, which measured as fast. An entry holds the tap offsets (and, per thread, a tap
    matrix for weights that are not one and runs of at most :data:`_OWN_RUNS_BYTES`): larger runs are
    scratch."""
    if not PreparedConv.takes(x_shape, w_shape, geo, pool):
        return None
    return PreparedConv(x_shape, w_shape, dtype, geo, pool, relu, argmax=pool is not None)


_OWN_RUNS_BYTES = 1 << 18  # a PreparedConv keeps runs up to this size (a batch of one, as a rule) per thread
# itself: a scratch lookup costs 1-2 us a call, up to 4% of LeNet's prediction of one image (50 us)


def _launch(x_shape: tuple, w_shape: tuple, geo):
    """:func:`_conv_wide_from`, or its serial twin for small work (see :func:`.jit.sized`)."""
    c_out, c_in, kh, kw = w_shape
    return sized(_conv_wide_from, x_shape[0] * geo.out_hw[0] * geo.out_hw[1] * c_out * c_in * kh * kw // TILE_SPEED)


@kernel_helper
def _task_span(samples, plane, used, itemsize):
    """The wide output's length for a task of :func:`_conv_wide_from` or :func:`_grad_input_wide`:
    ``samples`` planes, the last only up to its ``used`` positions, in whole tiles."""
    return whole((samples - 1) * plane + used, tile_width(itemsize))


def _samples_per_task(plane: int) -> int:
    """The samples of ``plane`` positions each that a task of :func:`_conv_wide_from` (and of
    :func:`_grad_input_wide`) takes: one, unless
    the planes are so small that a task would not repay its overhead. (One wastes least: only a task's
    last plane is cut to the positions the output reads. Measured, roughly, on a busy machine on LeNet's
    two convs at batch 256: as fast as or faster than a block of 2304 positions per task, the block
    size then.)"""
    return max(1, _TASK_POSITIONS // plane)


class PreparedConv:
    """:func:`conv2d_max_pool2d_forward`'s pooled output (or :func:`conv2d_forward`'s, ``pool`` None) for
    inputs of one shape, as the inference plan and training's stride-1 convs run it: one kernel launch per call
    (:func:`_conv_wide_from`, serial for small work, see :func:`.jit.sized`), its tasks samples, or for
    fewer samples than the threads need, samples by groups of output channels (see :func:`_groups_for`);
    the tap offsets computed once, the weight read as the tap matrix where it is one (fewer than 4
    output channels, or whole tiles of :data:`._tiles.ROWS`, C-contiguous and writable: Numba types the kernel's branch
    that writes a tap matrix; else a tap matrix is kept per thread), and the input's runs written into
    a scratch array of the thread (see :func:`.scratch.scratch`), which every prepared conv shares (small
    runs, up to :data:`_OWN_RUNS_BYTES`, are kept per thread instead).
    Stride-1 convs, with only the 2x2, stride-2 pool that :func:`conv2d_max_pool2d_forward` fuses (without
    a pool, those that :func:`.conv_channels.takes` leaves here), and strided ones without dilation or
    pool that :func:`.conv_channels.takes` leaves here, as the
    stride-1 conv of their input's phases (read from the input in the same launch, see
    :func:`_phase_taps`): see :meth:`takes`.

    Calling ``prepared(x, w, b)`` returns the output: a new array, or ``out`` (C-contiguous, of
    :attr:`out_shape` and the dtype) written, with ``prepared(x, w, b, out)``; with ``argmax`` (a pool's,
    for training), the output and the pool's argmax, as :func:`conv2d_max_pool2d_forward` returns them.
    """

    def __init__(self, x_shape: tuple, w_shape: tuple, dtype, geo, pool=None, relu: bool = False,
                 argmax: bool = False) -> None:
        if _prepared_planes(x_shape, w_shape, geo, pool) is None:
            raise ValueError(f"PreparedConv takes stride-1 convs (with a 2x2, stride-2 max-pool at most) and strided "
                             f"ones without dilation or pool, where conv_channels does not take them; got stride "
                             f"{geo.stride}, dilation {geo.dilation}, pool {pool}, weight {w_shape}, input {x_shape}")
        n, c_in = x_shape[:2]
        c_out, _, kh, kw = w_shape
        (dh, dw), (sh, sw), (oh, ow) = geo.dilation, geo.stride, geo.out_hw
        if (sh, sw) == (1, 1):
            hp, wp, head = self._plane = _conv_planes(geo)
            runs, reach, self._pass_taps, self._phases = c_in, _reach(kh, kw, wp, dh, dw), _pass_taps(kh, kw), (0,) * 6
        else:  # the phases' stride-1 conv (see _phase_taps)
            ph, pw, ka, kb, hp, wp = _polyphase.phase_shape(kh, kw, sh, sw, oh, ow)
            head, (top, _), (left, _) = 0, *geo.padding
            self._plane = _WidePlanes(hp, wp, head)
            runs, reach, self._pass_taps = c_in * ph * pw, _reach(ka, kb, wp, 1, 1), _phase_pass_taps(kh, kw, sh, sw)
            self._phases = (top, left, sh, sw, ph, pw)
        self.dtype, self.relu, self.pooled, self.ow = np.dtype(dtype), bool(relu), pool is not None, ow
        self.argmax = argmax and self.pooled
        self.out_shape = (n, c_out) + (geo.out_hw if pool is None else pool.out_hw)
        self._per_task = _samples_per_task(hp * wp)
        rows, cols = (2 * pool.out_hw[0], 2 * pool.out_hw[1]) if pool is not None else geo.out_hw
        self._used = (rows - 1) * wp + cols  # of a plane's positions, those the output reads
        first = (n - 1) // self._per_task * self._per_task  # the last task's first sample
        span = _task_span(n - first, hp * wp, self._used, self.dtype.itemsize)
        self._taps_shape = (tile_rows(c_out), c_in * kh * kw)
        self._weight_taps = self._taps_shape[0] == c_out  # the weight, reshaped, is the tap matrix
        self._shapes = ((runs, head + max(n * hp * wp, first * hp * wp + span + reach)), self._taps_shape)
        if (sh, sw) == (1, 1):
            self._offsets = tap_offsets(c_in, kh, kw, self._shapes[0][1], 0, dh * wp, dw)
        else:
            self._offsets = _polyphase.tap_offsets(c_in, kh, kw, sh, sw, self._shapes[0][1], wp)
        kernel = _launch(x_shape, w_shape, geo)
        self._groups = _sample_groups(n, self._per_task, c_out) if kernel is _conv_wide_from else 1
        self._kernel = jit.serialized(kernel) if jit.SERIALIZE_KERNELS and kernel is _conv_wide_from else kernel
        self._own_runs = np.prod(self._shapes[0], dtype=np.float64) * self.dtype.itemsize <= _OWN_RUNS_BYTES
        self._local = threading.local()
        self._settings = (self.relu, self.pooled, ow, self._per_task, self._groups, self._used, *self._plane,
                          self._pass_taps, self._phases)  # the kernel's arguments after y, but idx

    @staticmethod
    def takes(x_shape: tuple, w_shape: tuple, geo, pool=None) -> bool:
        """Whether a conv of geometry ``geo`` (and the max-pool ``pool`` after it, if any) can be prepared,
        and pays: a batch too small to give every thread a task, even split by output channels, takes
        only if its work is too small for more than one thread anyway (else the op's kernel, which
        splits every sample's positions, runs it); a 1x1 conv without padding or pool never does (its
        own kernel, :mod:`.pointwise_numba`, reads the input as it lies, or subsampled: see
        :func:`_unpadded_1x1`), nor one that :mod:`.winograd` takes."""
        planes = _prepared_planes(x_shape, w_shape, geo, pool)
        if planes is None or (pool is None and _unpadded_1x1(geo)) or winograd.takes(x_shape, w_shape, geo):
            return False
        per_task = _samples_per_task(planes[0] * planes[1])
        tasks = -(-x_shape[0] // per_task) * _sample_groups(x_shape[0], per_task, w_shape[0])
        return tasks >= jit.num_threads() or _launch(x_shape, w_shape, geo) is not _conv_wide_from

    def _runs(self) -> np.ndarray:
        """The input's runs, which the kernel writes every value of: scratch, or kept per thread where
        they are small."""
        if self._own_runs:
            runs = self._local.runs = np.zeros(self._shapes[0], self.dtype)
            return runs
        return scratch("prepared runs", self._shapes[0], self.dtype)

    def _taps(self) -> np.ndarray:
        """The tap matrix for a weight that is not one: kept per thread, its rows past the weight's zero."""
        taps = getattr(self._local, "taps", None)
        if taps is None:
            taps = self._local.taps = np.zeros(self._shapes[1], self.dtype)
        return taps

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        runs = getattr(self._local, "runs", None)
        if runs is None:
            runs = self._runs()
        if self._weight_taps and w.flags.writeable and w.flags.c_contiguous:  # the kernel's taps are writable
            taps, copy_taps = w.reshape(self._taps_shape), False
        else:
            taps, copy_taps = self._taps(), True
        y = np.empty(self.out_shape, self.dtype) if out is None else out
        idx = np.empty(self.out_shape, np.int64) if self.argmax else None
        self._kernel(x, w, b, runs, taps, copy_taps, self._offsets, y, *self._settings, idx)
        return (y, idx) if self.argmax else y


def _prepared_planes(x_shape: tuple, w_shape: tuple, geo, pool) -> tuple[int, int] | None:
    """The planes ``(hp, wp)`` a :class:`PreparedConv` of this conv (and pool) works in, or None if it
    cannot take it: a stride-1 conv's own (with the 2x2 pool it fuses, or with no pool where
    :func:`.conv_channels.takes` does not take it), a strided conv's phases' (without dilation or
    pool, where :func:`.conv_channels.takes` does not take it)."""
    if geo.stride == (1, 1):
        if pool is None and conv_channels.takes(x_shape, w_shape, geo) or \
                not (pool is None or pool_numba.vector_pool(pool, *geo.out_hw)):
            return None
        return _conv_planes(geo)[:2]
    if pool is None and _by_phases(*geo.stride, *geo.dilation) and not conv_channels.takes(x_shape, w_shape, geo):
        return _polyphase.phase_shape(*w_shape[2:], *geo.stride, *geo.out_hw)[4:]
    return None


def _sample_groups(n: int, per_task: int, channels: int) -> int:
    """Into how many groups of its ``channels`` output rows (output channels; the input gradient's
    input channels) :func:`_conv_wide_from` (:func:`_grad_input_wide`) cuts a batch of ``n`` samples,
    ``per_task`` a task: one if the samples give every thread :data:`_TASKS_PER_THREAD` tasks, else
    as :func:`_groups_for` gives. (Measured, 2 threads, batch 1, one process, 128->256 channels on 8x8:
    0.62 ms serial, 0.64 ms in one group, 0.33 ms in 2, 4 or 16; 32->64 on 16x16: 0.12, 0.14, 0.10.)"""
    return _groups_for(tile_rows(channels), -(-n // per_task)) if n else 1


@parallel_kernel
def _grad_weight_wide(gr, head, length, xr, offsets, kh, kw):
    """Stride-1 weight and bias gradients in the wide layout: dot products of the runs ``gr`` (of the
    output gradient, ``length`` positions from ``head`` on, whole tiles) and ``xr`` (of the input), tap
    ``k`` of the ``kh x kw`` kernel reading ``xr`` from ``offsets[k]`` on, a register tile of output
    channels by (input channel, tap) pairs at a time (see :func:`._tiles.dot_tile`).

    A task is a band of tiles of output channels (one tile, or as many as keep the bands at most
    :data:`_GRAD_TASKS`), a chunk of the input channels and a share of the blocks (at most
    :data:`_GRAD_TASKS` tasks, shares of 4 blocks or more). A tile of a block's input runs is read once
    per task, and every tile of the band takes its dot products with it while it is in cache; the
    tasks of the first chunk also sum the runs for the bias (their scratch positions are 0). Each task
    sums into arrays of its own, and the split is fixed by the shapes, so the result does not depend
    on the thread count.
    """
    n_taps = kh * kw
    c_out, c_in = gr.shape[0], offsets.shape[0] // n_taps
    group = DOT_ROWS if c_out >= DOT_ROWS else 1  # output channels per tile
    groups, blocks = -(-c_out // group), -(-length // _GRAD_BLOCK)
    band = -(-groups // _GRAD_TASKS)  # tiles of output channels per task
    bands = -(-groups // band)
    per_task = max(1, c_in * bands // _GRAD_TASKS)  # input channels
    chunks = -(-c_in // per_task)
    shares = max(1, min(blocks // 4, _GRAD_TASKS // (bands * chunks)))  # of the blocks, 4 or more each
    sums = np.zeros((shares, groups * group, c_in, n_taps))  # float64 across blocks
    bias = np.zeros((shares, groups * group))
    g_flat, x_flat = gr.reshape(gr.size), xr.reshape(xr.size)
    for task in prange(bands * chunks * shares):
        g, chunk, share = task // (chunks * shares), (task // shares) % chunks, task % shares
        o0, c0, c1 = g * band * group, chunk * per_task, min(c_in, (chunk + 1) * per_task)
        tiles = min(band, groups - g * band)
        columns = (c1 - c0) * n_taps  # (input channel, tap) pairs, the last repeated to whole tiles
        reads = np.empty(whole(columns, DOT_COLS), dtype=np.int64)  # where each starts in x_flat
        for k in range(reads.size):
            reads[k] = offsets[c0 * n_taps + min(k, columns - 1)]
        part = np.empty((DOT_ROWS, DOT_COLS), dtype=gr.dtype)
        mine = np.zeros((tiles * group, reads.size))  # this task's own: no cache line shared with another task
        mine_b = np.zeros(tiles * group)
        g_starts = np.empty(DOT_ROWS, dtype=np.int64)
        x_starts = np.empty(DOT_COLS, dtype=np.int64)
        for blk in range(share * blocks // shares, (share + 1) * blocks // shares):
            b0, b1 = blk * _GRAD_BLOCK, min(length, (blk + 1) * _GRAD_BLOCK)
            if chunk == 0:
                for a in range(tiles * group):
                    mine_b[a] += row_sum(gr[min(o0 + a, c_out - 1), head + b0 : head + b1])
            for k0 in range(0, reads.size, DOT_COLS):
                for c in range(DOT_COLS):
                    x_starts[c] = reads[k0 + c] + b0
                for tile in range(tiles):
                    for a in range(group):
                        g_starts[a] = min(o0 + tile * group + a, c_out - 1) * gr.shape[1] + head + b0
                    if group == DOT_ROWS:
                        dot_tile(part, g_flat, g_starts, x_flat, x_starts, b1 - b0, 0)
                    else:
                        dot_row(part, g_flat, g_starts, x_flat, x_starts, b1 - b0, 0)
                    for a in range(group):
                        for c in range(DOT_COLS):
                            mine[tile * group + a, k0 + c] += part[a, c]
        for a in range(min(tiles * group, c_out - o0)):
            if chunk == 0:
                bias[share, o0 + a] = mine_b[a]
            for k in range(columns):
                sums[share, o0 + a, c0 + k // n_taps, k % n_taps] = mine[a, k]
    grad_w = np.empty((c_out, c_in, kh, kw), dtype=gr.dtype)
    grad_b = np.empty(c_out, dtype=gr.dtype)
    sum_shares(sums.reshape(shares, groups * group, c_in * n_taps), bias, grad_w.reshape(c_out, c_in * n_taps), grad_b)
    return grad_w, grad_b


def conv2d_grad_weight(gy, x, geo):
    """Gradients of a conv of the input ``x`` with respect to its weight, shape (C_out, C, kH, kW), and
    its bias; ``geo`` as in :func:`conv2d_forward`."""
    return _conv2d_grad_weight(gy, None, x, geo)


def conv2d_relu_grad_weight(gy, gate, x, geo):
    """:func:`conv2d_grad_weight` of a conv with a ReLU after it, whose output is ``gate`` and output
    gradient ``gy``: the gradient passes where ``gate`` is positive, as it is read into the runs."""
    return _conv2d_grad_weight(gy, gate, x, geo)


def _conv2d_grad_weight(gy, gate, x, geo):
    """:func:`conv2d_grad_weight` through the ReLU of output ``gate`` if it is not None."""
    (kh, kw), (sh, sw), (dh, dw), padding = geo.kernel, geo.stride, geo.dilation, geo.padding
    if _unpadded_1x1(geo):
        return _pointwise_grad_weight(gated(elementwise_numba, gy, gate), x, geo)
    if winograd.takes(x.shape, (gy.shape[1], x.shape[1], kh, kw), geo, "weight_gradient"):
        return winograd.grad_weight(gy, gate, x, geo)
    if conv_channels.takes(x.shape, (gy.shape[1], x.shape[1], kh, kw), geo, "weight_gradient"):
        return conv_channels.conv2d_channels_grad_weight(gy, gate, x, geo)
    work = gy.size * x.shape[1] * kh * kw
    if sh != 1 or sw != 1:  # without dilation (conv_channels takes every dilated one): the phases' runs
        xr, offsets, planes = _phase_taps(x, padding, kh, kw, sh, sw, gy.shape[2], gy.shape[3])
        gr, head = _grad_runs(gy, -(-kh // sh), -(-kw // sw), 1, 1, planes, gate)
        return _grad_weight_of_runs(gr, head, xr, offsets, (kh, kw), x.shape[0], planes, work)
    planes = _conv_planes(geo)
    xr, offsets = _input_taps(x, kh, kw, dh, dw, planes)
    gr, head = _grad_runs(gy, kh, kw, dh, dw, planes, gate)
    return _grad_weight_of_runs(gr, head, xr, offsets, (kh, kw), x.shape[0], planes, work)


def _pointwise_grad_weight(gy, x, geo):
    """The weight and bias gradients of a 1x1 conv without padding (:func:`_unpadded_1x1`), on the
    arrays as they lie (the input subsampled by the stride): :func:`.pointwise_numba.grad_weight`."""
    n, c_out = gy.shape[:2]
    xs = _pointwise_input(x, geo)
    grad_w, grad_b = pointwise_numba.grad_weight(np.ascontiguousarray(gy).reshape(n, c_out, -1),
                                                 np.ascontiguousarray(xs).reshape(n, xs.shape[1], -1))
    return grad_w.reshape(c_out, xs.shape[1], 1, 1), grad_b


def _grad_weight_of_runs(gr, head, xr, offsets, kernel, n, planes, work):
    """Weight and bias gradients from the output gradient's runs ``gr`` (see :func:`_grad_layout`) and the
    input's ``xr`` (``n`` samples), tap ``k`` of the ``kernel`` (kh, kw) reading ``xr`` from ``offsets[k]``."""
    length = _wide_length(n, planes.hp, planes.wp, xr.itemsize)
    return sized(_grad_weight_wide, work // TILE_SPEED)(gr, head, length, xr, offsets, *kernel)


def _fuses_unpool(gp, sh, sw, oh, ow) -> bool:
    """Whether the conv's gradients can take a max-pool's gradient ``gp`` as runs (see :func:`_unpooled_runs`)."""
    return sh == sw == 1 and pool_numba.unpools_by_blocks(gp.shape[2], gp.shape[3], oh, ow)


def conv2d_max_pool2d_grad_weight(gp, argmax, gate, x, geo):
    """:func:`conv2d_grad_weight` of the conv output (N, C_out, oh, ow) that a max-pool took to ``gp``
    with ``argmax``; if ``gate`` is not None, through a ReLU after the pool, whose output it is."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo.kernel, geo.stride, geo.dilation, geo.out_hw
    w_shape = (gp.shape[1], x.shape[1], kh, kw)
    if not _fuses_unpool(gp, sh, sw, oh, ow) or _unpadded_1x1(geo) or winograd.takes(x.shape, w_shape, geo,
            "weight_gradient") or conv_channels.takes(x.shape, w_shape, geo, "pooled_weight_gradient"):
        gy = unpooled(pool_numba, elementwise_numba, gp, argmax, gate, oh, ow)
        return conv2d_grad_weight(gy, x, geo)
    planes = _conv_planes(geo)
    runs, head = _unpooled_runs(gp, argmax, gate, oh, ow, kh, kw, dh, dw, planes)
    work = gp.shape[0] * gp.shape[1] * oh * ow * x.shape[1] * kh * kw
    xr, offsets = _input_taps(x, kh, kw, dh, dw, planes)
    return _grad_weight_of_runs(runs, head, xr, offsets, (kh, kw), x.shape[0], planes, work)


@parallel_kernel
def _grad_input_wide(gr, head, w, grad_x, hp, wp, shift, dh, dw, per_task, groups, pass_taps):
    """Stride-1 input gradient in the wide layout: ``grad[p] = sum(w[i, j] * gy[p + shift - i*dh*wp - j*dw])``,
    by tasks as :func:`_conv_wide_from` runs the forward pass: each correlates the planes ``hp x wp`` of
    ``per_task`` samples, for one of ``groups`` groups of the input channels, into a wide output of its
    own and writes their input positions to ``grad_x`` (N, C, H, W) while they are in cache.

    The shifted reads of the gradient's runs ``gr`` land on its zero scratch positions or its zero head
    or tail wherever they fall outside the output.
    """
    n, c_in, h, width = grad_x.shape
    c_out, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    taps = _tap_matrix(w, tile_rows(c_in), True)
    offsets = tap_offsets(c_out, kh, kw, gr.shape[1], head + shift - (kw - 1) * dw, -dh * wp, dw)
    plane, used = hp * wp, (h - 1) * wp + width  # of a plane's positions, those grad_x reads
    for task in prange(-(-n // per_task) * groups):
        wide, span, s0, s1, first, stop = _correlate_samples(taps, gr, offsets, n, per_task, groups, plane, used,
                                                             pass_taps, task)
        for s in range(s0, s1):
            for ci in range(first, min(stop, c_in)):
                narrow(grad_x[s, ci], wide[ci * span + (s - s0) * plane :], wp, 1, 1, 0, 0)


@kernel_helper
def _landing(first, step, count, size):
    """The range ``[k0, k1)`` of the ``k < count`` whose ``first + k*step`` (``step > 0``) lies in ``[0, size)``."""
    k0 = min(count, max(0, -(first // step)))
    k1 = max(k0, min(count, (size - 1 - first) // step + 1))
    return k0, k1


@parallel_kernel
def _grad_input_strided(gy, w, hp, wp, sh, sw, dh, dw):
    """Input gradient for any stride, scattering one output row at a time."""
    n, c_out, oh, ow = gy.shape
    c_in, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    grad_xp = np.zeros((n, c_in, hp, wp), dtype=gy.dtype)
    for task in prange(n * c_in):
        s, ci = task // c_in, task % c_in
        for co in range(c_out):
            for i in range(kh):
                for r in range(oh):
                    row = grad_xp[s, ci, r * sh + i * dh]
                    for q in range(ow):
                        g = gy[s, co, r, q]
                        for j in range(kw):
                            row[q * sw + j * dw] += w[co, ci, i, j] * g
    return grad_xp


def conv2d_grad_input(gy, w, geo):
    """Gradient of a conv with respect to its input, shape (N, C, H, W); ``geo`` as in :func:`conv2d_forward`."""
    return _conv2d_grad_input(gy, None, w, geo)


def conv2d_relu_grad_input(gy, gate, w, geo):
    """:func:`conv2d_grad_input` through the ReLU whose output is ``gate``: the gate is applied as the
    gradient is read into the runs (stride 1) or padded (strided convs without dilation, in
    :mod:`.conv_channels`), or in a pass of its own first (1x1 convs without padding, the stride-1
    input gradients :mod:`.conv_channels` takes, dilated strided convs)."""
    return _conv2d_grad_input(gy, gate, w, geo)


def _pointwise_grad_input(gy, w, geo):
    """The input gradient of a 1x1 conv without padding (:func:`_unpadded_1x1`): ``W.T @ gy[s]`` for
    every sample, spread to the strided positions unless ``geo.pointwise``."""
    c_out, c_in = w.shape[:2]
    grad_x = np.empty((gy.shape[0], c_in) + gy.shape[2:], dtype=gy.dtype)
    _pointwise(gy, w.reshape(c_out, c_in).T, None, False, grad_x)
    return grad_x if geo.pointwise else pointwise_numba.spread(grad_x, *geo.stride, *geo.padded_hw)


def _pointwise(x, taps, b, relu, y):
    """``y[s] = taps @ x[s] (+ b)``, through a ReLU with ``relu``, for (N, C, H, W) ``x`` and ``y``: a 1x1
    conv's forward pass or input gradient (see :mod:`.pointwise_numba`)."""
    n, c, h, w = x.shape
    pointwise_numba.product(x.reshape(n, c, h * w), np.ascontiguousarray(taps), b, relu,
                            y.reshape(n, y.shape[1], h * w), _pass_taps(1, 1))
    return y


def _conv2d_grad_input(gy, gate, w, geo):
    """:func:`conv2d_grad_input` through the ReLU of output ``gate`` if it is not None."""
    padding, (hp, wp), (sh, sw), (dh, dw) = geo.padding, geo.padded_hw, geo.stride, geo.dilation
    shape = (gy.shape[0], w.shape[1]) + geo.input_hw
    if _unpadded_1x1(geo):
        return _pointwise_grad_input(gated(elementwise_numba, gy, gate), w, geo)
    if winograd.takes(shape, w.shape, geo, "input_gradient"):
        return winograd.grad_input(gy, gate, w, geo)
    if conv_channels.takes(shape, w.shape, geo, "input_gradient"):
        return conv_channels.conv2d_channels_grad_input(gy, gate, w, geo)
    work = gy.size * w.shape[1] * w.shape[2] * w.shape[3]
    if sh != 1 or sw != 1:  # with dilation (conv_channels takes every strided one without)
        gy = gated(elementwise_numba, gy, gate)
        return cropped(sized(_grad_input_strided, work)(gy, w, hp, wp, sh, sw, dh, dw), padding)
    planes = _conv_planes(geo)
    gr, head = _grad_runs(gy, w.shape[2], w.shape[3], dh, dw, planes, gate)
    return _grad_input_of_runs(gr, head, w, np.empty(shape, dtype=gy.dtype), dh, dw, planes, work)


def _grad_input_of_runs(gr, head, w, grad_x, dh, dw, planes, work):
    """Stride-1 input gradient from the output gradient's runs ``gr`` (see :func:`_grad_layout`), into
    ``grad_x`` (N, C, H, W). Returns ``grad_x``."""
    if grad_x.size == 0:  # (no input rows, only padding: nothing to write)
        return grad_x
    n, per_task = grad_x.shape[0], _samples_per_task(planes.hp * planes.wp)
    groups = _sample_groups(n, per_task, w.shape[1])
    sized(_grad_input_wide, work // TILE_SPEED)(gr, head, w, grad_x, *planes, dh, dw, per_task, groups,
                                                _pass_taps(*w.shape[2:]))
    return grad_x


def conv2d_max_pool2d_grad_input(gp, argmax, gate, w, geo):
    """:func:`conv2d_grad_input` of the conv output (N, C_out, oh, ow) that a max-pool took to ``gp``
    with ``argmax``; ``gate`` as in :func:`conv2d_max_pool2d_grad_weight`."""
    (sh, sw), (dh, dw), (oh, ow) = geo.stride, geo.dilation, geo.out_hw
    shape = (gp.shape[0], w.shape[1]) + geo.input_hw
    if not _fuses_unpool(gp, sh, sw, oh, ow) or winograd.takes(shape, w.shape, geo, "input_gradient"):
        gy = unpooled(pool_numba, elementwise_numba, gp, argmax, gate, oh, ow)
        return conv2d_grad_input(gy, w, geo)
    planes = _conv_planes(geo)
    runs, head = _unpooled_runs(gp, argmax, gate, oh, ow, w.shape[2], w.shape[3], dh, dw, planes)
    work = gp.shape[0] * gp.shape[1] * oh * ow * w.shape[1] * w.shape[2] * w.shape[3]
    return _grad_input_of_runs(runs, head, w, np.empty(shape, dtype=gp.dtype), dh, dw, planes, work)
