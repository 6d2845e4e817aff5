"""Multiply-add loops over shifted runs, for the dense layer's Numba kernels.

A "tap" is one weight applied to a copy of a flat run shifted by ``j * step``: here one sample of a
dense layer's input (``step`` = the row length). The four-row variants share every load between four
output rows (register blocking), and every helper does three taps per pass (:func:`tap_dots4_by5`
five), so LLVM vectorises each pass into one long loop. (The convolutions use the register tiles of
:mod:`._tiles` instead.)
"""
from __future__ import annotations

from ._jit import kernel_helper


@kernel_helper
def add_taps(acc, src, taps, step):
    """``acc[p] += sum(taps[j] * src[p + j * step] for j)`` for every ``p < len(acc)``.

    Three taps per pass over ``acc``, so each load and store of ``acc`` carries three multiply-adds.
    """
    j = 0
    while j + 3 <= taps.shape[0]:
        a0, a1, a2 = taps[j], taps[j + 1], taps[j + 2]
        s0, s1, s2 = src[j * step :], src[(j + 1) * step :], src[(j + 2) * step :]
        for p in range(acc.shape[0]):
            acc[p] += a0 * s0[p] + a1 * s1[p] + a2 * s2[p]
        j += 3
    while j < taps.shape[0]:
        a, s0 = taps[j], src[j * step :]
        for p in range(acc.shape[0]):
            acc[p] += a * s0[p]
        j += 1


@kernel_helper
def add_taps4(a0, a1, a2, a3, src, taps, step):
    """:func:`add_taps` for four output rows at once, ``taps`` (4, kW): every load of ``src`` feeds
    four rows, which cuts the memory traffic per multiply-add by almost half."""
    j = 0
    while j + 3 <= taps.shape[1]:
        s0, s1, s2 = src[j * step :], src[(j + 1) * step :], src[(j + 2) * step :]
        w00, w01, w02 = taps[0, j], taps[0, j + 1], taps[0, j + 2]
        w10, w11, w12 = taps[1, j], taps[1, j + 1], taps[1, j + 2]
        w20, w21, w22 = taps[2, j], taps[2, j + 1], taps[2, j + 2]
        w30, w31, w32 = taps[3, j], taps[3, j + 1], taps[3, j + 2]
        for p in range(a0.shape[0]):
            x0, x1, x2 = s0[p], s1[p], s2[p]
            a0[p] += w00 * x0 + w01 * x1 + w02 * x2
            a1[p] += w10 * x0 + w11 * x1 + w12 * x2
            a2[p] += w20 * x0 + w21 * x1 + w22 * x2
            a3[p] += w30 * x0 + w31 * x1 + w32 * x2
        j += 3
    while j < taps.shape[1]:
        s0 = src[j * step :]
        w0, w1, w2, w3 = taps[0, j], taps[1, j], taps[2, j], taps[3, j]
        for p in range(a0.shape[0]):
            x0 = s0[p]
            a0[p] += w0 * x0
            a1[p] += w1 * x0
            a2[p] += w2 * x0
            a3[p] += w3 * x0
        j += 1


@kernel_helper
def tap_dots4(out, g0, g1, g2, g3, src, step):
    """``out[o, j] = sum(g_o[p] * src[p + j * step] for p < len(g0))`` for four rows ``g_o`` at once,
    three taps per pass: twelve running sums share each load of ``src``."""
    zero = g0.dtype.type(0)
    j = 0
    while j + 3 <= out.shape[1]:
        s0, s1, s2 = src[j * step :], src[(j + 1) * step :], src[(j + 2) * step :]
        d00 = d01 = d02 = d10 = d11 = d12 = d20 = d21 = d22 = d30 = d31 = d32 = zero
        for p in range(g0.shape[0]):
            x0, x1, x2 = s0[p], s1[p], s2[p]
            d00 += g0[p] * x0
            d01 += g0[p] * x1
            d02 += g0[p] * x2
            d10 += g1[p] * x0
            d11 += g1[p] * x1
            d12 += g1[p] * x2
            d20 += g2[p] * x0
            d21 += g2[p] * x1
            d22 += g2[p] * x2
            d30 += g3[p] * x0
            d31 += g3[p] * x1
            d32 += g3[p] * x2
        out[0, j], out[0, j + 1], out[0, j + 2] = d00, d01, d02
        out[1, j], out[1, j + 1], out[1, j + 2] = d10, d11, d12
        out[2, j], out[2, j + 1], out[2, j + 2] = d20, d21, d22
        out[3, j], out[3, j + 1], out[3, j + 2] = d30, d31, d32
        j += 3
    while j < out.shape[1]:
        s0 = src[j * step :]
        d0 = d1 = d2 = d3 = zero
        for p in range(g0.shape[0]):
            x0 = s0[p]
            d0 += g0[p] * x0
            d1 += g1[p] * x0
            d2 += g2[p] * x0
            d3 += g3[p] * x0
        out[0, j], out[1, j], out[2, j], out[3, j] = d0, d1, d2, d3
        j += 1


@kernel_helper
def tap_dots4_by5(out, g0, g1, g2, g3, src, step):
    """:func:`tap_dots4` with five taps per pass (twenty running sums) while five remain, the rest by
    :func:`tap_dots4`: a dense layer's ten outputs are two passes."""
    zero = g0.dtype.type(0)
    j = 0
    while j + 5 <= out.shape[1]:
        s0, s1, s2, s3, s4 = (src[j * step :], src[(j + 1) * step :], src[(j + 2) * step :],
                              src[(j + 3) * step :], src[(j + 4) * step :])
        d00 = d01 = d02 = d03 = d04 = d10 = d11 = d12 = d13 = d14 = zero
        d20 = d21 = d22 = d23 = d24 = d30 = d31 = d32 = d33 = d34 = zero
        for p in range(g0.shape[0]):
            x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
            a, b, c, d = g0[p], g1[p], g2[p], g3[p]
            d00 += a * x0
            d01 += a * x1
            d02 += a * x2
            d03 += a * x3
            d04 += a * x4
            d10 += b * x0
            d11 += b * x1
            d12 += b * x2
            d13 += b * x3
            d14 += b * x4
            d20 += c * x0
            d21 += c * x1
            d22 += c * x2
            d23 += c * x3
            d24 += c * x4
            d30 += d * x0
            d31 += d * x1
            d32 += d * x2
            d33 += d * x3
            d34 += d * x4
        out[0, j], out[0, j + 1], out[0, j + 2], out[0, j + 3], out[0, j + 4] = d00, d01, d02, d03, d04
        out[1, j], out[1, j + 1], out[1, j + 2], out[1, j + 3], out[1, j + 4] = d10, d11, d12, d13, d14
        out[2, j], out[2, j + 1], out[2, j + 2], out[2, j + 3], out[2, j + 4] = d20, d21, d22, d23, d24
        out[3, j], out[3, j + 1], out[3, j + 2], out[3, j + 3], out[3, j + 4] = d30, d31, d32, d33, d34
        j += 5
    if j < out.shape[1]:
        tap_dots4(out[:, j:], g0, g1, g2, g3, src[j * step :], step)
