"""End-to-end training throughput (images/s) per preset and backend, on MNIST-shaped data.

Each round is ``Sequential.fit`` over a fixed slice of data with the preset's batch size and
optimizer (PyTorch: the same network, weights and optimizer, see ``torch_peer``). The data are
random images: speed does not depend on their content, and no download is needed. For full MNIST
with accuracy, run ``python -m bench.compare_torch``.
"""
import numpy as np
import pytest

import fastcnn
from fastcnn import models

from ._common import BACKENDS, fastcnn_backend, param_backends, run_measured

# preset -> (batch size, steps per round)
TRAINING = {"lenet": (64, 40), "tiny_cnn": (32, 40), "pytorch_example": (64, 4), "mlp": (60000, 1), "resnet": (128, 8)}


def _trainer(name, backend):
    batch, steps = TRAINING[name]
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    model = models.PRESETS[name](seed=0)
    recipe = model.recipe.with_overrides(batch_size=batch)
    if backend == "torch":
        from . import torch_peer

        net = torch_peer.mirror(model)
        return lambda: torch_peer.train_epochs(net, x, y, recipe, 1)
    kwargs = recipe.fit_kwargs()
    kwargs.update(epochs=1)
    kwargs["optimizer"].total_steps = 10**6

    def train():
        with fastcnn.use_backend(fastcnn_backend(backend) or "auto"):
            model.fit(x, y, verbose=0, **kwargs)

    return train


@param_backends(BACKENDS)
@pytest.mark.parametrize("name", list(TRAINING))
def bench_training(benchmark, name, backend):
    batch, steps = TRAINING[name]
    shape = f"{name}, {steps} steps of batch {batch}"
    run_measured(benchmark, op="train", phase="epoch slice", shape=shape, backend=backend, fn=_trainer(name, backend))
    benchmark.extra_info["images"] = batch * steps
