"""The model zoo (``bench/zoo.py``) under pytest-benchmark: each network's training step and
inference at batch 1 and 256, per fastcnn backend policy and in PyTorch.

Without ``--benchmark`` each case runs once, untimed, at small batches (2 for training, 1 and 2 for
inference), so the zoo stays cheap in the ordinary test run while still compiling and checking
every network's path. ``python -m bench.zoo`` prints the same table from interleaved rounds.
"""
import pytest

from fastcnn import dispatch

from . import zoo
from . import _common
from ._common import BACKENDS, param_backends

SMALL_TRAIN, SMALL_INFER = 2, (1, 2)


@param_backends(BACKENDS)
@pytest.mark.parametrize("phase", ["train", "infer b1", "infer b256"])
@pytest.mark.parametrize("name", list(zoo.ZOO))
def bench_zoo(benchmark, name, phase, backend):
    import fastcnn

    full = not benchmark.disabled
    phases = zoo.phases(name) if full else zoo.phases(name, SMALL_TRAIN, SMALL_INFER)
    label, kind, batch = phases[["train", "infer b1", "infer b256"].index(phase)]
    threads = _common.bench_threads()
    fastcnn.set_num_threads(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    fn = zoo.runner(name, kind, batch, backend)
    benchmark.group = f"zoo {name} {label}"
    benchmark.extra_info.update(op="zoo", phase=label, kind=kind, shape=name, backend=backend, threads=threads)
    if backend == "auto":
        dispatch.clear_dispatch_decisions()
        fn()
        benchmark.extra_info["auto_counts"] = zoo.choice_counts(dispatch.dispatch_decisions())
    fn()
    benchmark(fn)
