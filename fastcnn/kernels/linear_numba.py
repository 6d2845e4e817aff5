"""The fully connected layer as Numba loops, for *thin* layers (few outputs, a large batch).

BLAS handles such products poorly (an MLP's ``(60000, 784) @ (784, 10)`` runs at half of memory
speed). Here a dense layer is the convolution helpers of :mod:`._taps` with the row length as the
shift: a block of input rows is read from memory once and meets four weight rows per pass while it
is in cache. The dispatcher keeps BLAS for the wide layers, where it is far faster.

Every array is C-contiguous (the functional API makes it so).
"""
from __future__ import annotations

import numpy as np

from ._jit import parallel_kernel, prange
from ._taps import add_taps, add_taps4, tap_dots4_by5

_ROWS = 96  # input rows per task: about 300 KB of a 784-wide float32 input, so it stays in L2 cache
_BLOCK_ROWS, _MAX_BLOCKS = 4 * _ROWS, 16  # the weight gradient's partial sums: their number depends on
# the batch only, so the summation order (and the result) does not depend on the thread count


def linear_forward(x, w, b):
    """``x @ w.T + b`` for ``x`` (N, in) and ``w`` (out, in)."""
    y = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    _forward(x, w, b, y)
    return y


def linear_grad_input(gy, w):
    """``gy @ w``: the input gradient, shape (N, in)."""
    gx = np.zeros((gy.shape[0], w.shape[1]), dtype=gy.dtype)
    _add_rows_times(gy, w, gx)
    return gx


@parallel_kernel
def _forward(x, w, b, y):
    """``y = x @ w.T + b``: each output is a dot product of an input row and a weight row."""
    n, n_in = x.shape
    n_out = w.shape[0]
    flat = w.reshape(n_out * n_in)
    for task in prange((n + _ROWS - 1) // _ROWS):
        out = np.empty((4, n_out), dtype=x.dtype)
        for r0 in range(task * _ROWS, min(n, (task + 1) * _ROWS), 4):
            last = min(r0 + 3, n - 1)  # a short last group repeats its last row
            tap_dots4_by5(out, x[r0], x[min(r0 + 1, last)], x[min(r0 + 2, last)], x[last], flat, n_in)
            for r in range(last + 1 - r0):
                for o in range(n_out):
                    y[r0 + r, o] = out[r, o] + b[o]


@parallel_kernel
def linear_grad_weight(gy, x):
    """``gy.T @ x``: the weight gradient, shape (out, in), summed per row block and then over blocks."""
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
