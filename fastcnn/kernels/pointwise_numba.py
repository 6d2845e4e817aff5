"""1x1 convs (stride 1, no padding) as one matrix product per sample, ``y[s] = W @ x[s] (+ b)``, on the
arrays as they lie: a sample's channels are rows of ``H*W`` positions in NCHW, so a register tile
(:func:`._tiles.store_point`) reads the input and writes the output in place, with no copy into the
stride-1 kernels' wide layout and none out of it.

The tasks are (sample, block of positions, group of output rows): a block's input stays in cache while
every tile of rows reads it. A tile (:func:`._tiles.store_point`) is :data:`._tiles.POINT_ROWS` output rows
by :data:`._tiles.POINT_VECTORS` vectors of positions (4 by 4 on AVX-512: 64 float32 positions, a whole
number of which fills the planes of 8x8, 16x16 and 32x32); a plane's last whole vectors that do not fill
one take a narrower tile, and its last positions that do not fill a vector go through a zero-padded copy
of one vector. (Measured against the wide-layout kernel and PyTorch on MobileNet's 1x1 convs at batch
256, 2 threads: 1.5-1.9x faster than the first, 0.7-1.0x PyTorch's time, with tiles of 8 rows by 3
vectors; 4 by 4 then took 0.88-1.01x of that time on the zoo's 1x1 shapes, 2 threads.)

The weight gradient, ``sum(g[s] @ x[s].T)`` over the samples, also reads the arrays as they lie
(:func:`grad_weight`): a register tile of output by input channels sums its dot products over a
segment of several samples' planes in one call (:func:`._tiles.dot_segments`), so that a small plane
costs no more than a long run, and each task's segments (and the rows they read) stay in cache while
every tile reads them.

A 1x1 conv with a stride (and no padding) is that product on its input subsampled by the stride
(:func:`subsample`); its input gradient is the product's, spread back to the strided positions
(:func:`spread`).
"""
from __future__ import annotations

import numpy as np

from . import jit
from .jit import kernel_helper, parallel_kernel, prange, sized
from ._planes import narrow
from ._rows import copy_plus, copy_relu, row_sum, sum_shares
from ._tiles import (DOT_COLS, DOT_ROWS, POINT_ROWS, POINT_VECTORS, TILE_SPEED, dot_segments, dot_segments_row,
                     lanes, point_width, store_point, whole)

_BLOCK_BYTES = 1 << 17  # input a block of positions reads (channels x positions): it stays in L2 cache
_TASKS_PER_THREAD = 8
_SEGMENT_BYTES = 1 << 19  # the weight gradient's input rows for one stretch of positions: they stay in L2 cache
# (half of a 1 MiB L2). Against 256 KiB, Zen 4, 2 threads, 15 interleaved rounds: 0.75-0.90x on mobilenet_dw's
# pointwise convs (64->128, 128->128 on 16x16, 128->256 on 8x8 at batch 32), 0.86x for 256->512 on 4x4,
# 0.94-1.01x on the other zoo shapes.
_LEAST_POSITIONS = 256  # but a stretch is this long at least, as its dot products' final sums cost (measured, one
# thread, 512->128 channels on 8x8 at batch 32: 18, 25 and 22 GMAC/s for stretches of 128, 256 and 512 positions)
_MOST_POSITIONS = 2048  # positions a dot product sums in float32 at most before it is added to a float64 sum
_GRAD_TASKS = 16  # the weight gradient's tasks, at most (fixed by the shapes, not the threads)


def subsample(x, sh, sw, oh, ow):
    """``x[:, :, ::sh, ::sw]``, its first ``oh x ow``, as a new C-contiguous array: what a strided 1x1
    conv without padding reads, the input of the stride-1 1x1 conv it is."""
    y = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    return sized(_subsample, y.size)(x, sh, sw, y)


def spread(g, sh, sw, h, w):
    """The (N, C, ``h``, ``w``) array holding ``g`` (N, C, OH, OW) at rows ``::sh`` and columns ``::sw``
    and zeros elsewhere: the input gradient of a strided 1x1 conv without padding, from that of the
    subsampled input (:func:`subsample`)."""
    out = np.empty(g.shape[:2] + (h, w), g.dtype)
    return sized(_spread, out.size)(g, sh, sw, out)


@parallel_kernel
def _subsample(x, sh, sw, y):
    """:func:`subsample`, a plane a task."""
    n, c, oh, ow = y.shape
    for plane in prange(n * c):
        src, dst = x[plane // c, plane % c], y[plane // c, plane % c]
        for r in range(oh):
            row, out = src[r * sh], dst[r]
            for q in range(ow):
                out[q] = row[q * sw]
    return y


@parallel_kernel
def _spread(g, sh, sw, out):
    """:func:`spread`, a plane a task."""
    n, c, oh, ow = g.shape
    for plane in prange(n * c):
        dst = out[plane // c, plane % c]
        dst[:, :] = 0  # (the rows and columns past the last strided one too: a transposed conv's output padding)
        reach = dst[: (oh - 1) * sh + 1, : (ow - 1) * sw + 1]
        narrow(reach, g[plane // c, plane % c].reshape(oh * ow), ow, sh, sw, 0, 0)
    return out


def product(x, taps, b, relu, y, pass_taps):
    """``y[s] = taps @ x[s] + b`` for every sample, through a ReLU with ``relu``; ``x`` (N, C, P) and
    ``y`` (N, R, P) C-contiguous, ``taps`` (R, C) C-contiguous, ``b`` (R,) or None (no bias), summing
    ``pass_taps`` channels at a time (see :func:`.conv_numba._pass_taps`). Returns ``y``."""
    n, channels, positions = x.shape
    rows = y.shape[1]
    width = point_width(x.itemsize)
    block = max(1, _BLOCK_BYTES // (channels * width * x.itemsize)) * width
    blocks = -(-positions // block)
    units = -(-rows // POINT_ROWS)
    groups = max(1, min(units, -(-_TASKS_PER_THREAD * jit.num_threads() // max(1, n * blocks))))
    bias = np.zeros(rows, x.dtype) if b is None else b
    sized(_product, n * positions * rows * channels // TILE_SPEED)(x, taps, bias, relu, y, block, groups, pass_taps)
    return y


@parallel_kernel
def _product(x, taps, b, relu, y, block, groups, pass_taps):
    """:func:`product`, tasks of (sample, ``block`` positions, one of ``groups`` groups of row tiles)."""
    n, channels, positions = x.shape
    rows = y.shape[1]
    width, n_lanes = point_width(x.itemsize), lanes(x.itemsize)
    blocks = -(-positions // block)
    per_pass = -(-channels // -(-channels // pass_taps))
    units = -(-rows // POINT_ROWS)
    per_group = -(-units // groups)
    offsets = np.arange(channels) * positions
    rest_offsets = np.arange(channels) * n_lanes
    for task in prange(n * blocks * groups):
        s, blk, group = task // (blocks * groups), task // groups % blocks, task % groups
        src, out = x[s].reshape(channels * positions), y[s]
        p0 = blk * block
        p1 = min(positions, p0 + block)
        tiles_end = p0 + (p1 - p0) // width * width  # whole tiles, then whole vectors in a narrow tile
        vectors_end = p0 + (p1 - p0) // n_lanes * n_lanes
        narrow_vectors = (vectors_end - tiles_end) // n_lanes
        rest = p1 - vectors_end
        if rest:  # the block's last positions, fewer than a vector, zero-padded to one, and their tile
            rest_src = np.zeros(channels * n_lanes, dtype=x.dtype)
            for c in range(channels):
                for k in range(rest):
                    rest_src[c * n_lanes + k] = src[c * positions + vectors_end + k]
            rest_out = np.empty((units * POINT_ROWS, n_lanes), dtype=x.dtype)
        for unit in range(group * per_group, min(units, (group + 1) * per_group)):
            r0 = unit * POINT_ROWS
            r1 = min(rows, r0 + POINT_ROWS)
            for t0 in range(0, channels, per_pass):
                t1 = min(channels, t0 + per_pass)
                for p in range(p0, tiles_end, width):
                    _tile(out, taps, r0, r1, p, src, offsets, t0, t1, POINT_VECTORS)
                if narrow_vectors:
                    _tile(out, taps, r0, r1, tiles_end, src, offsets, t0, t1, narrow_vectors)
                if rest:
                    _tile(rest_out, taps, r0, r1, 0, rest_src, rest_offsets, t0, t1, 1)
            for r in range(r0, r1):
                _finish(out[r, p0:vectors_end], out[r, p0:vectors_end], b[r], relu)
                if rest:
                    _finish(out[r, vectors_end:p1], rest_out[r, :rest], b[r], relu)


@kernel_helper
def _tile(out, taps, r0, r1, p, src, offsets, t0, t1, vectors):
    """Rows ``r0`` to ``r1`` of ``out`` at ``vectors`` vectors of positions from ``p`` (a whole tile,
    :data:`POINT_VECTORS`, or fewer), summed over taps ``t0`` to ``t1`` (added to what they hold after the
    first pass): a whole tile of rows, or a row at a time."""
    if r1 - r0 == POINT_ROWS:
        store_point(out, taps, r0, p, src, offsets, t0, t1, t0 > 0, POINT_ROWS, vectors)
    else:
        for r in range(r0, r1):
            store_point(out, taps, r, p, src, offsets, t0, t1, t0 > 0, 1, vectors)


@kernel_helper
def _finish(dst, src, plus, relu):
    """``dst = src + plus``, through a ReLU with ``relu``."""
    if relu:
        copy_relu(dst, src, plus)
    else:
        copy_plus(dst, src, plus)


def grad_weight(g: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias gradients of a 1x1 conv without padding or stride, ``sum(g[s] @ x[s].T)``
    and ``g.sum((0, 2))``, for its output gradient ``g`` (N, R, P) and input ``x`` (N, C, P), both
    C-contiguous. Returns (R, C) and (R,) arrays of their dtype.

    A task sums a share of the samples for a band of the output channels in float64; a dot product
    sums a stretch of positions in float32: several samples' planes, or a piece of one plane, short
    enough that the stretch's input rows stay in L2 cache while every tile of output channels reads
    them (the tile's own rows stay in L1), but at least :data:`_LEAST_POSITIONS` and at most
    :data:`_MOST_POSITIONS` long. The split depends on the shapes only, so the result does not depend
    on the thread count."""
    n, rows, positions = g.shape
    channels = x.shape[1]
    if n == 0 or positions == 0:
        return np.zeros((rows, channels), g.dtype), np.zeros(rows, g.dtype)
    stretch = min(_MOST_POSITIONS, max(_LEAST_POSITIONS, _SEGMENT_BYTES // (channels * x.itemsize)))
    if positions > stretch:  # stretches of a plane, whole vectors
        count, length = 1, stretch // lanes(x.itemsize) * lanes(x.itemsize)
    else:  # planes of several samples
        count, length = stretch // positions, positions
    items = -(-n // count) * -(-positions // length)
    shares = max(1, min(items, _GRAD_TASKS))
    units = -(-rows // DOT_ROWS)
    bands = max(1, min(units, _GRAD_TASKS // shares))
    work = n * positions * rows * channels
    return sized(_grad_weight, work // TILE_SPEED)(g, x, count, length, shares, bands)


@parallel_kernel
def _grad_weight(g, x, count, length, shares, bands):
    """:func:`grad_weight`: tasks of (share of the items, band of output tiles); an item is ``count``
    samples' planes, or a stretch of ``length`` positions of one sample's plane."""
    n, rows, positions = g.shape
    channels = x.shape[1]
    group = DOT_ROWS if rows >= DOT_ROWS else 1  # output channels a tile
    units = -(-rows // group)
    per_band = -(-units // bands)
    stretches = -(-positions // length)
    items = -(-n // count) * stretches
    sums = np.zeros((shares, rows, channels))
    bias = np.zeros((shares, rows))
    g_flat, x_flat = g.reshape(g.size), x.reshape(x.size)
    for task in prange(shares * bands):
        share, band = task // bands, task % bands
        u0, u1 = band * per_band, min(units, (band + 1) * per_band)
        if u0 >= u1:
            continue
        r0, r1 = u0 * group, min(rows, u1 * group)
        mine = np.zeros((u1 - u0, group, whole(channels, DOT_COLS)))
        part = np.empty((DOT_ROWS, DOT_COLS), dtype=g.dtype)
        g_starts = np.empty(DOT_ROWS, dtype=np.int64)
        x_starts = np.empty(DOT_COLS, dtype=np.int64)
        for item in range(share * items // shares, (share + 1) * items // shares):
            s0, p0 = item // stretches * count, item % stretches * length
            samples, span = min(count, n - s0), min(length, positions - p0)
            for r in range(r0, r1):
                for s in range(s0, s0 + samples):
                    bias[share, r] += row_sum(g[s, r, p0 : p0 + span])
            for unit in range(u0, u1):
                for a in range(group):
                    g_starts[a] = (s0 * rows + min(unit * group + a, rows - 1)) * positions + p0
                for c0 in range(0, channels, DOT_COLS):
                    for c in range(DOT_COLS):
                        x_starts[c] = (s0 * channels + min(c0 + c, channels - 1)) * positions + p0
                    if group == DOT_ROWS:
                        dot_segments(part, g_flat, g_starts, rows * positions, x_flat, x_starts, channels * positions,
                                     span, samples)
                    else:
                        dot_segments_row(part, g_flat, g_starts, rows * positions, x_flat, x_starts,
                                         channels * positions, span, samples)
                    for a in range(group):
                        for c in range(DOT_COLS):
                            mine[unit - u0, a, c0 + c] += part[a, c]
        for r in range(r0, r1):
            for c in range(channels):
                sums[share, r, c] = mine[(r - r0) // group, (r - r0) % group, c]
    grad_w = np.empty((rows, channels), dtype=g.dtype)
    grad_b = np.empty(rows, dtype=g.dtype)
    sum_shares(sums, bias, grad_w, grad_b)
    return grad_w, grad_b
