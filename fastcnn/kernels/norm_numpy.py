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

from . import elementwise_numpy


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
    grad, x_hat = _masked(grad, y), _normalised(x, mean, inv_std)
    grad_weight, grad_bias = _sums(grad, x_hat)
    return _input_grad(grad, x_hat, scale, grad_weight, grad_bias), grad_weight, grad_bias


def batch_norm_grad_sums(grad, x, mean, inv_std, y):
    """The first half of :func:`batch_norm_backward`: ``(grad_weight, grad_bias)``, the per-channel sums
    of ``grad * x_hat`` and of ``grad``."""
    return _sums(_masked(grad, y), _normalised(x, mean, inv_std))


def batch_norm_input_grad(grad, x, mean, inv_std, scale, y, grad_weight, grad_bias):
    """The second half of :func:`batch_norm_backward`: ``grad_x`` from the given per-channel sums
    ``grad_weight`` and ``grad_bias`` (a synchronised batch norm's, reduced over processes)."""
    return _input_grad(_masked(grad, y), _normalised(x, mean, inv_std), scale, grad_weight, grad_bias)


def _masked(grad, y):
    """``grad`` where the fused ReLU's output ``y`` is positive, 0 elsewhere; ``grad`` if ``y`` is None."""
    return grad if y is None else elementwise_numpy.relu_backward(grad, y)


def _normalised(x, mean, inv_std):
    return (x - mean[:, None]) * inv_std[:, None]


def _sums(grad, x_hat):
    return (grad * x_hat).sum(axis=(0, 2)), grad.sum(axis=(0, 2))


def _input_grad(grad, x_hat, scale, grad_weight, grad_bias):
    """``scale * grad - scale / count * (grad_bias + x_hat * grad_weight)``, count = N * L."""
    k = scale / (grad.shape[0] * grad.shape[2])
    gx = grad * scale[:, None]
    gx -= k[:, None] * (grad_bias[:, None] + x_hat * grad_weight[:, None])
    return gx
