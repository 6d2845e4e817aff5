"""Ops with one implementation (BLAS or NumPy under every backend policy): Dense and the fused loss.

Each runs as ``fastcnn`` beside PyTorch, forward and backward together (float32).
"""
import numpy as np
import pytest

from fastcnn.layers import Dense
from fastcnn.losses import CrossEntropyLoss

from ._common import FASTCNN_ONLY, param_backends, rand, run_measured, torch

# (batch, in_features, out_features): LeNet's hidden layer, PyTorch example's, the MLP's full batch.
DENSE_SHAPES = [(64, 400, 128), (64, 9216, 128), (60000, 784, 10)]
LOSS_SHAPES = [(64, 10), (60000, 10)]


def _dense(shape, backend):
    n, fin, fout = shape
    x, gy = rand((n, fin)), rand((n, fout), 1)
    if backend == "torch":
        layer = torch.nn.Linear(fin, fout)
        tx = torch.from_numpy(x).requires_grad_()
        tgy = torch.from_numpy(gy)
        return lambda: layer(tx).backward(tgy)
    layer = Dense(fin, fout, rng=0)

    def step():
        layer.forward(x, training=True)
        return layer.backward(gy)

    return step


def _loss(shape, backend):
    logits = rand(shape)
    labels = np.random.default_rng(1).integers(0, shape[1], shape[0])
    if backend == "torch":
        tl = torch.from_numpy(logits).requires_grad_()
        tt = torch.from_numpy(labels)
        return lambda: torch.nn.functional.cross_entropy(tl, tt).backward()
    loss = CrossEntropyLoss()

    def step():
        loss(logits, labels)
        return loss.backward()

    return step


@param_backends(FASTCNN_ONLY)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "{} -> {} at batch {}".format(s[1], s[2], s[0]))
def bench_dense(benchmark, shape, backend):
    label = f"{shape[1]}->{shape[2]} at batch {shape[0]}"
    run_measured(benchmark, op="dense", phase="fwd+bwd", shape=label, backend=backend, fn=_dense(shape, backend))


@param_backends(FASTCNN_ONLY)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=lambda s: f"{s[1]} classes at batch {s[0]}")
def bench_cross_entropy(benchmark, shape, backend):
    label = f"{shape[1]} classes at batch {shape[0]}"
    run_measured(benchmark, op="softmax+cross-entropy", phase="fwd+bwd", shape=label, backend=backend,
                 fn=_loss(shape, backend))
