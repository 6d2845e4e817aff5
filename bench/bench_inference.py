"""Inference (``predict``) per preset at batch 1 and 256: fastcnn against ONNX Runtime, running the
file fastcnn exports, and PyTorch in eval mode, all on the same threads (see ``bench.inference``,
which prints the same comparison as a ratio table on its own)."""
import pytest

from fastcnn import models

from . import inference
from ._common import bench_threads, run_measured

LIBRARIES = ("fastcnn", "ort", "torch")
BATCHES = (1, 256)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", sorted(models.PRESETS))
def bench_predict(benchmark, name, batch, library, tmp_path):
    import numpy as np

    model = inference.networks()[name]()
    x = np.random.default_rng(0).random((batch,) + model.input_shape, dtype=np.float32)
    threads = bench_threads()
    fn = {"fastcnn": lambda: inference.fastcnn_runner(model, x),
          "ort": lambda: inference.ort_runner(model, x, threads, str(tmp_path)),
          "torch": lambda: inference.torch_runner(model, x, threads)}[library]()
    if fn is None:
        pytest.skip(f"{library} is not installed")
    run_measured(benchmark, op="predict", phase="inference", shape=f"{name} at batch {batch}", backend=library, fn=fn)
