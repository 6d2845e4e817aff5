"""Data augmentation: seeded, vectorised random transforms of image batches, for ``fit(augment=...)``.

A transform is a callable taking a float batch ``(N, C, H, W)`` and returning a new batch of the same
shape and dtype; ``fit`` applies it to every training batch (never to validation or test data).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["RandomShiftRotate"]


class RandomShiftRotate:
    """Rotate each image by a random angle about its centre and shift it by a random offset, sampling
    bilinearly with zeros outside (MNIST's background), the whole batch at once.

    Parameters
    ----------
    max_shift : float
        Largest shift in pixels along each axis (uniform in ``[-max_shift, max_shift]``).
    max_degrees : float
        Largest rotation in degrees either way (uniform).
    seed : int or numpy.random.Generator, optional
        Where the random draws come from; a seed repeats the same sequence of transforms.

    Examples
    --------
    >>> augment = RandomShiftRotate(max_shift=2, max_degrees=10, seed=0)
    >>> model.fit(x, y, augment=augment)  # doctest: +SKIP
    """

    def __init__(self, max_shift: float = 2.0, max_degrees: float = 10.0, seed=None) -> None:
        for name, value in (("max_shift", max_shift), ("max_degrees", max_degrees)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.max_shift = float(max_shift)
        self.max_degrees = float(max_degrees)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.dtype.kind != "f":
            raise ValueError(f"RandomShiftRotate takes a float batch (N, C, H, W), got {x.dtype} {x.shape}")
        n, c, h, w = x.shape
        angle = np.deg2rad(self.rng.uniform(-self.max_degrees, self.max_degrees, n))
        shift = self.rng.uniform(-self.max_shift, self.max_shift, (2, n))
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        # Each output pixel reads the input at the inverse transform of its coordinates (about the centre).
        rows = np.arange(h, dtype=np.float64)[None, :, None] - (h - 1) / 2 - shift[0][:, None, None]
        cols = np.arange(w, dtype=np.float64)[None, None, :] - (w - 1) / 2 - shift[1][:, None, None]
        src_r = cos * rows + sin * cols + (h - 1) / 2
        src_c = -sin * rows + cos * cols + (w - 1) / 2
        return _bilinear(x, src_r, src_c)

    def __repr__(self) -> str:
        return f"RandomShiftRotate(max_shift={self.max_shift:g}, max_degrees={self.max_degrees:g})"


def _bilinear(x: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """``x`` (N, C, H, W) sampled at the fractional positions ``(src_r, src_c)`` (N, H, W), zeros outside."""
    n, c, h, w = x.shape
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
