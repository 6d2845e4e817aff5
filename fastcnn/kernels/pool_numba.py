"""Max and average pooling as ``@njit(parallel=True)`` loops, one (sample, channel) plane per task."""
from __future__ import annotations

import numpy as np

from ._jit import kernel_helper, parallel_kernel, prange, sized


@kernel_helper
def _first_max_2x2(a, b, c, d, w):
    """Value and in-window offset (0, 1, w, w + 1) of the first maximum of a 2x2 window ``[[a, b], [c, d]]``.

    Written without data-dependent branches (equality flags times offsets): post-ReLU data is full of
    ties that make a branchy argmax mispredict on almost every window.
    """
    if a != a or b != b or c != c or d != d:  # rare: the first NaN wins
        if a != a:
            return a, 0
        if b != b:
            return b, 1
        if c != c:
            return c, w
        return d, w + 1
    best = max(max(a, b), max(c, d))
    ea, eb, ec = np.int64(a == best), np.int64(b == best), np.int64(c == best)
    return best, (1 - ea) * (eb + (1 - eb) * (w + 1 - ec))


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
    """The common case, 2x2 windows with stride 2 and no padding, in straight-line code."""
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for task in prange(n * c):
        s, ch = task // c, task % c
        for r in range(oh):
            top, bottom = x[s, ch, 2 * r], x[s, ch, 2 * r + 1]
            yr, ir = y[s, ch, r], idx[s, ch, r]
            for q in range(ow):
                best, at = _first_max_2x2(top[2 * q], top[2 * q + 1], bottom[2 * q], bottom[2 * q + 1], w)
                yr[q] = best
                ir[q] = 2 * r * w + 2 * q + at
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
        return sized(_max_pool_2x2, x.size)(x, oh, ow)
    return sized(_max_pool_any, x.shape[0] * x.shape[1] * oh * ow * kh * kw)(x, kh, kw, sh, sw, ph, pw, oh, ow)


def max_pool2d_backward(gy, argmax, h, w):
    """Scatter ``gy`` (N, C, OH, OW) to the input positions named by ``argmax``; sums overlaps."""
    return sized(_max_pool_backward, gy.shape[0] * gy.shape[1] * h * w)(gy, argmax, h, w)


@parallel_kernel
def _max_pool_backward(gy, argmax, h, w):
    """:func:`max_pool2d_backward`, one input plane per task."""
    n, c, oh, ow = gy.shape
    grad = np.empty((n, c, h, w), dtype=gy.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        flat = grad[s, ch].reshape(h * w)
        flat[:] = 0
        g, at = gy[s, ch].reshape(oh * ow), argmax[s, ch].reshape(oh * ow)
        for p in range(oh * ow):
            flat[at[p]] += g[p]
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
