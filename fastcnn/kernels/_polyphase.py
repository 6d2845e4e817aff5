"""A strided convolution as a stride-1 one: the polyphase split.

With stride ``(sh, sw)`` (dilation 1), output ``(r, q)`` reads input ``(r*sh + i, q*sw + j)``. Writing
``i = a*sh + pi`` and ``j = b*sw + pj``, that is position ``(r + a, q + b)`` of the input's phase
``(pi, pj)``, the plane ``xp[pi::sh, pj::sw]``. So the conv equals a stride-1 conv of the phases,
stacked as channels (``C * ph * pw`` of them, ``ph = min(sh, kh)``: phases no tap reads are left out),
with the kernel cut the same way into ``ceil(kh/sh) x ceil(kw/sw)`` sub-kernels. The stride-1
register tiles then do the arithmetic of the forward pass and the weight gradient, at the price of
one copy of the input (its phases' runs, ``conv_numba._phase_taps``): :func:`tap_offsets` says where
each of the kernel's own taps reads in the phases' runs (no zero taps). (The input gradient goes by
the input's phases in :mod:`.conv_channels` instead: ``_grad_input_by_phases``.)
"""
from __future__ import annotations

import functools

import numpy as np


def phase_shape(kh, kw, sh, sw, oh, ow):
    """``(ph, pw, ka, kb, hq, wq)``: phases used, sub-kernel size and phase-plane size for an output (oh, ow)."""
    ka, kb = -(-kh // sh), -(-kw // sw)
    return min(sh, kh), min(sw, kw), ka, kb, oh + ka - 1, ow + kb - 1


@functools.lru_cache(maxsize=64)
def tap_offsets(c_in, kh, kw, sh, sw, run, wq):
    """Where tap ``(c, i, j)`` of the kernel (in that order, as :func:`.conv_numba._tap_matrix`'s
    columns) reads in the phases' runs (``run`` values per channel, planes ``wq`` wide): channel
    ``(c, i mod sh, j mod sw)`` of the phases, shifted by ``(i div sh, j div sw)``. Computed once per
    geometry (tens of microseconds, more than a small conv's arithmetic): callers must not modify it."""
    ph, pw = min(sh, kh), min(sw, kw)
    c, i, j = np.meshgrid(np.arange(c_in), np.arange(kh), np.arange(kw), indexing="ij")
    channel = (c * ph + i % sh) * pw + j % sw
    return (channel * run + (i // sh) * wq + j // sw).reshape(-1).astype(np.int64)
