"""Matrix products through BLAS, kept out of the way of Numba's threads.

OpenBLAS's own worker threads keep spinning for a while after every multi-threaded call, on the
very cores the next Numba kernel needs, which halves that kernel's speed. So fastcnn holds BLAS to
one thread during its products and, for a large product, runs the parts on its own threads (which
sleep, not spin, when idle). The user's BLAS thread setting is restored when no product is running.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _jit

_SPLIT_GEMM = 1 << 22  # multiply-adds from which a product is cut into one part per thread
_lock = threading.Lock()
_active = 0  # products running now (several Python threads may call matmul at once)
_saved: list[int] = []
_pool: ThreadPoolExecutor | None = None
_controllers = None


def _blas():
    """threadpoolctl's controllers for the BLAS libraries NumPy loaded ([] without threadpoolctl)."""
    global _controllers
    if _controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controllers = []
        else:
            _controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controllers


def _enter() -> None:
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = [c.get_num_threads() for c in _blas()]
            for c in _blas():
                c.set_num_threads(1)
        _active += 1


def _leave() -> None:
    global _active
    with _lock:
        _active -= 1
        if _active == 0:
            for c, n in zip(_blas(), _saved):
                c.set_num_threads(n)


def _parts(a: np.ndarray, b: np.ndarray, count: int):
    """Cut ``a @ b`` along its largest dimension: ``(kind, [(a_part, b_part), ...])``."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    axis = int(np.argmax((m, n, k)))
    edges = np.linspace(0, (m, n, k)[axis], count + 1).astype(int)
    cuts = [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    if axis == 0:
        return "rows", [(a[s], b) for s in cuts]
    if axis == 1:
        return "cols", [(a, b[:, s]) for s in cuts]
    return "sum", [(a[:, s], b[s]) for s in cuts]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D arrays, with BLAS on one thread and large products split over fastcnn's threads.

    The split is fixed by the shapes and the thread count, so results are repeatable.
    """
    global _pool
    threads = _jit.num_threads()
    _enter()
    try:
        if threads == 1 or a.shape[0] * a.shape[1] * b.shape[1] < _SPLIT_GEMM:
            return a @ b
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, _jit.max_threads() - 1), thread_name_prefix="fastcnn-blas")
        kind, parts = _parts(a, b, threads)
        futures = [_pool.submit(np.matmul, x, y) for x, y in parts[1:]]
        results = [parts[0][0] @ parts[0][1]] + [f.result() for f in futures]
    finally:
        _leave()
    if kind == "rows":
        return np.concatenate(results, axis=0)
    if kind == "cols":
        return np.concatenate(results, axis=1)
    total = results[0]
    for r in results[1:]:
        total += r
    return total
