"""Shared set-up for the benchmark suites: shapes, backends, warm-up and the optional PyTorch peer."""
from __future__ import annotations

import numpy as np
import pytest

import fastcnn

try:
    import torch
except ImportError:
    torch = None

BACKENDS = fastcnn.available_backends() + ("auto",) + (("torch",) if torch is not None else ())


def param_backends():
    return pytest.mark.parametrize("backend", BACKENDS)


def run_measured(benchmark, group: str, backend: str, fn):
    """Warm ``fn`` once (compilation, the dispatcher's measurement), then benchmark it."""
    benchmark.group = group
    benchmark.extra_info["backend"] = backend
    if backend == "torch":
        torch.set_num_threads(fastcnn.dispatch._jit.num_threads())
    fn()
    return benchmark(fn)


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
