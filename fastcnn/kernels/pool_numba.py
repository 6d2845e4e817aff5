"""Max and average pooling as ``@njit(parallel=True)`` loops, one (sample, channel) plane per task.

The common max-pool, 2x2 windows with stride 2 and no padding, goes a vector of windows at a time
(see :mod:`._pool_vectors`); other windows go one at a time.
"""
from __future__ import annotations

import numpy as np

from ._jit import kernel_helper, parallel_kernel, prange, sized
from ._pool_vectors import max_pairs, unpool_pairs
from ._tiles import lanes


@kernel_helper
def _max_pool_plane(plane, kh, kw, sh, sw, ph, pw, y, idx):
    """Any window and padding: the maximum over the in-bounds part, then the first position holding it."""
    h, w = plane.shape
    oh, ow = y.shape
    for r in range(oh):
        r0, r1 = max(r * sh - ph, 0), min(r * sh - ph + kh, h)
        for q in range(ow):
            q0, q1 = max(q * sw - pw, 0), min(q * sw - pw + kw, w)
            best = plane[r0, q0]
            for i in range(r0, r1):
                for j in range(q0, q1):
                    v = plane[i, j]
                    best = v if (v > best or v != v) and best == best else best
            at = -1
            for i in range(r0, r1):
                for j in range(q0, q1):
                    v = plane[i, j]
                    hit = np.int64(at < 0 and (v == best or (v != v and best != best)))
                    at += hit * (i * w + j - at)
            y[r, q] = best
            idx[r, q] = at


@parallel_kernel
def _max_pool_2x2(x, oh, ow):
    """2x2 windows with stride 2 and no padding, a vector of windows at a time; ``x`` C-contiguous."""
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    step = lanes(x.itemsize)
    x_flat, y_flat, idx_flat = x.reshape(x.size), y.reshape(y.size), idx.reshape(idx.size)
    for plane in prange(n * c):
        for r in range(oh):
            for q in range(0, ow, step):
                corner = 2 * r * w + 2 * q
                max_pairs(x_flat, plane * h * w + corner, w, y_flat, (plane * oh + r) * ow + q, idx_flat, corner,
                          min(step, ow - q))
    return y, idx


@parallel_kernel
def _max_pool_any(x, kh, kw, sh, sw, ph, pw, oh, ow):
    n, c = x.shape[0], x.shape[1]
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for task in prange(n * c):
        s, ch = task // c, task % c
        _max_pool_plane(x[s, ch], kh, kw, sh, sw, ph, pw, y[s, ch], idx[s, ch])
    return y, idx


def max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """Max-pool ``x`` (N, C, H, W); return ``(y, argmax)``, argmax a flat index into each input plane.

    Padding is ``-inf`` and never chosen; ties go to the first maximum in row-major window order; the
    first NaN in a window wins. (The case is picked here, in Python, so only the kernel used compiles.)
    """
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        return sized(_max_pool_2x2, x.size)(np.ascontiguousarray(x), oh, ow)
    return sized(_max_pool_any, x.shape[0] * x.shape[1] * oh * ow * kh * kw)(x, kh, kw, sh, sw, ph, pw, oh, ow)


def max_pool2d_backward(gy, argmax, h, w):
    """Scatter ``gy`` (N, C, OH, OW) to the input positions named by ``argmax``; sums overlaps."""
    if 2 * gy.shape[2] <= h < 2 * gy.shape[2] + 2 and 2 * gy.shape[3] <= w < 2 * gy.shape[3] + 2:  # as 2x2, stride 2
        return sized(_max_unpool_2x2, gy.size * 4)(np.ascontiguousarray(gy), np.ascontiguousarray(argmax), h, w)
    return sized(_max_pool_backward, gy.shape[0] * gy.shape[1] * h * w)(gy, argmax, h, w)


@kernel_helper
def _scatter(flat, g, at):
    """``flat[:] = 0``, then ``flat[at[p]] += g[p]`` for every ``p``."""
    for p in range(flat.size):
        flat[p] = 0
    for p in range(g.size):
        flat[at[p]] += g[p]


@parallel_kernel
def _max_pool_backward(gy, argmax, h, w):
    """:func:`max_pool2d_backward`, one input plane per task."""
    n, c, oh, ow = gy.shape
    grad = np.empty((n, c, h, w), dtype=gy.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        _scatter(grad[s, ch].reshape(h * w), gy[s, ch].reshape(oh * ow), argmax[s, ch].reshape(oh * ow))
    return grad


@parallel_kernel
def _max_unpool_2x2(gy, argmax, h, w):
    """:func:`max_pool2d_backward` when window ``(r, q)`` picked from the 2x2 block at ``(2r, 2q)``, as
    in a 2x2, stride-2 pool: a vector of windows at a time, each input position written once, with no
    zeroing pass. A plane with an index outside its block (other windows, or indices passed to the
    public function) is scattered instead, so any indices give the right sums."""
    n, c, oh, ow = gy.shape
    grad = np.empty((n, c, h, w), dtype=gy.dtype)
    step = lanes(gy.itemsize)
    g_flat, idx_flat, grad_flat = gy.reshape(gy.size), argmax.reshape(argmax.size), grad.reshape(grad.size)
    for plane in prange(n * c):
        inside = True
        start = plane * h * w
        for r in range(oh):
            for q in range(0, ow, step):
                corner = 2 * r * w + 2 * q
                inside &= unpool_pairs(g_flat, (plane * oh + r) * ow + q, idx_flat, corner, w, grad_flat,
                                       start + corner, min(step, ow - q))
            for col in range(2 * ow, w):  # an odd width's last column
                grad_flat[start + 2 * r * w + col] = 0
                grad_flat[start + (2 * r + 1) * w + col] = 0
        for p in range(start + 2 * oh * w, start + h * w):  # an odd height's last row
            grad_flat[p] = 0
        if not inside:
            at = plane * oh * ow
            _scatter(grad_flat[start : start + h * w], g_flat[at : at + oh * ow], idx_flat[at : at + oh * ow])
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
