"""Max and average pooling as ``@njit(parallel=True)`` loops, one (sample, channel) plane per task."""
from __future__ import annotations

import numpy as np

from ._jit import parallel_kernel, prange


@parallel_kernel
def max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Max-pool ``x`` (N, C, H, W); return ``(y, argmax)``, argmax a flat index into each input plane.

    Padding is ``-inf`` and never chosen; ties go to the first maximum in row-major window order; the
    first NaN in a window wins.
    """
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for task in prange(n * c):
        s, ch = task // c, task % c
        plane = x[s, ch]
        for r in range(oh):
            r0 = r * sh - ph
            for q in range(ow):
                q0 = q * sw - pw
                best = plane[max(r0, 0), max(q0, 0)]
                best_at = max(r0, 0) * w + max(q0, 0)
                for i in range(max(r0, 0), min(r0 + kh, h)):
                    for j in range(max(q0, 0), min(q0 + kw, w)):
                        v = plane[i, j]
                        if v > best or (v != v and best == best):
                            best = v
                            best_at = i * w + j
                y[s, ch, r, q] = best
                idx[s, ch, r, q] = best_at
    return y, idx


@parallel_kernel
def max_pool2d_backward(gy, argmax, h, w):
    """Scatter ``gy`` (N, C, OH, OW) to the input positions named by ``argmax``; sums overlaps."""
    n, c, oh, ow = gy.shape
    grad = np.zeros((n, c, h, w), dtype=gy.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        flat = grad[s, ch].reshape(h * w)
        for r in range(oh):
            for q in range(ow):
                flat[argmax[s, ch, r, q]] += gy[s, ch, r, q]
    return grad


@parallel_kernel
def avg_pool2d_forward(xp, kh, kw, sh, sw, oh, ow):
    """Average-pool a zero-padded input; the divisor is always ``kH * kW`` (padding counts)."""
    n, c = xp.shape[0], xp.shape[1]
    y = np.empty((n, c, oh, ow), dtype=xp.dtype)
    scale = 1.0 / (kh * kw)
    for task in prange(n * c):
        s, ch = task // c, task % c
        plane = xp[s, ch]
        for r in range(oh):
            for q in range(ow):
                acc = 0.0
                for i in range(kh):
                    for j in range(kw):
                        acc += plane[r * sh + i, q * sw + j]
                y[s, ch, r, q] = acc * scale
    return y


@parallel_kernel
def avg_pool2d_backward(gy, padded_shape, kh, kw, sh, sw):
    """Gradient of :func:`avg_pool2d_forward` with respect to the padded input."""
    n, c, oh, ow = gy.shape
    grad_xp = np.zeros(padded_shape, dtype=gy.dtype)
    scale = 1.0 / (kh * kw)
    for task in prange(n * c):
        s, ch = task // c, task % c
        plane = grad_xp[s, ch]
        for r in range(oh):
            for q in range(ow):
                g = gy[s, ch, r, q] * scale
                for i in range(kh):
                    for j in range(kw):
                        plane[r * sh + i, q * sw + j] += g
    return grad_xp
