"""Shared set-up for the benchmark suites: backends, threads, warm-up and the optional PyTorch peer.

Every benchmark records what the summary table needs in ``extra_info``: the op, the phase, a shape
label, the backend and, for ``auto``, the backend it chose per dispatched op and what choosing cost.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import dispatch

try:
    import torch
except ImportError:
    torch = None

BACKENDS = fastcnn.available_backends() + ("auto",) + (("torch",) if torch is not None else ())
FASTCNN_ONLY = ("fastcnn",) + (("torch",) if torch is not None else ())  # ops with one implementation


from ._peer_env import TORCH_MALLOC_ENV, ensure_torch_malloc_env  # noqa: F401 (the suites' import point)


def bench_threads() -> int:
    """Threads for every backend, PyTorch included: ``FASTCNN_BENCH_THREADS``, else all allowed."""
    return int(os.environ.get("FASTCNN_BENCH_THREADS", fastcnn.threads.max_threads()))


def param_backends(backends=BACKENDS):
    return pytest.mark.parametrize("backend", backends)


def fastcnn_backend(backend: str) -> str | None:
    """The ``backend=`` argument for a fastcnn op: None lets the policy (auto) decide."""
    return None if backend in ("auto", "fastcnn") else backend


def run_measured(benchmark, *, op: str, phase: str, shape: str, backend: str, fn):
    """Warm ``fn`` (compilation, the dispatcher's measurement), then benchmark it.

    For ``auto`` the dispatcher starts from no decisions, so its choices and their one-off cost are
    those of a first call in a new process.
    """
    threads = bench_threads()
    fastcnn.threads.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    benchmark.group = f"{op} {phase}: {shape}"
    benchmark.extra_info.update(op=op, phase=phase, shape=shape, backend=backend, threads=threads)
    if backend == "auto":
        dispatch.clear_dispatch_decisions()
        fn()
        decisions = dispatch.dispatch_decisions()
        benchmark.extra_info["auto_choice"] = {d["op"]: d["choice"] for d in decisions}
        benchmark.extra_info["auto_measure_ms"] = round(sum(d["measure_ms"] for d in decisions), 2)
    fn()
    return benchmark(fn)


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
