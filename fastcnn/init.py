"""Weight initialisation and the library's default random generator.

``fastcnn.seed(n)`` reseeds the generator that layers use when they are not given their own, so
``fastcnn.seed(0); model = fastcnn.models.lenet()`` builds the same weights every time.
"""
from __future__ import annotations

import math

import numpy as np

_default_rng = np.random.default_rng()


def seed(value: int | None) -> None:
    """Reseed the default generator used for initialisation and dropout masks."""
    global _default_rng
    _default_rng = np.random.default_rng(value)


def get_rng(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """``rng`` as a Generator: a Generator is used as is, an int seeds a new one, None is the default."""
    if rng is None:
        return _default_rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def he_normal(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Kaiming/He normal initialisation, ``N(0, 2 / fan_in)``, for layers followed by ReLU."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Glorot/Xavier uniform initialisation, ``U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))``."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)
