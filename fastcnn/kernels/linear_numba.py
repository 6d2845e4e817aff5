"""The fully connected layer as Numba loops, for *thin* layers (few outputs, a large batch).

BLAS handles such products poorly (an MLP's ``(60000, 784) @ (784, 10)`` runs at a third of memory
speed); here each input row is read once and meets every weight row while it is in L1 cache. The
dispatcher keeps BLAS for the wide layers, where it is far faster.
"""
from __future__ import annotations

import numpy as np

from ._jit import kernel_helper, parallel_kernel, prange

_ROW_BLOCKS = 64  # fixed, so the weight gradient's summation order does not depend on the thread count


@kernel_helper
def _dot(a, b):
    acc = a[0] * b[0]
    for p in range(1, a.shape[0]):
        acc += a[p] * b[p]
    return acc


@kernel_helper
def _axpy(dst, a, src):
    """``dst[p] += a * src[p]`` for every ``p``."""
    for p in range(dst.shape[0]):
        dst[p] += a * src[p]


@parallel_kernel
def linear_forward(x, w, b):
    """``x @ w.T + b`` for ``x`` (N, in) and ``w`` (out, in)."""
    n, n_out = x.shape[0], w.shape[0]
    y = np.empty((n, n_out), dtype=x.dtype)
    for r in prange(n):
        for j in range(n_out):
            y[r, j] = b[j] + _dot(x[r], w[j])
    return y


@parallel_kernel
def linear_grad_weight(gy, x):
    """``gy.T @ x``: the weight gradient, shape (out, in), summed per row block and then over blocks."""
    n, n_out, n_in = x.shape[0], gy.shape[1], x.shape[1]
    blocks = min(_ROW_BLOCKS, n)
    parts = np.zeros((blocks, n_out, n_in), dtype=x.dtype)
    for blk in prange(blocks):
        part = parts[blk]
        for r in range(blk * n // blocks, (blk + 1) * n // blocks):
            for j in range(n_out):
                _axpy(part[j], gy[r, j], x[r])
    grad_w = np.zeros((n_out, n_in), dtype=x.dtype)
    for blk in range(blocks):
        grad_w += parts[blk]
    return grad_w


@parallel_kernel
def linear_grad_input(gy, w):
    """``gy @ w``: the input gradient, shape (N, in)."""
    n, n_out, n_in = gy.shape[0], w.shape[0], w.shape[1]
    gx = np.zeros((n, n_in), dtype=gy.dtype)
    for r in prange(n):
        for j in range(n_out):
            _axpy(gx[r], gy[r, j], w[j])
    return gx
