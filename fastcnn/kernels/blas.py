"""Matrix products through BLAS, kept out of the way of Numba's threads; the one place that sets
BLAS's thread count.

OpenBLAS's own worker threads keep spinning for a while after every multi-threaded call, on the
very cores the next Numba kernel needs, which halves that kernel's speed. So fastcnn holds BLAS to
one thread during its products and, for a large product, runs the parts on its own threads (which
sleep, not spin, when idle). The BLAS setting is restored when no fastcnn product is running.

The thread count is set through OpenBLAS's own process-wide functions (found by threadpoolctl, which
knows the symbol prefixes of each build), for :func:`held` and for :func:`set_threads` alike.
threadpoolctl's own ``set_num_threads``/``threadpool_limits`` are not used: for OpenBLAS's shared pool
they let only the first Python thread that calls them change the setting, while fastcnn's products
run on any thread.
"""
from __future__ import annotations

import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

from . import jit

_SPLIT_GEMM = 1 << 22  # multiply-adds from which a product is cut into one part per thread, if it is
_SPLIT_DEPTH, _SPLIT_OUTPUTS = 32, 1024  # also this deep and this wide (thin ones are memory-bound)
_lock = threading.Lock()
_active = 0  # products running now, in any thread
_saved: list[int] = []
_pool: ThreadPoolExecutor | None = None
_knobs = None
T = TypeVar("T")


def _blas_knobs() -> list[tuple]:
    """``(get, set)`` for the thread count of each OpenBLAS library NumPy loaded ([] if none)."""
    global _knobs
    if _knobs is None:
        _knobs = []
        for c in ThreadpoolController().select(internal_api="openblas").lib_controllers:
            symbol = getattr(c, "_get_symbol", lambda name: None)
            get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
            if get is not None and set_ is not None:
                _knobs.append((get, set_))
    return _knobs


def _enter() -> None:
    """Hold BLAS to one thread while any fastcnn product runs (the setting is process-wide)."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = [get() for get, _ in _blas_knobs()]
            for _, set_ in _blas_knobs():
                set_(1)
        _active += 1


def _leave() -> None:
    global _active
    with _lock:
        _active -= 1
        if _active == 0:
            for (_, set_), n in zip(_blas_knobs(), _saved):
                set_(n)


def set_threads(n: int) -> None:
    """Let BLAS use ``n`` threads outside fastcnn's own products (inside them it stays at one)."""
    global _saved
    with _lock:
        if _active:
            _saved = [n] * len(_blas_knobs())  # restored when the last product ends
            return
        for _, set_ in _blas_knobs():
            set_(n)


class held:  # lower case: it is used like a function, ``with held():``
    """Hold BLAS to one thread inside a ``with`` block: around each product, and around a whole
    training run so that its many small products do not switch the setting back and forth.

    A class, not a generator-based context manager, which would add a microsecond to every product.
    """

    def __enter__(self) -> None:
        _enter()

    def __exit__(self, *exc_info) -> None:
        _leave()


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


def on_threads(work: Callable[[int, int], T]) -> list[T]:
    """Run ``work(worker, workers)`` once per fastcnn thread, BLAS held to one thread; results in worker order.

    Each call handles a fixed share of the job (say, blocks ``worker``, ``worker + workers``, ...), so
    results, and any sums over them in worker order, are the same on every run with this thread count.
    """
    global _pool
    workers = jit.num_threads()
    with held():
        if workers == 1:
            return [work(0, 1)]
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, jit.max_threads() - 1), thread_name_prefix="fastcnn-blas")
        futures = [_pool.submit(work, i, workers) for i in range(1, workers)]
        return [work(0, workers)] + [f.result() for f in futures]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D arrays, with BLAS on one thread and large products split over fastcnn's threads.

    The split is fixed by the shapes and the thread count, so results are repeatable.
    """
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    if m * k * n < _SPLIT_GEMM or k < _SPLIT_DEPTH or m * n < _SPLIT_OUTPUTS:
        with held():
            return a @ b
    kind, parts = _parts(a, b, jit.num_threads())
    results = on_threads(lambda worker, workers: parts[worker][0] @ parts[worker][1])
    if kind == "rows":
        return np.concatenate(results, axis=0)
    if kind == "cols":
        return np.concatenate(results, axis=1)
    total = results[0]
    for r in results[1:]:
        total += r
    return total


def channel_sums(a: np.ndarray) -> np.ndarray:
    """``a`` (N, C, ...) summed over every axis but the channels (a bias gradient), as BLAS products
    with ones, which are several times faster than NumPy's reductions over these axes."""
    n, c = a.shape[:2]
    size = math.prod(a.shape[2:])  # (not -1 in the reshapes: an empty batch has no size to infer from)
    per_sample = a.reshape(n, c, size)
    if size != 1:
        per_sample = matmul(per_sample.reshape(n * c, size), _ones((size, 1), a.dtype))
    return matmul(_ones((1, n), a.dtype), per_sample.reshape(n, c))[0]


@functools.lru_cache(maxsize=64)
def _ones(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A read-only array of ones, made once per shape (a training step asks for the same ones every time)."""
    ones = np.ones(shape, dtype)
    ones.flags.writeable = False
    return ones
