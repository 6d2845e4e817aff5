"""Multiply-add loops over shifted runs, for the dense layer's Numba kernels, and where a conv's taps read.

A "tap" is one weight applied to a copy of a flat run shifted by ``j * step``: here one sample of a
dense layer's input (``step`` = the row length). :func:`add_taps4` shares every load between four
output rows (register blocking), and both helpers do three taps per pass, so LLVM vectorises each
pass into one long loop. They serve the layers narrower than a register tile of :mod:`._tiles`.
A conv kernel's taps shift flattened planes the same way: :func:`tap_offsets` says by how much.
"""
from __future__ import annotations

import numpy as np

from .jit import kernel_helper


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
def tap_offsets(channels, kh, kw, run, base, row_step, dw):
    """Where tap ``(c, i, j)`` of a ``kh x kw`` kernel reads in flattened runs (channel ``c`` from
    ``c*run`` on): ``c*run + base + i*row_step + j*dw``, taps in the weight's order."""
    offsets = np.empty(channels * kh * kw, dtype=np.int64)
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                offsets[(c * kh + i) * kw + j] = c * run + base + i * row_step + j * dw
    return offsets
