"""Image warps in vectorised NumPy: a rotation about the centre and a shift, sampled bilinearly.

``rotate_shift`` is :class:`fastcnn.augment.RandomShiftRotate`'s kernel; :mod:`.warp_numba` has the
compiled twin.
"""
from __future__ import annotations

import numpy as np


def source_positions(h: int, w: int, cos, sin, shift):
    """Where each output pixel of an ``h x w`` image rotated by the angle of (``cos``, ``sin``) about
    its centre and shifted by ``shift`` (2, N) reads its input: ``(rows, cols)``, each (N, H, W), the
    inverse transform of the output pixel's coordinates."""
    rows = np.arange(h, dtype=np.float64)[None, :, None] - (h - 1) / 2 - shift[0][:, None, None]
    cols = np.arange(w, dtype=np.float64)[None, None, :] - (w - 1) / 2 - shift[1][:, None, None]
    cos, sin = cos[:, None, None], sin[:, None, None]
    return cos * rows + sin * cols + (h - 1) / 2, -sin * rows + cos * cols + (w - 1) / 2


def rotate_shift(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``x`` (N, C, H, W), image ``k`` rotated by the angle whose cosine and sine are ``cos[k]`` and
    ``sin[k]`` and shifted by ``shift[:, k]`` (rows, columns), sampled bilinearly with zeros outside."""
    n, c, h, w = x.shape
    src_r, src_c = source_positions(h, w, cos, sin, shift)
    # A border of zeros (one row and column before the image, two after) holds every tap once the
    # positions are clipped to [-1, H] x [-1, W]: a clipped position reads zeros only, as it should.
    padded = np.zeros((n, c, h + 3, w + 3), dtype=x.dtype)
    padded[:, :, 1:h + 1, 1:w + 1] = x
    src_r, src_c = np.clip(src_r, -1, h), np.clip(src_c, -1, w)
    r0, c0 = np.floor(src_r), np.floor(src_c)
    fr, fc = (src_r - r0).astype(x.dtype), (src_c - c0).astype(x.dtype)
    plane = (h + 3) * (w + 3)
    first = ((r0.astype(np.intp) + 1) * (w + 3) + c0.astype(np.intp) + 1).reshape(n, 1, h * w)
    first = first + (np.arange(n * c, dtype=np.intp) * plane).reshape(n, c, 1)
    flat = padded.reshape(-1)
    out = np.zeros((n, c, h * w), dtype=x.dtype)
    for offset, weight in ((0, (1 - fr) * (1 - fc)), (1, (1 - fr) * fc), (w + 3, fr * (1 - fc)), (w + 4, fr * fc)):
        out += flat.take(first + offset) * weight.reshape(n, 1, h * w)
    return out.reshape(n, c, h, w)
