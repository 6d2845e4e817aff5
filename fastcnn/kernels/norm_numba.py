"""Batch normalisation as Numba loops, on a ``(N, C, L)`` view of the input (see :mod:`.norm_numpy`
for the op's meaning).

- Statistics: one thread per channel, two passes over the channel's N runs of L values (the sum, then
  the squared deviations from the mean), both accumulated in float64; the channel's data is small
  enough to still be in cache for the second pass, which avoids the cancellation of a one-pass
  ``E[x^2] - E[x]^2``.
- The affine map (and ReLU): one pass, one ``(n, c)`` run per task.
- Folding into the layer before it (inference): one pass over the weight, a channel per task, the
  channel's scale and shift in float64.
- Backward: one thread per channel, two passes: the sums of ``g`` and ``g * x_hat`` (``g`` masked by
  the ReLU's output when the op had one), then the input gradient. ``x_hat`` is recomputed from ``x``
  in both, so the forward pass never writes it. A synchronised batch norm runs the two passes as two
  kernels (``batch_norm_grad_sums``, ``batch_norm_input_grad``), reducing the sums between them.
"""
from __future__ import annotations

import numpy as np

from .jit import kernel_helper, parallel_kernel, prange, sized


def batch_norm_stats(x):
    """Per-channel mean and biased variance of ``x`` ``(N, C, L)`` over N and L, in ``x``'s dtype."""
    return sized(_stats, x.size)(x)


def batch_norm_apply(x, mean, scale, bias, relu):
    """``(x - mean[c]) * scale[c] + bias[c]`` for ``x`` ``(N, C, L)``, then ``max(., 0)`` if ``relu``."""
    return sized(_apply, x.size)(x, mean, scale, bias, relu)


def batch_norm_backward(grad, x, mean, inv_std, scale, y):
    """Gradients of training-mode batch norm; ``y`` is the output of a fused ReLU or None.
    Returns ``(grad_x, grad_weight, grad_bias)``."""
    relu = y is not None
    return sized(_backward, x.size)(grad, x, mean, inv_std, scale, y if relu else grad, relu)


def batch_norm_grad_sums(grad, x, mean, inv_std, y):
    """The first pass of :func:`batch_norm_backward`: ``(grad_weight, grad_bias)``."""
    relu = y is not None
    return sized(_grad_sums, x.size)(grad, x, mean, inv_std, y if relu else grad, relu)


def batch_norm_input_grad(grad, x, mean, inv_std, scale, y, grad_weight, grad_bias):
    """The second pass of :func:`batch_norm_backward`, from the given sums: ``grad_x``."""
    relu = y is not None
    return sized(_input_grad, x.size)(grad, x, mean, inv_std, scale, y if relu else grad, relu, grad_weight, grad_bias)


def fold_batch_norm(weight, bias, gamma, beta, mean, var, eps, weight_out, bias_out):
    """Write ``weight * s`` to ``weight_out`` and ``(bias - mean) * s + beta`` to ``bias_out``, with
    ``s = gamma / sqrt(var + eps)`` a channel (``weight`` (C, K), channels on axis 0), in float64."""
    sized(_fold, weight.size)(weight, bias, gamma, beta, mean, var, eps, weight_out, bias_out)


@parallel_kernel
def _fold(weight, bias, gamma, beta, mean, var, eps, weight_out, bias_out):
    """:func:`fold_batch_norm`: a channel per task."""
    for ch in prange(weight.shape[0]):
        s = np.float64(gamma[ch]) / np.sqrt(np.float64(var[ch]) + eps)
        bias_out[ch] = (np.float64(bias[ch]) - np.float64(mean[ch])) * s + np.float64(beta[ch])
        for k in range(weight.shape[1]):
            weight_out[ch, k] = np.float64(weight[ch, k]) * s


@parallel_kernel
def _stats(x):
    """:func:`batch_norm_stats`: a channel per task."""
    n, c, length = x.shape
    mean, var = np.empty(c, x.dtype), np.empty(c, x.dtype)
    count = n * length
    for ch in prange(c):
        total = 0.0
        for i in range(n):
            for j in range(length):
                total += x[i, ch, j]
        mu = total / count if count else 0.0
        dev = 0.0
        for i in range(n):
            for j in range(length):
                d = x[i, ch, j] - mu
                dev += d * d
        mean[ch] = mu
        var[ch] = dev / count if count else 0.0
    return mean, var


@parallel_kernel
def _apply(x, mean, scale, bias, relu):
    """:func:`batch_norm_apply`: an ``(n, c)`` run per task."""
    n, c, length = x.shape
    y = np.empty_like(x)
    for task in prange(n * c):
        i, ch = task // c, task % c
        mu, s, t = mean[ch], scale[ch], bias[ch]
        if relu:
            for j in range(length):
                v = (x[i, ch, j] - mu) * s + t
                y[i, ch, j] = 0 if v <= 0 else v  # NaN stays NaN, as in ReLU
        else:
            for j in range(length):
                y[i, ch, j] = (x[i, ch, j] - mu) * s + t
    return y


@parallel_kernel
def _backward(grad, x, mean, inv_std, scale, y, relu):
    """:func:`batch_norm_backward`: a channel per task, two passes."""
    c = x.shape[1]
    gx = np.empty_like(x)
    grad_weight, grad_bias = np.empty(c, x.dtype), np.empty(c, x.dtype)
    for ch in prange(c):
        sum_gx, sum_g = _channel_sums(grad, x, y, relu, ch, mean[ch], inv_std[ch])
        grad_weight[ch] = sum_gx
        grad_bias[ch] = sum_g
        _channel_input_grad(gx, grad, x, y, relu, ch, mean[ch], inv_std[ch], scale[ch], sum_gx, sum_g)
    return gx, grad_weight, grad_bias


@parallel_kernel
def _grad_sums(grad, x, mean, inv_std, y, relu):
    """:func:`batch_norm_grad_sums`: a channel per task."""
    c = x.shape[1]
    grad_weight, grad_bias = np.empty(c, x.dtype), np.empty(c, x.dtype)
    for ch in prange(c):
        sum_gx, sum_g = _channel_sums(grad, x, y, relu, ch, mean[ch], inv_std[ch])
        grad_weight[ch] = sum_gx
        grad_bias[ch] = sum_g
    return grad_weight, grad_bias


@parallel_kernel
def _input_grad(grad, x, mean, inv_std, scale, y, relu, grad_weight, grad_bias):
    """:func:`batch_norm_input_grad`: a channel per task."""
    gx = np.empty_like(x)
    for ch in prange(x.shape[1]):
        _channel_input_grad(gx, grad, x, y, relu, ch, mean[ch], inv_std[ch], scale[ch], grad_weight[ch], grad_bias[ch])
    return gx


@kernel_helper
def _channel_sums(grad, x, y, relu, ch, mu, k):
    """Channel ``ch``'s sums of ``g * x_hat`` and ``g`` (``g`` masked by a fused ReLU), in float64."""
    n, _, length = x.shape
    sum_g = 0.0
    sum_gx = 0.0
    for i in range(n):
        for j in range(length):
            g = grad[i, ch, j]
            if relu and not y[i, ch, j] > 0:
                g = 0
            sum_g += g
            sum_gx += g * ((x[i, ch, j] - mu) * k)
    return sum_gx, sum_g


@kernel_helper
def _channel_input_grad(gx, grad, x, y, relu, ch, mu, k, s, sum_gx, sum_g):
    """Write channel ``ch`` of ``gx``: ``s * g - s / count * (sum_g + x_hat * sum_gx)``."""
    n, _, length = x.shape
    count = n * length
    a = s / count if count else 0.0
    b, d = a * sum_g, a * sum_gx
    for i in range(n):
        for j in range(length):
            g = grad[i, ch, j]
            if relu and not y[i, ch, j] > 0:
                g = 0
            gx[i, ch, j] = s * g - (b + ((x[i, ch, j] - mu) * k) * d)
