"""Data augmentation: seeded, vectorised random transforms of image batches, for ``fit(augment=...)``.

A transform is a callable taking a float batch ``(N, C, H, W)`` and returning a new batch of the same
shape and dtype; ``fit`` applies it to every training batch (never to validation or test data).
"""
from __future__ import annotations

import math

import numpy as np

from . import dispatch

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
        if x.ndim != 4 or x.dtype not in (np.float32, np.float64):
            raise ValueError(f"RandomShiftRotate takes a float32 or float64 batch (N, C, H, W), got {x.dtype} {x.shape}")
        n = x.shape[0]
        angle = np.deg2rad(self.rng.uniform(-self.max_degrees, self.max_degrees, n))
        shift = self.rng.uniform(-self.max_shift, self.max_shift, (2, n))
        signature = (x.shape, x.dtype.char)
        args = (np.ascontiguousarray(x), np.cos(angle), np.sin(angle), shift)
        return dispatch.run("rotate_shift", signature, args)

    def __repr__(self) -> str:
        return f"RandomShiftRotate(max_shift={self.max_shift:g}, max_degrees={self.max_degrees:g})"
