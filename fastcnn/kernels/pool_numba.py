"""Max and average pooling as ``@njit(parallel=True)`` loops, one (sample, channel) plane per task.

The common max-pool, 2x2 windows with stride 2 and no padding, goes a vector of windows at a time
(see :mod:`._pool_vectors`); other windows go one at a time. Its gradient does too where the target
has AVX-512; on AVX2 it is a plane cleared, then each value added at its index (:func:`unpool_plane`).
"""
from __future__ import annotations

import numpy as np

from .jit import VECTOR_BYTES, kernel_helper, parallel_kernel, planes_per_task, prange, sized
from ._pool_vectors import clear, max_pairs, unpool_pairs
from ._tiles import lanes

_UNPOOL_BY_VECTORS = VECTOR_BYTES == 64  # the 2x2 gradient a vector of windows at a time (AVX-512), else by a
# scatter: on a Zen 3 (AVX2, whose masked vector stores AMD's tables list as microcoded; the cause was not
# isolated) the scatter took 0.22-0.26x the vector code's time on planes of 24x24 and 26x26 (0.51-0.72x
# into the wide layout's rows, whose positions cost a division; 2 threads, one process, interleaved,
# 2026-12-02). AVX-512's masked stores are single instructions; the vector code, written for it, stays
# there (the scatter was not measured on AVX-512).

WINDOWS_2X2 = ((2, 2), (2, 2), (0, 0), (1, 1))  # (kernel, stride, padding, dilation) of the pool the vector kernels serve


def vector_pool(pool, h, w) -> bool:
    """Whether the max-pool ``pool`` (a :class:`~fastcnn._checks.PoolGeometry`) of an ``h`` x ``w`` plane
    is the vector kernels' (2x2 windows, stride 2, no padding or dilation, no ceil-mode window past the edge)."""
    return (pool.kernel, pool.stride, pool.padding, pool.dilation) == WINDOWS_2X2 and pool.out_hw == (h // 2, w // 2)


@kernel_helper
def _first_tap(start, k, d, size):
    """The taps ``[i0, i1)`` of a window starting at ``start`` (taps ``d`` apart) that fall in ``[0, size)``."""
    i0 = 0 if start >= 0 else (d - 1 - start) // d
    return i0, min(k, (size - 1 - start) // d + 1)


@kernel_helper
def _max_pool_plane(plane, kh, kw, sh, sw, ph, pw, dh, dw, y, idx):
    """Any window, padding and dilation: over the in-bounds taps, in row-major order, each value greater
    than the best so far or NaN becomes the best (PyTorch's rule: the first maximum, or the last NaN)."""
    h, w = plane.shape
    oh, ow = y.shape
    for r in range(oh):
        top = r * sh - ph
        i0, i1 = _first_tap(top, kh, dh, h)
        for q in range(ow):
            left = q * sw - pw
            j0, j1 = _first_tap(left, kw, dw, w)
            best, at = plane[top + i0 * dh, left + j0 * dw], (top + i0 * dh) * w + left + j0 * dw
            for i in range(i0, i1):
                for j in range(j0, j1):
                    a, b = top + i * dh, left + j * dw
                    v = plane[a, b]
                    take = v > best or v != v
                    best = v if take else best
                    at = a * w + b if take else at
            y[r, q] = best
            idx[r, q] = at


@kernel_helper
def pool_rows(x, at, step, w, bias, relu, y, out, idx, rows, cols):
    """2x2, stride-2 max-pooling of one plane, a vector of windows at a time: ``rows`` by ``cols``
    windows from ``x[at:]``, whose rows are ``step`` apart, to ``y[out:]`` (through a ReLU with
    ``relu``) and ``idx[out:]`` (positions counted in rows of ``w``; None: no argmax). See
    :func:`._pool_vectors.max_pairs`."""
    if relu:  # each case compiled with its flag a constant
        _pool_rows(x, at, step, w, bias, True, y, out, idx, rows, cols)
    else:
        _pool_rows(x, at, step, w, bias, False, y, out, idx, rows, cols)


@kernel_helper
def _pool_rows(x, at, step, w, bias, relu, y, out, idx, rows, cols):
    """:func:`pool_rows`: the whole vectors of windows of each row, with a constant count (so constant
    lane masks: plain loads and stores), then the rest. (One process, interleaved, AVX2 on a Zen 3:
    this and the 32-bit lane masks of :meth:`._tiles._Vectors.below` together took LeNet's first fused
    conv, ReLU and pool to 0.83-0.90x the time at batch 64 and 256, its second to 0.92-0.97x.)"""
    n = lanes(x.itemsize)
    whole = cols - cols % n
    for r in range(rows):
        for q in range(0, whole, n):
            _pool_windows(x, at, step, w, bias, relu, y, out, idx, cols, r, q, n)
        if whole < cols:
            _pool_windows(x, at, step, w, bias, relu, y, out, idx, cols, r, whole, cols - whole)


@kernel_helper
def _pool_windows(x, at, step, w, bias, relu, y, out, idx, cols, r, q, count):
    """:func:`._pool_vectors.max_pairs` on ``count`` windows from window ``q`` of window row ``r``."""
    max_pairs(x, at + 2 * r * step + 2 * q, step, w, bias, relu, y, out + r * cols + q, idx,
              2 * r * w + 2 * q, count)


@parallel_kernel
def _max_pool_2x2(x, oh, ow):
    """2x2 windows with stride 2 and no padding (see :func:`pool_rows`); ``x`` C-contiguous."""
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    x_flat, y_flat, idx_flat = x.reshape(x.size), y.reshape(y.size), idx.reshape(idx.size)
    for plane in prange(n * c):
        pool_rows(x_flat, plane * h * w, w, w, None, False, y_flat, plane * oh * ow, idx_flat, oh, ow)
    return y, idx


@parallel_kernel
def _max_pool_any(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    n, c = x.shape[0], x.shape[1]
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for task in prange(n * c):
        s, ch = task // c, task % c
        _max_pool_plane(x[s, ch], kh, kw, sh, sw, ph, pw, dh, dw, y[s, ch], idx[s, ch])
    return y, idx


def max_pool2d_forward(x, pool):
    """Max-pool ``x`` (N, C, H, W) as ``pool`` (a :class:`~fastcnn._checks.PoolGeometry`) says; return
    ``(y, argmax)``, argmax a flat index into each input plane.

    Padding is ``-inf`` and never chosen; ties go to the first maximum in row-major window order; the
    last NaN in a window wins (as PyTorch). (The case is picked here, in Python, so only the kernel used compiles.)
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = pool.kernel, pool.stride, pool.padding, pool.dilation, pool.out_hw
    if vector_pool(pool, x.shape[2], x.shape[3]):
        return sized(_max_pool_2x2, x.size)(np.ascontiguousarray(x), oh, ow)
    work = x.shape[0] * x.shape[1] * oh * ow * kh * kw
    return sized(_max_pool_any, work)(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


def unpools_by_blocks(rows, cols, h, w) -> bool:
    """Whether a ``rows`` x ``cols`` pooled output of an ``h`` x ``w`` plane has the shape of a 2x2,
    stride-2 pool's, for which :func:`unpool_plane` is the fast gradient."""
    return 2 * rows <= h < 2 * rows + 2 and 2 * cols <= w < 2 * cols + 2


def max_pool2d_backward(gy, argmax, h, w):
    """Scatter ``gy`` (N, C, OH, OW) to the input positions named by ``argmax``; sums overlaps."""
    if unpools_by_blocks(gy.shape[2], gy.shape[3], h, w):
        return sized(_max_unpool_2x2, gy.size * 4)(np.ascontiguousarray(gy), np.ascontiguousarray(argmax), h, w)
    return sized(_max_pool_backward, gy.shape[0] * gy.shape[1] * h * w)(gy, argmax, h, w)


@kernel_helper
def _scatter(grad, g, at, w, step, gate, gated):
    """``grad[:] = 0``, then ``g[p]`` added at position ``at[p]`` of a plane of width ``w`` whose rows
    are ``step`` apart in ``grad``, for every ``p`` (with ``gated``, only where ``gate[p] > 0``)."""
    for p in range(grad.size):
        grad[p] = 0
    for p in range(g.size):
        if gated and not gate[p] > 0:
            continue
        if step == w:
            grad[at[p]] += g[p]
        else:
            grad[at[p] // w * step + at[p] % w] += g[p]


@kernel_helper
def unpool_plane(g, at, idx, w, gate, gated, grad, to, step, size, rows, cols):
    """The gradient of :func:`pool_rows` for one plane: ``rows`` by ``cols`` windows of ``g[at:]``, to
    the positions ``idx[at:]`` names (counted in rows of ``w``), in ``grad[to : to + size]`` with rows
    ``step`` apart; every other position of it 0. With ``gated``, through the ReLU whose output is
    ``gate[at:]`` first. Each position is written once; a plane with an index outside its window's 2x2
    block (other windows, or indices passed to the public function) is scattered instead, so any
    indices give the right sums. See :func:`._pool_vectors.unpool_pairs`; without AVX-512
    (:data:`_UNPOOL_BY_VECTORS`), the plane is cleared and every value added at its index instead."""
    if not _UNPOOL_BY_VECTORS:
        span = slice(at, at + rows * cols)
        _scatter(grad[to : to + size], g[span], idx[span], w, step, gate[span] if gated else g[span], gated)
        return
    n = lanes(g.itemsize)
    inside = True
    for r in range(rows):
        row = to + 2 * r * step
        for q in range(0, cols, n):
            count = min(n, cols - q)
            width = 2 * count if q + n < cols else min(step - 2 * q, 2 * n)  # the last also clears the row's end
            inside &= unpool_pairs(g, at + r * cols + q, idx, 2 * r * w + 2 * q, w, gate, gated, grad, row + 2 * q,
                                   step, count, width)
        last = 2 * ((cols - 1) // n * n) + 2 * n  # past what the last call cleared: wide rows' scratch columns
        if last < step:
            clear(grad, row + last, step - last)
            clear(grad, row + step + last, step - last)
    clear(grad, to + 2 * rows * step, size - 2 * rows * step)  # an odd height's last row, and any scratch rows
    if not inside:
        span = slice(at, at + rows * cols)
        _scatter(grad[to : to + size], g[span], idx[span], w, step, gate[span] if gated else g[span], gated)


@parallel_kernel
def _max_pool_backward(gy, argmax, h, w):
    """:func:`max_pool2d_backward`, one input plane per task."""
    n, c, oh, ow = gy.shape
    grad = np.empty((n, c, h, w), dtype=gy.dtype)
    for task in prange(n * c):
        s, ch = task // c, task % c
        g = gy[s, ch].reshape(oh * ow)
        _scatter(grad[s, ch].reshape(h * w), g, argmax[s, ch].reshape(oh * ow), w, w, g, False)
    return grad


@parallel_kernel
def _max_unpool_2x2(gy, argmax, h, w):
    """:func:`max_pool2d_backward` for the shapes of :func:`unpools_by_blocks`, a plane per task (see
    :func:`unpool_plane`)."""
    n, c, oh, ow = gy.shape
    grad = np.empty((n, c, h, w), dtype=gy.dtype)
    g_flat, idx_flat, grad_flat = gy.reshape(gy.size), argmax.reshape(argmax.size), grad.reshape(grad.size)
    for plane in prange(n * c):
        unpool_plane(g_flat, plane * oh * ow, idx_flat, w, g_flat, False, grad_flat, plane * h * w, w, h * w, oh, ow)
    return grad


def avg_pool2d_forward(xp, pool, scale, out=None):
    """Average-pool a zero-padded input with the windows of ``pool`` (a :class:`~fastcnn._checks.PoolGeometry`):
    each window's sum times ``scale`` (OH, OW), 1 / its divisor; into ``out`` (C-contiguous, the
    output's shape) if given."""
    (oh, ow), (kh, kw) = pool.out_hw, pool.kernel
    y = np.empty(xp.shape[:2] + (oh, ow), dtype=xp.dtype) if out is None else out
    if _whole_plane(xp.shape, pool):  # one window, the whole plane: a sum per plane (3x faster on 8x8 planes)
        return _scaled_plane_sums(xp, y, scale[0, 0])
    per_task = planes_per_task(xp.shape[0] * xp.shape[1])
    return sized(_avg_pool, xp.shape[0] * xp.shape[1] * oh * ow * kh * kw)(xp, kh, kw, *pool.stride, scale, y, per_task)


def avg_pool2d_backward(gy, padded_shape, pool, scale):
    """Gradient of :func:`avg_pool2d_forward` with respect to the padded input."""
    if _whole_plane(padded_shape, pool):
        return _filled_planes(gy, padded_shape, scale[0, 0])
    per_task = planes_per_task(gy.shape[0] * gy.shape[1])
    return sized(_avg_unpool, gy.size * pool.kernel[0] * pool.kernel[1])(gy, padded_shape, *pool.kernel, *pool.stride,
                                                                          scale, per_task)


def _whole_plane(padded_shape: tuple, pool) -> bool:
    """Whether the pool's one window is the whole (padded) plane: global pooling, as a net's last
    ``AvgPool2D(8)`` on 8x8 planes is."""
    return pool.out_hw == (1, 1) and pool.kernel == tuple(padded_shape[2:])


@parallel_kernel
def _avg_pool(xp, kh, kw, sh, sw, scale, y, per_task):
    """:func:`avg_pool2d_forward` into ``y``, ``per_task`` (sample, channel) planes per task.
    A window's sum is the sum of its columns' sums: a row of column sums over the plane's whole width
    at a time (a vector loop), then the ``kw`` of each window (2x2 windows with stride 2, the common
    pool, in loops of constant stride, which vectorise). The sums are in the input's dtype, as PyTorch's
    and the NumPy kernel's (float64 sums were 1.2-1.5x slower)."""
    n, c, oh, ow = y.shape
    wp, planes = xp.shape[3], n * c
    for task in prange(-(-planes // per_task)):
        columns = np.empty(wp, dtype=xp.dtype)
        for plane in range(task * per_task, min(planes, (task + 1) * per_task)):
            src, out = xp[plane // c, plane % c], y[plane // c, plane % c]
            for r in range(oh):
                first = src[r * sh]
                if kh == 2:
                    second = src[r * sh + 1]
                    for k in range(wp):
                        columns[k] = first[k] + second[k]
                else:
                    for k in range(wp):
                        columns[k] = first[k]
                    for i in range(1, kh):
                        row = src[r * sh + i]
                        for k in range(wp):
                            columns[k] += row[k]
                cells, shares = out[r], scale[r]
                if kw == 2 and sw == 2:
                    for q in range(ow):
                        cells[q] = (columns[2 * q] + columns[2 * q + 1]) * shares[q]
                else:
                    for q in range(ow):
                        acc = columns[q * sw]
                        for j in range(1, kw):
                            acc += columns[q * sw + j]
                        cells[q] = acc * shares[q]
    return y


@parallel_kernel
def _avg_unpool(gy, padded_shape, kh, kw, sh, sw, scale, per_task):
    """:func:`avg_pool2d_backward`, ``per_task`` (sample, channel) planes per task: each task
    zeroes its own planes (in cache, in parallel; not a serial pass over fresh memory first), then, for
    each row of windows, spreads their shares over a row of the plane's width and adds that row to each
    of the ``kh`` rows the windows cover (vector loops over the width; 2x2 windows with stride 2 in loops
    of constant stride)."""
    n, c, oh, ow = gy.shape
    wp, planes = padded_shape[3], n * c
    grad_xp = np.empty(padded_shape, dtype=gy.dtype)
    plane_size = padded_shape[2] * wp
    flat = grad_xp.reshape(grad_xp.size)
    for task in prange(-(-planes // per_task)):
        spread = np.empty(wp, dtype=gy.dtype)
        for plane in range(task * per_task, min(planes, (task + 1) * per_task)):
            s, ch = plane // c, plane % c
            clear(flat, plane * plane_size, plane_size)
            dst = grad_xp[s, ch]
            for r in range(oh):
                grads, shares = gy[s, ch, r], scale[r]
                if kw == 2 and sw == 2:
                    for q in range(ow):
                        g = grads[q] * shares[q]
                        spread[2 * q] = g
                        spread[2 * q + 1] = g
                    for k in range(2 * ow, wp):
                        spread[k] = 0
                else:
                    for k in range(wp):
                        spread[k] = 0
                    for q in range(ow):
                        g = grads[q] * shares[q]
                        for j in range(kw):
                            spread[q * sw + j] += g
                for i in range(kh):
                    row = dst[r * sh + i]
                    for k in range(wp):
                        row[k] += spread[k]
    return grad_xp


def global_avg_pool2d_forward(x, out=None):
    """The mean of every (sample, channel) plane of ``x`` (N, C, H, W, C-contiguous): (N, C), into ``out``
    if given."""
    n, c, h, w = x.shape
    y = np.empty((n, c), dtype=x.dtype) if out is None else out
    return _scaled_plane_sums(x, y, 1 / (h * w))


def global_avg_pool2d_backward(gy, shape):
    """Gradient of :func:`global_avg_pool2d_forward`: every plane of ``shape`` filled with its
    ``gy / (H * W)``."""
    return _filled_planes(gy, shape, 1 / (shape[2] * shape[3]))


def global_max_pool2d_forward(x):
    """The maximum of every plane of ``x`` (N, C, H, W, C-contiguous) and its flat index in the plane,
    (N, C) twice: the first maximum, or the plane's last NaN (PyTorch's rule, as :func:`max_pool2d_forward`)."""
    n, c, h, w = x.shape
    y, idx = np.empty((n, c), dtype=x.dtype), np.empty((n, c), dtype=np.int64)
    sized(_plane_maxima, x.size)(x.reshape(n * c, h * w), y.reshape(n * c), idx.reshape(n * c),
                                 planes_per_task(n * c))
    return y, idx


def global_max_pool2d_backward(gy, argmax, shape):
    """Gradient of :func:`global_max_pool2d_forward`: ``gy`` at each plane's ``argmax``, 0 elsewhere."""
    grad = np.empty(shape, dtype=gy.dtype)
    planes = shape[0] * shape[1]
    sized(_unpool_planes, grad.size)(gy.reshape(planes), argmax.reshape(planes),
                                     grad.reshape(planes, shape[2] * shape[3]))
    return grad


def _scaled_plane_sums(x, y, scale):
    """``y`` (N, C, ...) holding each (sample, channel) plane's sum of ``x`` (N, C, H, W) times ``scale``."""
    n, c, h, w = x.shape
    sized(_plane_sums, x.size)(x.reshape(n * c, h * w), y.reshape(n * c), scale)
    return y


def _filled_planes(gy, shape, scale):
    """An array of ``shape`` (N, C, H, W) whose every plane holds its value of ``gy`` (N, C, ...) times
    ``scale``."""
    grad = np.empty(shape, dtype=gy.dtype)
    planes = shape[0] * shape[1]
    sized(_fill_planes, grad.size)(gy.reshape(planes), grad.reshape(planes, shape[2] * shape[3]), scale)
    return grad


@parallel_kernel
def _plane_sums(x, y, scale):
    """``y[p]`` = the sum of row ``p`` of ``x`` (planes, H * W) times ``scale``: one vector sum each, in
    the input's dtype."""
    for p in prange(x.shape[0]):
        row = x[p]
        acc = row[0]
        for k in range(1, row.size):
            acc += row[k]
        y[p] = acc * scale


@parallel_kernel
def _fill_planes(gy, grad, scale):
    """Every row ``p`` of ``grad`` (planes, H * W) filled with ``gy[p] * scale``."""
    for p in prange(grad.shape[0]):
        share, row = gy[p] * scale, grad[p]
        for k in range(row.size):
            row[k] = share


@parallel_kernel
def _plane_maxima(x, y, idx, per_task):
    """``y[p]``, ``idx[p]``: the maximum of row ``p`` of ``x`` and its index, ``per_task`` rows per task.
    Sixteen lanes keep the greatest value of their columns, where it first is and their last NaN (selects,
    which vectorise), then the lanes and the row's tail are merged (half as fast for 8x8 planes, and 2x as
    fast for 14x14 ones, as a scalar pass finding the maximum and then its first index)."""
    planes, size = x.shape
    body = size - size % 16
    for task in prange(-(-planes // per_task)):
        best = np.empty(16, dtype=x.dtype)
        at = np.empty(16, dtype=np.int32)
        nan_at = np.empty(16, dtype=np.int32)
        for p in range(task * per_task, min(planes, (task + 1) * per_task)):
            row = x[p]
            for j in range(16):
                best[j], at[j], nan_at[j] = row[0], 0, -1
            for k in range(0, body, 16):
                for j in range(16):
                    v = row[k + j]
                    take = v > best[j]
                    best[j] = v if take else best[j]
                    at[j] = k + j if take else at[j]
                    nan_at[j] = k + j if v != v else nan_at[j]
            top, top_at, last_nan = row[0], 0, -1
            for j in range(16):
                if best[j] > top or (best[j] == top and at[j] < top_at):
                    top, top_at = best[j], at[j]
                last_nan = max(last_nan, nan_at[j])
            for k in range(body, size):
                v = row[k]
                if v > top:
                    top, top_at = v, k
                if v != v:
                    last_nan = k
            first = last_nan if last_nan >= 0 else top_at
            y[p], idx[p] = row[first], first


@parallel_kernel
def _unpool_planes(gy, argmax, grad):
    """Row ``p`` of ``grad`` (planes, H * W): zero, and ``gy[p]`` at ``argmax[p]``."""
    flat, size = grad.reshape(grad.size), grad.shape[1]
    for p in prange(grad.shape[0]):
        clear(flat, p * size, size)
        flat[p * size + argmax[p]] = gy[p]
