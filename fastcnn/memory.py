"""Keeping the memory that a training step frees for the next step (glibc's allocator).

A training step allocates its activations and gradients afresh, frees them, and asks for the same sizes
at the next step. glibc's malloc hands blocks over its mmap threshold (128 KiB at first, adjusted up to
32 MiB) straight back to the system when they are freed, and trims the top of its heap once more than
twice that is free there, so the next step's arrays come from fresh memory, at one page fault per 4 KiB
on first touch. Measured on an AMD Zen 4, 2 threads, the zoo's training steps: ``mobilenet_dw`` took
2,200-2,600 page faults and 14-20 ms of system time a step (66-71 ms a step against 51-54 with both
thresholds raised to 1 GB), ``resnet_mini`` 2,300-2,650. (PyTorch has the same problem; its users set
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment.)

:func:`keep_freed_memory`, which :meth:`~fastcnn.Sequential.fit` calls, raises both thresholds once per
process, unless the environment already sets glibc's malloc options (the user's choice stands) or
``FASTCNN_KEEP_FREED_MEMORY=0``. The price: memory that a step freed stays with the process (up to
:data:`TRIM_THRESHOLD` of it free at the heap's top, and any freed below the top, as for every block
glibc serves from its heap) instead of going back to the system. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 1 << 28  # blocks up to 256 MiB come from the heap, whose freed memory is reused
OLD_GLIBC_MMAP_THRESHOLD = 1 << 25  # the most that older glibc accepts
TRIM_THRESHOLD = 1 << 29  # the heap gives memory back only when more than 512 MiB is free at its top
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_applied: bool | None = None  # the outcome of the first call, for every later one


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the system (see the module
    docstring), once per process.

    Returns
    -------
    bool
        Whether fastcnn's thresholds are in force: False where the C library is not glibc, where the
        environment sets glibc's malloc options itself, or with ``FASTCNN_KEEP_FREED_MEMORY=0``.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("FASTCNN_KEEP_FREED_MEMORY", "1") in ("", "0"):
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # older glibc refuses an mmap threshold over HEAP_MAX_SIZE / 2 (32 MiB on 64-bit): take that there
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or libc.mallopt(_M_MMAP_THRESHOLD, OLD_GLIBC_MMAP_THRESHOLD)):
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc (which has ``gnu_get_libc_version`` and ``mallopt``),
    found among the symbols the process has loaded: no search that would start a program."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None)
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc
