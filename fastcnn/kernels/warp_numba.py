"""Image warps as Numba loops: :func:`.warp_numpy.rotate_shift`, an image per task, each output pixel
computing its source position and its four bilinear taps once for all its channels (the NumPy
version builds (N, H, W) arrays of positions and weights and gathers from a padded copy)."""
from __future__ import annotations

import math

import numpy as np

from .jit import parallel_kernel, prange, sized


def rotate_shift(x, cos, sin, shift):
    """As :func:`.warp_numpy.rotate_shift`."""
    out = np.empty_like(x)
    sized(_rotate_shift, x.size * 4)(x, cos, sin, shift, out)
    return out


@parallel_kernel
def _rotate_shift(x, cos, sin, shift, out):
    n, c, h, w = x.shape
    mid_r, mid_c = (h - 1) / 2, (w - 1) / 2
    one = np.ones(1, x.dtype)[0]
    for s in prange(n):
        frac = np.empty(2, x.dtype)  # the fractions, rounded to the images' dtype as NumPy's kernel does
        for r in range(h):
            rows = r - mid_r - shift[0, s]
            for q in range(w):
                cols = q - mid_c - shift[1, s]
                src_r = min(max(cos[s] * rows + sin[s] * cols + mid_r, -1.0), float(h))
                src_c = min(max(-sin[s] * rows + cos[s] * cols + mid_c, -1.0), float(w))
                r0, c0 = math.floor(src_r), math.floor(src_c)
                frac[0], frac[1] = src_r - r0, src_c - c0
                fr, fc = frac[0], frac[1]
                weights = ((one - fr) * (one - fc), (one - fr) * fc, fr * (one - fc), fr * fc)
                for ch in range(c):
                    total = one - one
                    for k in range(4):
                        rr, cc = int(r0) + k // 2, int(c0) + k % 2
                        if 0 <= rr < h and 0 <= cc < w:
                            total += x[s, ch, rr, cc] * weights[k]
                    out[s, ch, r, q] = total
