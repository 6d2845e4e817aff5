"""Element-wise training steps in NumPy: the activations and their gradients, dropout, and the Adam update."""
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


def tanh_forward(x):
    """``tanh(x)``."""
    return np.tanh(x)


def tanh_backward(grad, y):
    """Gradient of tanh from its output ``y``: ``grad * (1 - y**2)``."""
    return grad * (1 - y * y)


def sigmoid_forward(x):
    """``1 / (1 + exp(-x))`` without overflow for any ``x`` (``exp`` only ever of ``-|x|``)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(grad, y):
    """Gradient of the sigmoid from its output ``y``: ``grad * y * (1 - y)``."""
    return grad * y * (1 - y)


def softmax_forward(x):
    """Softmax over the last axis, shifted by each row's maximum so any finite values are safe."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(grad, y):
    """Gradient of the softmax over the last axis from its output ``y``."""
    return y * (grad - (grad * y).sum(axis=-1, keepdims=True))
