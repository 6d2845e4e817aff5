"""Inference (``predict``) per preset and zoo network at batch 1 and 256: fastcnn against ONNX
Runtime, running the file fastcnn exports, and PyTorch in eval mode, all on the same threads (see
``bench.inference``, which prints the same comparison as a ratio table on its own, and starts itself
with PyTorch's ``MALLOC_*`` settings; for these rows, set them in pytest's environment).

Without ``--benchmark`` each case runs once, untimed, at batch 1 and 2 (the zoo's networks are
costly at 256). An ONNX Runtime case whose network fastcnn cannot export yet is skipped, saying why.
"""
import numpy as np
import pytest

from . import _common, inference
from ._common import run_measured

LIBRARIES = ("fastcnn", "ort", "torch")
BATCHES = (1, 256)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", list(inference.networks()))
def bench_predict(benchmark, name, batch, library, tmp_path):
    model = inference.networks()[name]()
    if benchmark.disabled:
        batch = min(batch, 2)
    x = np.random.default_rng(0).random((batch,) + model.input_shape, dtype=np.float32)
    threads = _common.bench_threads()  # not imported by name: pytest would collect a bench_* function
    try:
        fn = {"fastcnn": lambda: inference.fastcnn_runner(model, x),
              "ort": lambda: inference.ort_runner(model, x, threads, str(tmp_path)),
              "torch": lambda: inference.torch_runner(model, x, threads)}[library]()
    except inference.NotExportable as exc:
        pytest.skip(f"not exportable yet: {exc}")
    if fn is None:
        pytest.skip(f"{library} is not installed")
    run_measured(benchmark, op="predict", phase="inference", shape=f"{name} at batch {batch}", backend=library, fn=fn)
