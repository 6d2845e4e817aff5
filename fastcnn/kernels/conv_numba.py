"""Conv2D as direct ``@njit(parallel=True)`` loops.

Every parallel loop writes a disjoint slice of its output, so there are no races and the result does
not depend on the thread count: the forward pass and grad_x run over (sample, channel) planes, the
weight gradient over (out-channel, in-channel) pairs, each summing over the whole batch by itself.
"""
from __future__ import annotations

import numpy as np

from ._jit import parallel_kernel, prange


@parallel_kernel
def conv2d_forward(xp, w, b, sh, sw, dh, dw, oh, ow):
    """``y = conv(xp, w) + b`` for a padded input ``xp`` (N, C, Hp, Wp) and weight (C_out, C, kH, kW)."""
    n, c_in = xp.shape[0], xp.shape[1]
    c_out, _, kh, kw = w.shape
    y = np.empty((n, c_out, oh, ow), dtype=xp.dtype)
    for task in prange(n * c_out):
        s, co = task // c_out, task % c_out
        out = y[s, co]
        out[:, :] = b[co]
        for ci in range(c_in):
            plane = xp[s, ci]
            for i in range(kh):
                for j in range(kw):
                    wv = w[co, ci, i, j]
                    for r in range(oh):
                        row = plane[r * sh + i * dh]
                        for q in range(ow):
                            out[r, q] += wv * row[q * sw + j * dw]
    return y


@parallel_kernel
def conv2d_backward(gy, xp, w, sh, sw, dh, dw):
    """Gradients ``(grad_xp, grad_w)`` of a conv with respect to the padded input and the weight."""
    n, c_in = xp.shape[0], xp.shape[1]
    c_out, _, kh, kw = w.shape
    oh, ow = gy.shape[2], gy.shape[3]
    grad_w = np.empty_like(w)
    for task in prange(c_out * c_in):
        co, ci = task // c_in, task % c_in
        for i in range(kh):
            for j in range(kw):
                acc = 0.0
                for s in range(n):
                    g = gy[s, co]
                    plane = xp[s, ci]
                    for r in range(oh):
                        row = plane[r * sh + i * dh]
                        for q in range(ow):
                            acc += g[r, q] * row[q * sw + j * dw]
                grad_w[co, ci, i, j] = acc
    grad_xp = np.zeros_like(xp)
    for task in prange(n * c_in):
        s, ci = task // c_in, task % c_in
        out = grad_xp[s, ci]
        for co in range(c_out):
            g = gy[s, co]
            for i in range(kh):
                for j in range(kw):
                    wv = w[co, ci, i, j]
                    for r in range(oh):
                        row = out[r * sh + i * dh]
                        for q in range(ow):
                            row[q * sw + j * dw] += wv * g[r, q]
    return grad_xp, grad_w
