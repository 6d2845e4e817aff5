"""Batch normalisation in NumPy, on a ``(N, C, L)`` view of the input (``L`` = H*W for BatchNorm2D, 1
for BatchNorm1D): the per-channel statistics, the per-channel affine map (with an optional ReLU) and
the backward pass.

Normalising is ``(x - mean) * scale + bias`` per channel, ``scale = weight / sqrt(var + eps)``:
subtracting the mean first keeps a constant channel at exactly ``bias`` and loses no precision when
the mean is large against the spread (``x * scale + shift`` would; that form is for folding into a
convolution, :func:`fastcnn.functional.batch_norm_scale_shift`).
"""
from __future__ import annotations

import numpy as np


def batch_norm_stats(x):
    """Per-channel mean and biased variance of ``x`` ``(N, C, L)`` over N and L, in ``x``'s dtype."""
    return x.mean(axis=(0, 2)), x.var(axis=(0, 2))


def batch_norm_apply(x, mean, scale, bias, relu):
    """``(x - mean[c]) * scale[c] + bias[c]`` for ``x`` ``(N, C, L)``, then ``max(., 0)`` if ``relu``."""
    y = x - mean[:, None]
    y *= scale[:, None]
    y += bias[:, None]
    if relu:
        np.maximum(y, 0, out=y)
    return y


def batch_norm_backward(grad, x, mean, inv_std, scale, y):
    """Gradients of training-mode batch norm (statistics from the batch), ``(N, C, L)`` arrays.

    ``y`` is the op's output when a ReLU followed inside the op (its gradient is then ``grad`` where
    ``y > 0``), else None. Returns ``(grad_x, grad_weight, grad_bias)``.
    """
    if y is not None:
        grad = np.where(y > 0, grad, 0).astype(grad.dtype, copy=False)
    count = grad.shape[0] * grad.shape[2]
    x_hat = (x - mean[:, None]) * inv_std[:, None]
    grad_bias = grad.sum(axis=(0, 2))
    grad_weight = (grad * x_hat).sum(axis=(0, 2))
    k = scale / count
    gx = grad * scale[:, None]
    gx -= k[:, None] * (grad_bias[:, None] + x_hat * grad_weight[:, None])
    return gx, grad_weight, grad_bias
