"""PyTorch at its best in the benchmark scripts: the allocator settings it needs, which glibc reads
when a process starts, so a script without them starts itself again with them.

Without them PyTorch's large buffers come from fresh mmaps that page-fault on every call, and its
times turn bimodal (10.8 vs 18.1 ms for the 32->64 conv). fastcnn keeps its temporaries in reused
scratch buffers; `fastcnn train` with and without them took the same time (2026-11-30). They are set
for the whole benchmark process. This module imports neither pytest nor PyTorch.
"""
from __future__ import annotations

import importlib.util
import os
import sys

TORCH_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}


def ensure_torch_malloc_env(before_exec=None) -> None:
    """Re-execute this process with :data:`TORCH_MALLOC_ENV` unless it already has it (or PyTorch is
    not installed). ``before_exec`` runs just before, e.g. to give pytest's captured file descriptors back."""
    if all(os.environ.get(k) == v for k, v in TORCH_MALLOC_ENV.items()) or importlib.util.find_spec("torch") is None:
        return
    if before_exec is not None:
        before_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TORCH_MALLOC_ENV})
