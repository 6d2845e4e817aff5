"""The dropout mask, one definition for both backends: plain uint64 arithmetic that NumPy runs on a
whole array of indices and Numba compiles for one index at a time."""
from __future__ import annotations

import numpy as np


def kept(seed, index, threshold):
    """Whether element ``index`` survives dropout: the top 24 bits of SplitMix64(``seed``, ``index``) are
    below ``threshold``. ``seed`` and ``threshold`` are ``np.uint64``; ``index`` an int or a uint64 array."""
    z = seed + (np.uint64(index) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) >> np.uint64(40)) < threshold
