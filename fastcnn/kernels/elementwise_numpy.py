"""Element-wise training steps in NumPy: ReLU and its gradient, dropout, and the Adam update."""
from __future__ import annotations

import numpy as np


def relu_forward(x):
    """``max(x, 0)``, keeping NaN."""
    return np.maximum(x, 0)


def relu_backward(grad, y):
    """``grad`` where the ReLU output ``y`` is positive, else 0."""
    return np.where(y > 0, grad, 0).astype(grad.dtype, copy=False)


def adam_update(param, grad, m, v, b1, b2, step_size, bias2, eps):
    """One Adam step in place on the 1-D arrays ``param``, ``m`` and ``v`` (see :class:`fastcnn.optim.Adam`)."""
    t = param.dtype.type
    m *= t(b1)
    m += t(1 - b1) * grad
    v *= t(b2)
    v += t(1 - b2) * grad * grad
    denom = np.sqrt(v / t(bias2))
    denom += t(eps)
    param -= t(step_size) * m / denom


def dropout(x, seed, threshold, scale):
    """``x`` times ``scale`` where the element survives, else 0: the Numba kernel's SplitMix64 mask."""
    z = seed + (np.arange(1, x.size + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    kept = ((z ^ (z >> np.uint64(31))) >> np.uint64(40)) < threshold
    return np.where(kept.reshape(x.shape), x * scale, 0).astype(x.dtype, copy=False)
