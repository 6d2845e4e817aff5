"""Matrix products through BLAS, with its thread count kept out of the way of Numba's threads."""
from __future__ import annotations

import numpy as np

_SMALL_GEMM = 1 << 22  # multiply-adds below which BLAS runs on one thread (see matmul)
_blas_controllers = None


def _blas():
    """threadpoolctl's controller for the BLAS libraries NumPy loaded (None without threadpoolctl)."""
    global _blas_controllers
    if _blas_controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_controllers = False
        else:
            _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers or False
    return _blas_controllers or None


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``, with BLAS held to one thread when the product is small.

    A second BLAS thread saves nothing on a small product, and afterwards OpenBLAS's worker keeps
    spinning on the core that the next Numba kernel needs, which halves that kernel's speed. Large
    products use every BLAS thread. The BLAS thread count is restored before returning.
    """
    controllers = _blas()
    if controllers is None or a.shape[-2] * a.shape[-1] * b.shape[-1] >= _SMALL_GEMM:
        return a @ b
    saved = [c.get_num_threads() for c in controllers]
    for c in controllers:
        c.set_num_threads(1)
    try:
        return a @ b
    finally:
        for c, n in zip(controllers, saved):
            c.set_num_threads(n)
