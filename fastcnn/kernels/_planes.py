"""Image planes in the wide layout, for the depthwise convolution's Numba kernels.

A plane of ``h`` rows stored ``width`` values apart ("wide" when ``width`` exceeds the row) turns a 2-D
stride-1 correlation into 1-D ones: output ``p = r * width + q`` of tap ``(i, j)`` reads the source at
``p + i * width + j``, so each tap is one long run over the whole plane, which LLVM vectorises,
instead of ``h`` short rows (26 values: one AVX-512 vector and a scalar tail). The ``width - w``
columns past each row come out as garbage and are dropped (:func:`narrow`).

A strided correlation becomes a stride-1 one over the source's *phases*: phase ``(a, b)`` of a plane
is ``plane[a::sh, b::sw]``, and a tap at row ``i * dh`` reads phase ``(i * dh % sh, ...)`` shifted by
``i * dh // sh`` rows (:func:`split_phases`, :func:`forward_offsets`). The input gradient, a
correlation with the flipped kernel, is computed per phase of its *output* instead
(:func:`backward_offsets`), so no tap multiplies a zero inserted between strided samples.

Small planes make short runs, which spend their time in each loop's set-up and scalar tail, so the
kernels stack the planes of several samples one above the other (:func:`stack_size`), each with its
own zero border: a tap's run then spans them all, and the rows between two planes' outputs are
garbage like the columns past each row.

Every helper asserts the bounds of what it reads and writes under ``jit.CHECK_BOUNDS``.
"""
from __future__ import annotations

import numpy as np

from .jit import CHECK_BOUNDS, kernel_helper

STACK_VALUES = 4096  # 16 KiB of float32: a stack and the run it makes fit an L1 cache together


@kernel_helper
def phase_size(n, step):
    """Values in the longest phase of ``n`` values taken ``step`` apart: ``ceil(n / step)``."""
    return -(-n // step)


@kernel_helper
def forward_offsets(kh, kw, sh, sw, dh, dw, h2, w2):
    """For tap ``(i, j)`` (at ``i * kw + j``), where the source of its output ``(0, 0)`` lies in the
    phases of :func:`split_phases`: ``h2`` by ``w2`` values per phase, ``sh * sw`` phases."""
    offsets = np.empty(kh * kw, np.int64)
    for i in range(kh):
        a, u = (i * dh) % sh, (i * dh) // sh
        for j in range(kw):
            b, v = (j * dw) % sw, (j * dw) // sw
            offsets[i * kw + j] = ((a * sw + b) * h2 + u) * w2 + v
    return offsets


@kernel_helper
def backward_offsets(kh, kw, sh, sw, dh, dw, width):
    """The taps of the input gradient, grouped by the phase of that gradient they write.

    The output gradient sits in a zero-bordered plane ``width`` values wide with ``(kh - 1) * dh // sh``
    rows above and ``(kw - 1) * dw // sw`` columns left of it (:func:`place`). Phase ``(a, b)`` of the
    input gradient (``f = a * sw + b``) takes the taps ``taps[starts[f]:starts[f + 1]]`` (indices
    ``i * kw + j``), tap ``t`` of them reading that plane at ``offsets[t]`` for its output ``(0, 0)``.

    Returns
    -------
    taps, offsets : int64 arrays of ``kh * kw``
    starts : int64 array of ``sh * sw + 1``
    """
    top, left = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    taps = np.empty(kh * kw, np.int64)
    offsets = np.empty(kh * kw, np.int64)
    starts = np.empty(sh * sw + 1, np.int64)
    k = 0
    for f in range(sh * sw):
        a, b = f // sw, f % sw
        starts[f] = k
        for i in range(kh):
            for j in range(kw):
                if (i * dh - a) % sh == 0 and (j * dw - b) % sw == 0:
                    taps[k] = i * kw + j
                    offsets[k] = (top - (i * dh - a) // sh) * width + left - (j * dw - b) // sw
                    k += 1
    starts[sh * sw] = k
    return taps, offsets, starts


@kernel_helper
def split_phases(out, plane, sh, sw, h2, w2, top, left, phase_stride):
    """Write the ``sh * sw`` phases of ``plane``, padded with ``top`` zero rows and ``left`` zero
    columns, into the flat ``out``: phase ``(a, b)`` as ``h2`` rows ``w2`` apart from
    ``(a * sw + b) * phase_stride``. Only the plane's own values are written: the padding positions
    keep what ``out`` holds (zeros, from its allocation)."""
    h, w = plane.shape
    if CHECK_BOUNDS:
        assert (sh * sw - 1) * phase_stride + h2 * w2 <= out.size, "split_phases: out is too short"
    for f in range(sh * sw):
        a, b = f // sw, f % sw
        r0, r1 = first_inside(top - a, sh), min(h2, phase_size(h + top - a, sh))
        q0, q1 = first_inside(left - b, sw), min(w2, phase_size(w + left - b, sw))
        for r in range(r0, r1):
            row, dst = plane[r * sh + a - top], out[f * phase_stride + r * w2 :]
            run = row[q0 * sw + b - left :]
            if sw == 1:  # constant steps, which LLVM copies with vectors
                for q in range(q1 - q0):
                    dst[q0 + q] = run[q]
            elif sw == 2:
                for q in range(q1 - q0):
                    dst[q0 + q] = run[2 * q]
            else:
                for q in range(q1 - q0):
                    dst[q0 + q] = run[q * sw]


@kernel_helper
def stack_size(n, values):
    """How many planes of ``values`` values each to stack into one run (at most ``n``): about
    :data:`STACK_VALUES` values, so that a run is long enough to amortise each pass's set-up and tail
    and short enough to stay in the L1/L2 cache."""
    return max(1, min(n, STACK_VALUES // max(1, values)))


@kernel_helper
def first_inside(before, step):
    """The first ``k >= 0`` with ``k * step >= before``: the first sample of a phase past ``before``
    values of padding."""
    return max(0, phase_size(before, step))


@kernel_helper
def place(dst, plane, width, top, left):
    """Write ``plane`` (h, w) into the flat ``dst`` as rows ``width`` apart, its ``(0, 0)`` at row ``top``,
    column ``left``; the rest of ``dst`` is left as it is."""
    h, w = plane.shape
    if CHECK_BOUNDS:
        assert 0 <= left and left + w <= width and 0 <= top and (top + h - 1) * width + left + w <= dst.size, \
            "place: the plane does not fit"
    for r in range(h):
        row, run = plane[r], dst[(top + r) * width + left :]
        for q in range(w):  # a loop, not a slice assignment: five times faster for short rows
            run[q] = row[q]


@kernel_helper
def narrow(dst, src, width, row_step, col_step, row0, col0):
    """``dst[row0 + r * row_step, col0 + q * col_step] = src[r * width + q]`` for every ``q < width``
    and ``r`` that give a position inside ``dst`` (2-D; ``row0`` and ``col0`` may be negative): a wide
    plane's values back to their rows, or one phase of a padded plane into the plane without its
    padding."""
    h, w = dst.shape
    r0, r1 = first_inside(-row0, row_step), phase_size(h - row0, row_step)
    q0, q1 = first_inside(-col0, col_step), min(width, phase_size(w - col0, col_step))
    if CHECK_BOUNDS:
        assert r1 <= r0 or q1 <= q0 or (r1 - 1) * width + q1 <= src.size, "narrow: src is too short"
    for r in range(r0, r1):
        row, run = dst[row0 + r * row_step], src[r * width : r * width + q1]
        out = row[col0 + q0 * col_step :]
        if col_step == 1:  # constant steps, which LLVM copies with vectors
            for q in range(q1 - q0):
                out[q] = run[q0 + q]
        elif col_step == 2:
            for q in range(q1 - q0):
                out[2 * q] = run[q0 + q]
        else:
            for q in range(q1 - q0):
                out[q * col_step] = run[q0 + q]


@kernel_helper
def gather_taps(acc, src, weights, offsets, keep=None):
    """``acc[p] += sum(weights[t] * src[offsets[t] + p] for t)`` for every ``p < len(acc)``, three
    taps per pass over ``acc`` so each of its loads and stores carries three multiply-adds; with the
    boolean array ``keep``, only where ``keep[p]`` (a select: a value left out is never multiplied in,
    so an inf there cannot make NaN)."""
    n = acc.shape[0]
    if CHECK_BOUNDS:
        check_offsets(src, offsets, n)
        assert keep is None or keep.shape[0] >= n, "gather_taps: keep is too short"
    zero = acc.dtype.type(0)
    t = 0
    while t + 3 <= offsets.shape[0]:
        w0, w1, w2 = weights[t], weights[t + 1], weights[t + 2]
        s0, s1, s2 = src[offsets[t] :], src[offsets[t + 1] :], src[offsets[t + 2] :]
        if keep is None:
            for p in range(n):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p]
        else:
            for p in range(n):
                acc[p] += (w0 * s0[p] + w1 * s1[p] + w2 * s2[p]) if keep[p] else zero
        t += 3
    while t < offsets.shape[0]:
        w0, s0 = weights[t], src[offsets[t] :]
        if keep is None:
            for p in range(n):
                acc[p] += w0 * s0[p]
        else:
            for p in range(n):
                acc[p] += w0 * s0[p] if keep[p] else zero
        t += 1


@kernel_helper
def dot_taps(out, g, src, offsets, keep=None):
    """``out[t] += sum(g[p] * src[offsets[t] + p] for p < len(g))`` for every tap ``t``, three taps per
    pass so each load of ``g`` feeds three sums (kept in ``g``'s dtype, added to ``out``'s); with the
    boolean array ``keep``, only the ``p`` where ``keep[p]`` (selected, as in :func:`gather_taps`)."""
    n = g.shape[0]
    if CHECK_BOUNDS:
        check_offsets(src, offsets, n)
        assert out.shape[0] >= offsets.shape[0], "dot_taps: out is too short"
        assert keep is None or keep.shape[0] >= n, "dot_taps: keep is too short"
    zero = g.dtype.type(0)
    t = 0
    while t + 3 <= offsets.shape[0]:
        s0, s1, s2 = src[offsets[t] :], src[offsets[t + 1] :], src[offsets[t + 2] :]
        d0 = d1 = d2 = zero
        if keep is None:
            for p in range(n):
                v = g[p]
                d0 += v * s0[p]
                d1 += v * s1[p]
                d2 += v * s2[p]
        else:
            for p in range(n):
                v, k = g[p], keep[p]
                d0 += v * s0[p] if k else zero
                d1 += v * s1[p] if k else zero
                d2 += v * s2[p] if k else zero
        out[t] += d0
        out[t + 1] += d1
        out[t + 2] += d2
        t += 3
    while t < offsets.shape[0]:
        s0 = src[offsets[t] :]
        d0 = zero
        if keep is None:
            for p in range(n):
                d0 += g[p] * s0[p]
        else:
            for p in range(n):
                d0 += g[p] * s0[p] if keep[p] else zero
        out[t] += d0
        t += 1


@kernel_helper
def check_offsets(src, offsets, n):
    """Assert that a run of ``n`` values from each offset stays inside ``src``."""
    for t in range(offsets.shape[0]):
        assert 0 <= offsets[t] and offsets[t] + n <= src.size, "a run from an offset leaves src"
