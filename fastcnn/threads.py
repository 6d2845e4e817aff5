"""One knob for every thread pool fastcnn uses: Numba's kernels and the BLAS behind NumPy's matmul."""
from __future__ import annotations

from .kernels import blas, jit


max_threads = jit.max_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba kernels and in BLAS.

    Raises
    ------
    ValueError
        ``n`` is below 1 or above :func:`max_threads`.
    """
    limit = max_threads()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"threads must be an int from 1 to {limit} (this machine's limit), got {n!r}")
    jit.set_threads(n)
    blas.set_threads(n)


def get_num_threads() -> int:
    """The number of threads fastcnn's kernels and matrix products use now."""
    return jit.num_threads()

