"""Softmax fused with cross-entropy as Numba loops around NumPy's exponential.

Numba compiles ``exp`` to one scalar library call per value (it has no vector math library here),
which made the exponentials most of the op; NumPy's ``exp`` is vectorised, about six times faster.
So one kernel shifts each row by its maximum, NumPy exponentiates in place, and a second kernel
gives each row's loss, gradient and hit.
"""
from __future__ import annotations

import math

import numpy as np

from .jit import parallel_kernel, prange, sized


def softmax_cross_entropy(z, labels):
    """Mean cross-entropy of ``softmax(z)`` against integer ``labels``, its gradient w.r.t. ``z``, and
    the number of rows whose first largest logit is at the label."""
    grad = np.empty_like(z)
    sized(_shift_rows, z.size)(z, grad)
    np.exp(grad, out=grad)
    return sized(_finish_rows, z.size)(z, labels, grad)


@parallel_kernel
def _shift_rows(z, out):
    """``out = z - max(z)`` row by row."""
    n, k = z.shape
    for r in prange(n):
        row = z[r]
        top = row[0]
        for j in range(1, k):
            top = max(top, row[j])
        for j in range(k):
            out[r, j] = row[j] - top


@parallel_kernel
def _finish_rows(z, labels, grad):
    """From ``grad`` holding ``exp(z - max(z))``: the mean loss, ``grad`` made the gradient in place,
    and the hits; the losses are summed in a fixed order."""
    n, k = z.shape
    losses = np.empty(n, dtype=np.float64)
    hits = np.empty(n, dtype=np.int64)
    for r in prange(n):
        row, label = z[r], labels[r]
        top = row[0]
        total = 0.0
        for j in range(k):
            top = max(top, row[j])
            total += grad[r, j]
        scale = 1.0 / (total * n)
        for j in range(k):
            grad[r, j] *= scale
        grad[r, label] -= 1.0 / n
        losses[r] = math.log(total) - (row[label] - top)
        hit = row[label] == top  # and no earlier logit ties with it (argmax takes the first)
        for j in range(label):
            hit &= row[j] < top
        hits[r] = hit
    total_loss, total_hits = 0.0, 0
    for r in range(n):  # a loop: ``losses.sum()`` here would be a parallel reduction, its order set by the threads
        total_loss += losses[r]
        total_hits += hits[r]
    return total_loss / n, grad, total_hits
