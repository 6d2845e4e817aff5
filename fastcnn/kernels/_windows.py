"""The strided view that both NumPy kernels (im2col and pooling) are built from."""
from __future__ import annotations

import numpy as np


def window(a: np.ndarray, top: int, left: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """The view of ``a`` (..., H, W) seen by a kernel element at ``(top, left)`` of every output pixel.

    Element ``[..., r, q]`` of the result is ``a[..., top + r * sh, left + q * sw]``; shape (..., OH, OW).
    """
    return a[..., top : top + sh * (oh - 1) + 1 : sh, left : left + sw * (ow - 1) + 1 : sw]
