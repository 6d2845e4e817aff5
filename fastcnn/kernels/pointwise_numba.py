"""1x1 convs (stride 1, no padding) as one matrix product per sample, ``y[s] = W @ x[s] (+ b)``, on the
arrays as they lie: a sample's channels are rows of ``H*W`` positions in NCHW, so a register tile
(:func:`._tiles.store_tile`) reads the input and writes the output in place, with no copy into the
stride-1 kernels' wide layout and none out of it.

The tasks are (sample, block of positions, group of output rows): a block's input stays in cache while
every tile of rows reads it. A tile covers whole vectors of positions; the last positions of a plane
that do not fill one go through a small zero-padded copy. (Measured against the wide-layout kernel and
PyTorch on MobileNet's 1x1 convs at batch 256, 2 threads: 1.5-1.9x faster than the first, 0.7-1.0x
PyTorch's time.)

A 1x1 conv with a stride (and no padding) is that product on its input subsampled by the stride
(:func:`subsample`); its input gradient is the product's, spread back to the strided positions
(:func:`spread`).
"""
from __future__ import annotations

import numpy as np

from . import jit
from .jit import kernel_helper, parallel_kernel, prange, sized
from ._planes import narrow
from ._rows import copy_plus, copy_relu
from ._tiles import ROWS, TILE_SPEED, store_row, store_tile, tile_width

_BLOCK_BYTES = 1 << 17  # input a block of positions reads (channels x positions): it stays in L2 cache
_TASKS_PER_THREAD = 8


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
    width = tile_width(x.itemsize)
    block = max(1, _BLOCK_BYTES // (channels * width * x.itemsize)) * width
    blocks = -(-positions // block)
    units = -(-rows // ROWS)
    groups = max(1, min(units, -(-_TASKS_PER_THREAD * jit.num_threads() // max(1, n * blocks))))
    bias = np.zeros(rows, x.dtype) if b is None else b
    sized(_product, n * positions * rows * channels // TILE_SPEED)(x, taps, bias, relu, y, block, groups, pass_taps)
    return y


@parallel_kernel
def _product(x, taps, b, relu, y, block, groups, pass_taps):
    """:func:`product`, tasks of (sample, ``block`` positions, one of ``groups`` groups of row tiles)."""
    n, channels, positions = x.shape
    rows = y.shape[1]
    width = tile_width(x.itemsize)
    blocks = -(-positions // block)
    per_pass = -(-channels // -(-channels // pass_taps))
    units = -(-rows // ROWS)
    per_group = -(-units // groups)
    offsets = np.arange(channels) * positions
    tail_offsets = np.arange(channels) * width
    for task in prange(n * blocks * groups):
        s, blk, group = task // (blocks * groups), task // groups % blocks, task % groups
        src, out = x[s].reshape(channels * positions), y[s]
        p0 = blk * block
        p1 = min(positions, p0 + block)
        body = p0 + (p1 - p0) // width * width
        tail = p1 - body
        if tail:  # the block's last positions, zero-padded to a whole vector, and their tile
            tail_src = np.zeros(channels * width, dtype=x.dtype)
            for c in range(channels):
                for k in range(tail):
                    tail_src[c * width + k] = src[c * positions + body + k]
            tail_out = np.empty((units * ROWS, width), dtype=x.dtype)
        for unit in range(group * per_group, min(units, (group + 1) * per_group)):
            r0 = unit * ROWS
            r1 = min(rows, r0 + ROWS)
            for t0 in range(0, channels, per_pass):
                t1 = min(channels, t0 + per_pass)
                for p in range(p0, body, width):
                    _tile(out, taps, r0, r1, p, src, offsets, t0, t1)
                if tail:
                    _tile(tail_out, taps, r0, r1, 0, tail_src, tail_offsets, t0, t1)
            for r in range(r0, r1):
                _finish(out[r, p0:body], out[r, p0:body], b[r], relu)
                if tail:
                    _finish(out[r, body:p1], tail_out[r, :tail], b[r], relu)


@kernel_helper
def _tile(out, taps, r0, r1, p, src, offsets, t0, t1):
    """Rows ``r0`` to ``r1`` of ``out`` at the positions of one tile from ``p``, summed over taps ``t0``
    to ``t1`` (added to what they hold after the first pass): a whole tile, or a row at a time."""
    if r1 - r0 == ROWS:
        store_tile(out, taps, r0, p, src, offsets, t0, t1, t0 > 0)
    else:
        for r in range(r0, r1):
            store_row(out, taps, r, p, src, offsets, t0, t1, t0 > 0)


@kernel_helper
def _finish(dst, src, plus, relu):
    """``dst = src + plus``, through a ReLU with ``relu``."""
    if relu:
        copy_relu(dst, src, plus)
    else:
        copy_plus(dst, src, plus)
