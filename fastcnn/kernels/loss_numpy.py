"""The losses in NumPy: each returns the mean loss (a float, summed in float64) and its gradient."""
from __future__ import annotations

import numpy as np


def softmax_cross_entropy(z, labels):
    """Mean cross-entropy of ``softmax(z)`` against integer ``labels``, its gradient w.r.t. ``z``, and
    the number of rows whose first largest logit is at the label."""
    n = z.shape[0]
    rows = np.arange(n)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    loss = (np.log(total[:, 0], dtype=np.float64).sum() - shifted[rows, labels].sum(dtype=np.float64)) / n
    grad = e / (total * z.dtype.type(n))
    grad[rows, labels] -= z.dtype.type(1 / n)
    return float(loss), grad, int((z.argmax(axis=1) == labels).sum())


def soft_cross_entropy(z, target):
    """Mean cross-entropy of ``softmax(z)`` against rows of probabilities (or one-hot rows) ``target``,
    and its gradient w.r.t. ``z``; exact for logits of any size."""
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    grad = (np.exp(log_p) * target.sum(axis=1, keepdims=True) - target) / z.dtype.type(n)
    return float(-(target * log_p).sum(dtype=np.float64) / n), grad.astype(z.dtype, copy=False)


def mse(pred, target):
    """Mean of ``(pred - target)**2`` over every element, and its gradient."""
    diff = pred - target
    return float(np.square(diff, dtype=np.float64).mean()), diff * diff.dtype.type(2.0 / diff.size)


def bce(pred, target, eps):
    """Mean binary cross-entropy of probabilities ``pred`` (clipped to ``[eps, 1 - eps]``) against
    ``target`` in [0, 1], and its gradient w.r.t. ``pred``, evaluated at the clipped probabilities."""
    p = np.clip(pred, eps, 1 - eps)
    loss = -(target * np.log(p) + (1 - target) * np.log1p(-p)).mean(dtype=np.float64)
    return float(loss), ((p - target) / (p * (1 - p)) / p.size).astype(pred.dtype, copy=False)
