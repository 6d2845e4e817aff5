"""Inference (``predict``) per preset at batch 1 and 256: fastcnn against ONNX Runtime, running the
file fastcnn exports, and PyTorch in eval mode, all on the same threads (see ``bench.inference``,
which prints the same comparison as a ratio table on its own, and starts itself with PyTorch's
``MALLOC_*`` settings; for these rows, set them in pytest's environment)."""
import numpy as np
import pytest

from fastcnn import models

from . import _common, inference
from ._common import run_measured

LIBRARIES = ("fastcnn", "ort", "torch")
BATCHES = (1, 256)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", sorted(models.PRESETS))
def bench_predict(benchmark, name, batch, library, tmp_path):
    model = inference.networks()[name]()
    x = np.random.default_rng(0).random((batch,) + model.input_shape, dtype=np.float32)
    threads = _common.bench_threads()  # not imported by name: pytest would collect a bench_* function
    fn = {"fastcnn": lambda: inference.fastcnn_runner(model, x),
          "ort": lambda: inference.ort_runner(model, x, threads, str(tmp_path)),
          "torch": lambda: inference.torch_runner(model, x, threads)}[library]()
    if fn is None:
        pytest.skip(f"{library} is not installed")
    run_measured(benchmark, op="predict", phase="inference", shape=f"{name} at batch {batch}", backend=library, fn=fn)
