"""Element-wise training steps in NumPy: ReLU and its gradient, and the Adam update."""
from __future__ import annotations

import numpy as np


def relu_forward(x):
    """``max(x, 0)``, keeping NaN."""
    return np.maximum(x, 0)


def relu_backward(grad, y):
    """``grad`` where the ReLU output ``y`` is positive, else 0."""
    return np.where(y > 0, grad, 0).astype(grad.dtype, copy=False)


def adam_update(param, grad, m, v, b1, b2, step_size, bias2, eps):
    """One Adam step in place: ``m``, ``v`` and ``param`` are updated (see :class:`fastcnn.optim.Adam`)."""
    t = param.dtype.type
    m *= t(b1)
    m += t(1 - b1) * grad
    v *= t(b2)
    v += t(1 - b2) * grad * grad
    denom = np.sqrt(v / t(bias2))
    denom += t(eps)
    param -= t(step_size) * m / denom
