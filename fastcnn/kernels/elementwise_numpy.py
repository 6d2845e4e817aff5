"""Element-wise training steps in NumPy: ReLU and its gradient, dropout, and the Adam update."""
from __future__ import annotations

import numpy as np

from ._mask import kept


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
    """``x`` times ``scale`` where the element survives (see :func:`._mask.kept`), else 0."""
    mask = kept(seed, np.arange(x.size, dtype=np.uint64), threshold).reshape(x.shape)
    return np.where(mask, x * scale, 0).astype(x.dtype, copy=False)
