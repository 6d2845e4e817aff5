"""The one place that configures Numba: JIT flags, the threading layer and the on-disk cache.

Threading layer
---------------
fastcnn chooses Numba's ``tbb`` layer, the only one that is safe both when several Python threads call
parallel kernels at once (``workqueue`` aborts the process) and after ``fork()`` (GNU ``omp`` kills the
child). pip's ``tbb`` wheel puts ``libtbb.so.12`` in ``<prefix>/lib``, which is not on the loader path,
so it is loaded here, by absolute path, before Numba launches its threads. Where TBB cannot be loaded,
fastcnn chooses ``workqueue`` (fork-safe) and runs one parallel kernel at a time behind a lock
(:data:`SERIALIZE_KERNELS`), so concurrent callers wait instead of aborting. A layer the user forces
with ``NUMBA_THREADING_LAYER`` is kept (and serialised too if it is ``workqueue``).
:func:`threading_layer` reports the layer in use.

Fast-math
---------
Only the flags that keep NaN and infinity semantics: max-pooling relies on ``-inf`` and NaN comparisons.

Vector width
------------
:data:`VECTOR_BYTES` is the width of the SIMD registers the kernels are compiled for: 64 bytes where
the target has AVX-512, else 32 (AVX2). The register tiles (:mod:`._tiles`) take their shapes from it.

Bounds checks
-------------
:data:`CHECK_BOUNDS` compiles assertions of every LLVM-IR helper's preconditions into its callers.

Cache
-----
Numba checks a cached kernel against the source of its own module only, yet it compiles the helpers a
kernel calls from other modules (:mod:`._taps`, :mod:`._tiles`, :mod:`._pool_vectors`, :mod:`._mask`,
the flags here) into that kernel. So every kernel of this package is stamped with the sources of all of its modules: a
change to any of them recompiles every kernel, instead of loading stale machine code.

Numba saves a cache entry by reading the kernel's index, taking the first free data-file number,
writing the index, then the data file, with nothing between processes: two processes that compile
different signatures of one kernel at once (test workers, MPI ranks, a process pool) can take the same
number, and a later load then gets the other signature's machine code. Where ``fcntl`` exists, every
save and load of a Numba cache entry holds an exclusive lock on its cache directory
(:func:`_lock_cache_files`).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import hashlib
import os
import platform
import sys
import threading
import types
import warnings
from typing import Any, Callable

FASTMATH_FLAGS = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
CHECK_BOUNDS = os.environ.get("FASTCNN_CHECK_BOUNDS", "") not in ("", "0")
"""``FASTCNN_CHECK_BOUNDS=1``: the LLVM-IR helpers (:mod:`._tiles`, :mod:`._pool_vectors`) assert every
bounds precondition of each call before it runs (an ``AssertionError`` instead of memory corruption).
It is part of every kernel's cache stamp: switching it recompiles every kernel in that cache directory
(give each setting its own ``NUMBA_CACHE_DIR`` to keep both). For tests and debugging: it is slower."""


def _preload_tbb() -> None:
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


try:
    if sys.platform.startswith("linux"):
        _preload_tbb()
    import numba
    from numba import prange
except ImportError:  # the NumPy backend still works
    numba = None
    prange = range

NUMBA_AVAILABLE = numba is not None
_cache_warned = False


def _vector_bytes() -> int:
    forced = os.environ.get("FASTCNN_VECTOR_BYTES", "")
    if forced:
        if forced not in ("32", "64"):
            raise ValueError(f"FASTCNN_VECTOR_BYTES must be 32 or 64, got {forced!r}")
        return int(forced)
    if not NUMBA_AVAILABLE:
        return 64
    features = numba.config.CPU_FEATURES  # what Numba compiles for: these, else the host's
    if features is None:
        from llvmlite import binding
        features = binding.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = _vector_bytes()
"""Bytes per SIMD vector of the compiled kernels: 64 where Numba compiles for AVX-512 (``+avx512f``),
else 32. Only the feature list is read: where ``NUMBA_CPU_FEATURES`` is set but empty, a CPU name that
implies AVX-512 (``NUMBA_CPU_NAME=skylake-avx512``) still gives 32. ``FASTCNN_VECTOR_BYTES=32`` or ``64``
forces either (both are correct on any CPU: LLVM splits a vector wider than the target's registers); any
other value is a ValueError at import. Like :data:`CHECK_BOUNDS`, it is part of the cache stamp."""


def _choose_threading_layer() -> str:
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (fails when libtbb cannot be loaded)
    except ImportError:
        numba.config.THREADING_LAYER = "workqueue"
    else:
        numba.config.THREADING_LAYER = "tbb"
    return numba.config.THREADING_LAYER


def sources_digest(directory: str) -> bytes:
    """SHA-256 of every ``.py`` file in ``directory``, by name and content."""
    return _digest(directory, tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                                    for e in sorted(os.scandir(directory), key=lambda e: e.name)
                                    if e.name.endswith(".py")))


@functools.lru_cache(maxsize=4)
def _digest(directory: str, stamps: tuple) -> bytes:  # stamps: re-read when a file changes
    h = hashlib.sha256()
    for name, _, _ in stamps:
        with open(os.path.join(directory, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.digest()


def _stamp_package_caches() -> None:
    """Put a locator in front of Numba's own that, for this package's files, adds
    :func:`sources_digest` of the package to each cache entry's source stamp (see the module docstring)."""
    try:
        from numba.core import caching
        base = caching._CacheLocator
    except (ImportError, AttributeError):  # a Numba without this machinery: its own stamps only
        return
    here = os.path.dirname(os.path.abspath(__file__))

    class PackageStampedLocator(base):
        def __init__(self, inner):
            self._inner = inner
            self._py_file = getattr(inner, "_py_file", None)

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        def get_source_stamp(self):
            return self._inner.get_source_stamp(), sources_digest(here), CHECK_BOUNDS, VECTOR_BYTES

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != here:
                return None
            for other in caching.CacheImpl._locator_classes:
                inner = None if other.__name__ == cls.__name__ else other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
            return None

    classes = caching.CacheImpl._locator_classes
    if not any(c.__name__ == PackageStampedLocator.__name__ for c in classes):
        classes.insert(0, PackageStampedLocator)


def _lock_cache_files() -> None:
    """Make Numba's cache-entry saves and loads hold an exclusive ``flock`` on the cache directory
    (see the module docstring); a directory that cannot be opened or locked is used without the lock."""
    try:
        import fcntl
        from numba.core.caching import IndexDataCacheFile
    except ImportError:  # no fcntl (Windows), or a Numba without this class: its own behaviour
        return
    if getattr(IndexDataCacheFile.save, "locked", False):
        return

    def locked(method):
        def run(self, *args):
            try:
                fd = os.open(self._cache_path, os.O_RDONLY)
            except (OSError, AttributeError):
                return method(self, *args)
            try:
                with contextlib.suppress(OSError):  # a file system without flock on directories: unlocked
                    fcntl.flock(fd, fcntl.LOCK_EX)
                return method(self, *args)
            finally:
                os.close(fd)  # releases the lock

        run.locked = True
        return functools.wraps(method)(run)

    IndexDataCacheFile.save = locked(IndexDataCacheFile.save)
    IndexDataCacheFile.load = locked(IndexDataCacheFile.load)


if NUMBA_AVAILABLE:
    _stamp_package_caches()
    _lock_cache_files()
CHOSEN_LAYER = _choose_threading_layer() if NUMBA_AVAILABLE else None
SERIALIZE_KERNELS = CHOSEN_LAYER == "workqueue"
"""True when parallel kernels must not run concurrently (the ``workqueue`` layer)."""
kernel_lock = threading.RLock()  # re-entrant: a serialised op may run a serialised prepared kernel


def serialized(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` behind :data:`kernel_lock`, for Python-level entry points to parallel kernels."""
    def run(*args):
        with kernel_lock:
            return fn(*args)

    run.__wrapped__ = fn
    return run


def parallel_kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile ``fn`` as a parallel, cached, NaN-safe Numba kernel.

    When no cache directory is writable the kernel is compiled without ``cache=True`` and one warning
    is issued, so a read-only install still works (it just recompiles in every process).
    """
    return _compile(fn, parallel=True)


def serial_kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile ``fn`` as a single-threaded kernel (for work too small to repay a thread launch)."""
    return _compile(fn, parallel=False)


SERIAL_WORK = 1 << 15  # multiply-adds (or values) below which a kernel runs serially
_serial_twins: dict[Any, Callable[..., Any]] = {}


def sized(kernel: Callable[..., Any], work: int) -> Callable[..., Any]:
    """``kernel``, or its serial twin for less than :data:`SERIAL_WORK` of ``work`` or when one thread
    is to run it.

    Waking Numba's sleeping worker threads costs about 10 microseconds per call, more than a small
    job gains from them; with one thread, a parallel region still costs a few microseconds and gains
    nothing (one process per core, as in data-parallel training, runs that way). The twin is compiled
    on first use from a renamed copy of the same function: Numba's cache would mix up two compiles of
    one function with different options (numba#6845).
    """
    if work >= SERIAL_WORK and num_threads() > 1:
        return kernel
    twin = _serial_twins.get(kernel)
    if twin is None:
        fn = kernel.py_func
        name = fn.__name__ + "_serial"
        copy = types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__,
                                  fn.__closure__)
        copy.__qualname__, copy.__module__, copy.__doc__ = fn.__qualname__ + "_serial", fn.__module__, fn.__doc__
        twin = _serial_twins[kernel] = serial_kernel(copy)
    return twin


def kernel_helper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile ``fn`` as a serial helper for the parallel kernels, with the same flags and caching."""
    return _compile(fn, parallel=False, inline="always")


def _compile(fn: Callable[..., Any], parallel: bool, inline: str = "never") -> Callable[..., Any]:
    global _cache_warned
    options = dict(parallel=parallel, nogil=True, fastmath=set(FASTMATH_FLAGS), error_model="numpy", inline=inline)
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
        if not _cache_warned:
            warnings.warn(
                f"fastcnn: Numba cannot cache compiled kernels ({exc}); kernels are compiled in every "
                "process. Set NUMBA_CACHE_DIR to a writable directory to fix this.",
                RuntimeWarning,
                stacklevel=2,
            )
            _cache_warned = True
        return numba.njit(cache=False, **options)(fn)


_threads_without_numba = os.cpu_count() or 1


def max_threads() -> int:
    """The most threads allowed: Numba's pool size (``NUMBA_NUM_THREADS``), else the CPU count."""
    return numba.config.NUMBA_NUM_THREADS if NUMBA_AVAILABLE else os.cpu_count() or 1


_read_threads = None  # Numba's own reader of the thread count, once its threads are up


def num_threads() -> int:
    """The number of threads fastcnn's kernels and matrix products use now.

    ``numba.get_num_threads`` takes a process lock on every call (about 4 microseconds); once Numba's
    threads are up, its underlying reader gives the same answer without it.
    """
    global _read_threads
    if not NUMBA_AVAILABLE:
        return _threads_without_numba
    if _read_threads is not None:
        n = _read_threads()
        if n > 0:
            return n
    n = numba.get_num_threads()
    _read_threads = getattr(numba.np.ufunc.parallel, "_get_num_threads", None)
    return n


def planes_per_task(planes: int) -> int:
    """Planes per task for the kernels whose tasks take several (sample, channel) planes, so that a task
    allocates its buffers once for all of them: up to 16, fewer where that leaves fewer than 4 tasks a
    thread. (The kernels' results do not depend on this number: each plane is computed alike in any task.)"""
    return max(1, min(16, planes // (4 * num_threads())))


def set_threads(n: int) -> None:
    """Set :func:`num_threads` (checked by :func:`fastcnn.set_num_threads`)."""
    global _threads_without_numba
    if NUMBA_AVAILABLE:
        numba.set_num_threads(n)
    else:
        _threads_without_numba = n


def kernels_cached() -> bool:
    """Whether compiled kernels go to Numba's on-disk cache (False once a kernel could find no writable
    cache directory: every process then compiles its own)."""
    return not _cache_warned


@functools.lru_cache(maxsize=None)
def cpu_description() -> str:
    """The CPU that kernel timings depend on: its model name, the microarchitecture LLVM finds in it
    (virtual machines often show a generic model name) and, where ``NUMBA_CPU_NAME`` or
    ``NUMBA_CPU_FEATURES`` say otherwise, the CPU and features the kernels are compiled for, and the
    vector width of their register tiles (:data:`VECTOR_BYTES`); e.g. ``Intel(R) Xeon(R) Processor
    (emeraldrapids; 64-byte vectors)`` or ``AMD EPYC (znver5; kernels compiled for haswell with its own
    features only; 32-byte vectors)``; ``NUMBA_CPU_NAME=haswell`` alone gives ``haswell with znver5's
    features``, AVX-512 code."""
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    if not NUMBA_AVAILABLE:
        return model
    from llvmlite import binding

    host, target, features = binding.get_host_cpu_name(), numba.config.CPU_NAME, numba.config.CPU_FEATURES
    compiled = ""
    if (target and target != host) or features is not None:  # without a feature list Numba adds the host's
        named = features if features else ("its own features only" if features == "" else f"{host}'s features")
        compiled = f"; kernels compiled for {target or host} with {named}"
    return f"{model} ({host}{compiled}; {VECTOR_BYTES}-byte vectors)"


def threading_layer() -> str:
    """The Numba threading layer in use, or a short reason why there is none yet."""
    if not NUMBA_AVAILABLE:
        return "none (numba not installed)"
    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"
