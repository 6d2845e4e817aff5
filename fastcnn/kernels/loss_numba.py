"""Softmax fused with cross-entropy as a Numba loop: one pass per row gives its loss, gradient and hit."""
from __future__ import annotations

import math

import numpy as np

from ._jit import parallel_kernel, prange, sized


def softmax_cross_entropy(z, labels):
    """Mean cross-entropy of ``softmax(z)`` against integer ``labels``, its gradient w.r.t. ``z``, and
    the number of rows whose first largest logit is at the label."""
    return sized(_softmax_cross_entropy, z.size)(z, labels)


@parallel_kernel
def _softmax_cross_entropy(z, labels):
    """:func:`softmax_cross_entropy`, one row per task; the losses are summed in a fixed order."""
    n, k = z.shape
    grad = np.empty_like(z)
    losses = np.empty(n, dtype=np.float64)
    hits = np.empty(n, dtype=np.int64)
    for r in prange(n):
        row, label = z[r], labels[r]
        top = row[0]
        for j in range(1, k):
            top = max(top, row[j])
        total = 0.0
        for j in range(k):
            e = math.exp(row[j] - top)
            grad[r, j] = e
            total += e
        scale = 1.0 / (total * n)
        for j in range(k):
            grad[r, j] *= scale
        grad[r, label] -= 1.0 / n
        losses[r] = math.log(total) - (row[label] - top)
        hit = row[label] == top  # and no earlier logit ties with it (argmax takes the first)
        for j in range(label):
            hit &= row[j] < top
        hits[r] = hit
    return losses.sum() / n, grad, hits.sum()
