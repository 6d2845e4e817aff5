"""The fully connected layer as Numba loops, built on the register tiles of :mod:`._tiles`.

- Forward pass: dot products of input rows and weight rows, a tile of 4 rows by 5 outputs (AVX2: 3) at a time
  that prefetches the next rows, so a thin layer's large batch (an MLP's ``(60000, 784)`` input, where
  BLAS runs at half of memory speed) streams from memory while the arithmetic runs. A batch of 128
  to 2048 rows, through a layer of a whole output tile or more and a short input (LeNet's 400 -> 128)
  instead transposes the weight and takes products of output tiles (8 rows by 48 outputs; AVX2: 4 by 24), which
  need no sum across a vector's lanes: 0.55-0.75x the time at batch 256 to 1024. The two sum in
  different orders, so a row's last bits depend on which its batch takes.
- Gradients: products of output tiles (8 rows by 48 columns; AVX2: 4 by 24) for any layer at least a tile wide,
  about twice as fast as BLAS for 400 or 9216 inputs and 128 outputs at batch 64; narrower layers use
  the multiply-add helpers of :mod:`._taps`.

The dispatcher measures both backends for every shape. Every array is C-contiguous (the functional
API makes it so).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .jit import kernel_helper, parallel_kernel, prange, sized
from ._taps import add_taps, add_taps4
from ._tiles import (DENSE_COLS, DENSE_ROWS, DOT_COLS, ROWS, TILE_SPEED, dense_tile, dot_row, lanes, store_row,
                     store_tile, tile_width, whole)
from .scratch import scratch

_ROWS = 96  # input rows per task: about 300 KB of a 784-wide float32 input, so it stays in L2 cache
_BLOCK_ROWS, _MAX_BLOCKS = 4 * _ROWS, 16  # the weight gradient's partial sums: their number depends on
# the batch only, so the summation order (and the result) does not depend on the thread count
_OUT_BLOCK = 4 * DENSE_COLS  # outputs per forward task, whole tiles: a wide layer's forward pass splits its
# outputs over the threads
_OUT_BLOCK_ROWS = 8 * DOT_COLS  # the same for :func:`_forward_rows`, whole tiles of its outputs
_PANEL = 256  # rows of the right-hand factor per step of a tile product: 256 rows of 784 float32 (800 KB) fit L2
_TILED_FROM, _TILED_UP_TO, _TILED_ROWS = 128, 2048, 32  # batches that go by output tiles; rows per task
_TILED_COLUMN_BYTES = 1 << 18  # the most a column of the transposed weight's tiles may take, so it stays in L2
# (measured, 2 threads, 400 -> 128, interleaved: batch 64 1.1x the dot products' time, 96 0.95x, 128 0.8x,
# 256 0.65-0.75x, 1024 0.55x; 784 -> 128 at batch 512 0.65x; 9216 -> 128 at batch 64 1.2x. Larger batches,
# an MLP's whole training set, stream by dot products, with no output scratch of their size.)


def linear_forward(x, w, b, relu=False):
    """``x @ w.T + b`` for ``x`` (N, in) and ``w`` (out, in), through a ReLU with ``relu``."""
    return forward_for(x.shape[0], w.shape, x.itemsize)(x, w, b, relu)


def forward_for(n: int, w_shape: tuple, itemsize: int) -> Callable[..., np.ndarray]:
    """:func:`linear_forward` for ``n`` rows through a weight of ``w_shape``, its route chosen once (and
    whether it runs on Numba's threads, for the thread count in force): for a caller that runs one
    shape many times, such as the inference plan."""
    work = n * w_shape[0] * w_shape[1] // TILE_SPEED
    if n < DENSE_ROWS:  # a tile of rows would repeat rows: one row at a time
        return functools.partial(_into_new, sized(_forward_rows, work))
    if by_output_tiles(n, *w_shape, itemsize):
        return functools.partial(_tiled_into_new, sized(_forward_tiled, work))
    return functools.partial(_into_new, sized(_forward, work))


def _into_new(kernel, x, w, b, relu):
    y = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    kernel(x, w, b, y, relu)
    return y


def _tiled_into_new(kernel, x, w, b, relu):
    y = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    w_t = scratch("linear weight T", (w.shape[1], whole(w.shape[0], tile_width(x.itemsize))), x.dtype)
    out = scratch("linear out", (whole(x.shape[0], ROWS), w_t.shape[1]), x.dtype)
    kernel(x, w, b, y, relu, w_t, out)
    return y


def by_output_tiles(n: int, n_out: int, n_in: int, itemsize: int) -> bool:
    """Whether :func:`linear_forward` of ``n`` rows through an ``(n_out, n_in)`` weight goes by output
    tiles (see the module docstring)."""
    width = tile_width(itemsize)
    return _TILED_FROM <= n <= _TILED_UP_TO and n_out >= width and n_in * width * itemsize <= _TILED_COLUMN_BYTES


def linear_grad_input(gy, w):
    """``gy @ w``: the input gradient, shape (N, in)."""
    if w.shape[1] >= tile_width(w.itemsize):
        return _tile_product(_padded_rows(gy), w, gy.shape[0])
    gx = np.zeros((gy.shape[0], w.shape[1]), dtype=gy.dtype)
    _add_rows_times(gy, w, gx)
    return gx


def linear_grad_weight(gy, x):
    """``gy.T @ x``: the weight gradient, shape (out, in)."""
    if x.shape[1] >= tile_width(x.itemsize):
        gy_t = np.empty((whole(gy.shape[1], ROWS), gy.shape[0]), dtype=gy.dtype)
        sized(_transpose_padded, gy.size)(gy, gy_t)
        return _tile_product(gy_t, x, gy.shape[1])
    return _grad_weight_thin(gy, x)


def _padded_rows(a):
    """``a`` with zero rows appended to whole register tiles of rows (``a`` itself when it has them)."""
    if a.shape[0] % ROWS == 0:
        return a
    padded = np.zeros((whole(a.shape[0], ROWS), a.shape[1]), dtype=a.dtype)
    padded[: a.shape[0]] = a
    return padded


@parallel_kernel
def _transpose_padded(a, out):
    """``out[:a.shape[1]] = a.T`` and zero in the rows after."""
    n, m = a.shape
    for task in prange(-(-n // _PANEL)):
        for t in range(task * _PANEL, min(n, (task + 1) * _PANEL)):
            for r in range(m):
                out[r, t] = a[t, r]
            for r in range(m, out.shape[0]):
                out[r, t] = 0


def _tile_product(a, b, m):
    """``(a @ b)[:m]`` for ``a`` (M, K) with M whole register tiles of rows and ``b`` (K, N)."""
    k, n = b.shape
    chunks = min(_MAX_BLOCKS, k // _PANEL)
    parts = np.empty((max(chunks, 1), a.shape[0], n), dtype=b.dtype)
    sized(_products, a.shape[0] * k * n // TILE_SPEED)(a, b, parts)
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total[:m]


@parallel_kernel
def _products(a, b, parts):
    """``parts[c]`` = the product of ``a`` and ``b`` over chunk ``c`` of their shared axis (one chunk
    per entry of ``parts``), register tile by register tile; the columns past the last whole tile
    by :func:`._taps.add_taps`.

    With one chunk a task is a column of tiles; with several, a task is a chunk, stepping through its
    rows of ``b`` a cache-sized panel at a time (a tall ``b``, as in an MLP's weight gradient, is read
    from memory once).
    """
    k, n = b.shape
    chunks = parts.shape[0]
    width = tile_width(b.itemsize)
    column_tiles = -(-n // width)
    per_task = column_tiles if chunks > 1 else 1  # column tiles
    groups = -(-column_tiles // per_task)
    flat = b.reshape(b.size)
    offsets = _row_starts(k, n)
    for task in prange(chunks * groups):
        chunk, group = task // groups, task % groups
        k0, k1 = chunk * k // chunks, (chunk + 1) * k // chunks
        part = parts[chunk]
        for p0 in range(k0, k1, _PANEL):
            p1 = min(k1, p0 + _PANEL)
            for tile in range(group * per_task, min(column_tiles, (group + 1) * per_task)):
                c0 = tile * width
                for r0 in range(0, part.shape[0], ROWS):
                    if c0 + width <= n:
                        store_tile(part, a, r0, c0, flat, offsets, p0, p1, p0 > k0)
                        continue
                    for r in range(r0, r0 + ROWS):
                        if p0 == k0:
                            for c in range(c0, n):  # a loop: an array expression here would be a parallel loop
                                part[r, c] = 0
                        add_taps(part[r, c0:], flat[p0 * n + c0 :], a[r, p0:p1], n)


@kernel_helper
def _row_starts(rows, width):
    """Where each of ``rows`` rows of ``width`` values starts in a flat C-contiguous array: a tile
    product's offsets (see :func:`._tiles.store_tile`)."""
    starts = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        starts[r] = r * width
    return starts


@parallel_kernel
def _forward(x, w, b, y, relu):
    """``y = x @ w.T + b`` (through a ReLU with ``relu``): each output is a dot product of an input row
    and a weight row, a register tile of :data:`._tiles.DENSE_ROWS` rows by :data:`._tiles.DENSE_COLS` outputs at a time (:data:`._tiles.dense_tile`),
    which prefetches the next 4 rows while it works; the columns past the last whole vector by a loop."""
    n, n_in = x.shape
    n_out = w.shape[0]
    vector_end = n_in - n_in % lanes(x.itemsize)  # the dot products' whole vectors end here
    x_flat, w_flat = x.reshape(x.size), w.reshape(w.size)
    out_blocks = -(-n_out // _OUT_BLOCK)
    for task in prange(-(-n // _ROWS) * out_blocks):
        rows, outs = task // out_blocks, task % out_blocks
        out = np.empty((DENSE_ROWS, DENSE_COLS), dtype=x.dtype)
        x_starts = np.empty(DENSE_ROWS, dtype=np.int64)
        w_starts = np.empty(DENSE_COLS, dtype=np.int64)
        for r0 in range(rows * _ROWS, min(n, (rows + 1) * _ROWS), DENSE_ROWS):
            for a in range(DENSE_ROWS):  # a short last group repeats its last row
                x_starts[a] = min(r0 + a, n - 1) * n_in
            ahead = DENSE_ROWS * n_in if r0 + 2 * DENSE_ROWS <= n and outs == 0 else 0
            for o0 in range(outs * _OUT_BLOCK, min(n_out, (outs + 1) * _OUT_BLOCK), DENSE_COLS):
                for c in range(DENSE_COLS):
                    w_starts[c] = min(o0 + c, n_out - 1) * n_in
                dense_tile(out, x_flat, x_starts, w_flat, w_starts, vector_end, ahead if o0 == outs * _OUT_BLOCK else 0)
                _finish_tile(out, x, w, b, y, r0, o0, vector_end, relu)


@parallel_kernel
def _forward_tiled(x, w, b, y, relu, w_t, out):
    """:func:`_forward` as products of output tiles (:func:`._tiles.store_tile`, the rows past the
    last whole tile of rows by :func:`._tiles.store_row`), after transposing the weight into ``w_t``
    (zero outputs appended to whole tiles); each task is a block of :data:`_TILED_ROWS` rows by a tile
    of outputs, which it finishes (bias, ReLU) from ``out`` while it is in cache."""
    n, n_in = x.shape
    n_out, padded = w.shape[0], w_t.shape[1]
    width = tile_width(x.itemsize)
    for task in prange(-(-n_in // _PANEL)):
        for k in range(task * _PANEL, min(n_in, (task + 1) * _PANEL)):
            for c in range(n_out):  # (loops: an array expression here would be a parallel loop of its own)
                w_t[k, c] = w[c, k]
            for c in range(n_out, padded):
                w_t[k, c] = 0
    flat = w_t.reshape(w_t.size)
    offsets = _row_starts(n_in, padded)
    tiles = padded // width
    for task in prange(-(-n // _TILED_ROWS) * tiles):
        r_begin, c0 = task // tiles * _TILED_ROWS, task % tiles * width
        r_end = min(n, r_begin + _TILED_ROWS)
        for r0 in range(r_begin, r_end, ROWS):
            if r0 + ROWS <= n:
                store_tile(out, x, r0, c0, flat, offsets, 0, n_in, False)
            else:
                for r in range(r0, n):
                    store_row(out, x, r, c0, flat, offsets, 0, n_in, False)
        for r in range(r_begin, r_end):
            for c in range(c0, min(n_out, c0 + width)):
                total = out[r, c] + b[c]
                y[r, c] = 0 if relu and total <= 0 else total


@parallel_kernel
def _forward_rows(x, w, b, y, relu):
    """:func:`_forward` for fewer rows than its tile: a tile of one row by :data:`._tiles.DOT_COLS`
    outputs (:func:`._tiles.dot_row`), each task a row and a block of outputs."""
    n, n_in = x.shape
    n_out = w.shape[0]
    vector_end = n_in - n_in % lanes(x.itemsize)
    x_flat, w_flat = x.reshape(x.size), w.reshape(w.size)
    out_blocks = -(-n_out // _OUT_BLOCK_ROWS)
    for task in prange(n * out_blocks):
        r, outs = task // out_blocks, task % out_blocks
        out = np.empty((1, DOT_COLS), dtype=x.dtype)
        x_starts = np.full(1, r * n_in, dtype=np.int64)
        w_starts = np.empty(DOT_COLS, dtype=np.int64)
        for o0 in range(outs * _OUT_BLOCK_ROWS, min(n_out, (outs + 1) * _OUT_BLOCK_ROWS), DOT_COLS):
            for c in range(DOT_COLS):
                w_starts[c] = min(o0 + c, n_out - 1) * n_in
            dot_row(out, x_flat, x_starts, w_flat, w_starts, vector_end, 0)
            _finish_tile(out, x, w, b, y, r, o0, vector_end, relu)


@kernel_helper
def _finish_tile(out, x, w, b, y, r0, o0, vector_end, relu):
    """``y[r0 + a, o0 + c] = out[a, c]`` plus the bias and the products past ``vector_end`` (through a
    ReLU with ``relu``: NaN stays NaN), for the tile's rows and outputs that exist."""
    for a in range(min(out.shape[0], x.shape[0] - r0)):
        for c in range(min(out.shape[1], w.shape[0] - o0)):
            total = out[a, c] + b[o0 + c]
            for k in range(vector_end, x.shape[1]):
                total += x[r0 + a, k] * w[o0 + c, k]
            y[r0 + a, o0 + c] = 0 if relu and total <= 0 else total


@parallel_kernel
def _grad_weight_thin(gy, x):
    """``gy.T @ x`` for inputs narrower than a register tile, summed per row block and then over blocks."""
    n, n_in = x.shape
    n_out = gy.shape[1]
    flat = x.reshape(n * n_in)
    blocks = min(_MAX_BLOCKS, (n + _BLOCK_ROWS - 1) // _BLOCK_ROWS)
    parts = np.zeros((blocks, n_out, n_in), dtype=x.dtype)
    for blk in prange(blocks):
        part = parts[blk]
        end = (blk + 1) * n // blocks
        for r0 in range(blk * n // blocks, end, _ROWS):
            src, r1 = flat[r0 * n_in :], min(r0 + _ROWS, end)
            o = 0
            while o + 4 <= n_out:
                add_taps4(part[o], part[o + 1], part[o + 2], part[o + 3], src, gy[r0:r1, o : o + 4].T, n_in)
                o += 4
            for o in range(o, n_out):
                add_taps(part[o], src, gy[r0:r1, o], n_in)
    grad_w = parts[0].copy()
    for blk in range(1, blocks):
        grad_w += parts[blk]
    return grad_w


@parallel_kernel
def _add_rows_times(a, m, out):
    """``out += a @ m`` for ``a`` (N, K) and ``m`` (K, M): each output row gains a sum of rows of
    ``m``, four output rows per pass."""
    n = a.shape[0]
    k, width = m.shape
    flat = m.reshape(k * width)
    for task in prange((n + 3) // 4):
        r0 = 4 * task
        if r0 + 4 <= n:
            add_taps4(out[r0], out[r0 + 1], out[r0 + 2], out[r0 + 3], flat, a[r0 : r0 + 4], width)
        else:
            for r in range(r0, n):
                add_taps(out[r], flat, a[r], width)
