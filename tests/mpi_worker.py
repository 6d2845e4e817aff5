"""Run by tests/test_distributed.py under ``mpiexec -n 2``:
``python mpi_worker.py (train|sync_batchnorm|abort) OUT_DIR``.

``train`` trains small models with ``fit(distributed=True)`` and, on rank 0, the same model in one
process; every rank writes what it saw to ``OUT_DIR/rank<r>.json`` for the test to compare.
``sync_batchnorm`` does the same for a model with batch norm, with and without ``sync_batchnorm=True``.
``abort`` raises on rank 1 in the middle of an epoch; rank 0 must not get past ``fit``.
"""
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import fastcnn
from fastcnn import distributed

SAMPLES = 513  # batch 64: the last batch holds one sample, so rank 1's share of it is empty
BATCH = 64


def data(n=SAMPLES, seed=0):
    """MNIST-shaped random images whose label is the brightest of ten bands (learnable in one epoch)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 28, 28), dtype=np.float32) * 0.5
    y = rng.integers(0, 10, n)
    for i, label in enumerate(y):
        x[i, 0, 2 * label : 2 * label + 3] += 0.5
    return x, y


def model(dropout_and_batchnorm=False):
    layers = [fastcnn.Conv2D(1, 4, 3, rng=1), fastcnn.ReLU(), fastcnn.MaxPool2D(2)]
    layers += [fastcnn.BatchNorm2D(4)] if dropout_and_batchnorm else []
    layers += [fastcnn.Flatten()] + ([fastcnn.Dropout(0.3)] if dropout_and_batchnorm else [])
    layers += [fastcnn.Dense(4 * 13 * 13, 10, rng=2)]
    return fastcnn.Sequential(layers, input_shape=(1, 28, 28))


def digest(m):
    """SHA-256 of the weights and buffers (batch-norm statistics)."""
    return fastcnn._files.sha256_hex(np.concatenate([np.ravel(a).astype(np.float64) for a in m.state_dict().values()]))


def train(out: Path) -> None:
    w = distributed.world()
    x, y = data()
    xv, yv = data(100, seed=1)
    result = {"rank": w.rank, "size": w.size}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = model()
        history = m.fit(x, y, epochs=2, batch_size=BATCH, optimizer=fastcnn.SGD(0.1, momentum=0.9), seed=3,
                        validation_data=(xv, yv), verbose=1, distributed=True)
        result.update(history=history, digest=digest(m), evaluate=m.evaluate(xv, yv))
        result["dropout_digests"], result["dropout_rng_states"] = [], []
        for _ in range(2):  # twice, to see that the masks are reproducible
            d = model(dropout_and_batchnorm=True)
            d.fit(x, y, epochs=2, batch_size=BATCH, seed=5, verbose=0, distributed=True)
            result["dropout_digests"].append(digest(d))
            result["dropout_rng_states"].append(str(d.layers[5].rng.bit_generator.state["state"]))
    result["warnings"] = [str(c.message) for c in caught]
    try:  # rank 1 passes one sample less: a clear error on both ranks, not a hang
        model().fit(x[: SAMPLES - w.rank], y[: SAMPLES - w.rank], verbose=0, distributed=True)
    except ValueError as exc:
        result["mismatch"] = str(exc)
    if w.is_root:  # the same training in one process
        ref = model()
        result["one_process_history"] = ref.fit(x, y, epochs=2, batch_size=BATCH, optimizer=fastcnn.SGD(0.1, momentum=0.9),
                                                seed=3, validation_data=(xv, yv), verbose=0)
        result["one_process_max_weight_diff"] = max(float(np.abs(p - q).max()) for (_, p, _), (_, q, _)
                                                    in zip(m.named_parameters(), ref.named_parameters()))
    (out / f"rank{w.rank}.json").write_text(json.dumps(result, default=int))


def bn_model(one_d=True):
    """Batch norm fused with a ReLU (2-D), and alone (1-D, left out for batches of one sample)."""
    layers = [fastcnn.Conv2D(1, 4, 3, rng=1), fastcnn.BatchNorm2D(4), fastcnn.ReLU(), fastcnn.MaxPool2D(2),
              fastcnn.Flatten(), fastcnn.Dense(4 * 13 * 13, 16, rng=2)]
    layers += [fastcnn.BatchNorm1D(16)] if one_d else [fastcnn.ReLU()]
    layers += [fastcnn.Dense(16, 10, rng=3)]
    return fastcnn.Sequential(layers, input_shape=(1, 28, 28))


def sync_batchnorm(out: Path) -> None:
    w = distributed.world()
    result = {"rank": w.rank}
    runs = {  # name: (samples, epochs, model kwargs, sync)
        "sync": (256, 2, {}, True),
        "per_rank": (256, 2, {}, False),
        "sync_short_shares": (258, 1, {}, True),  # the last batch: 1 + 1 samples, too few for BatchNorm1D per rank
        "sync_empty_share": (257, 1, dict(one_d=False), True),  # rank 1's share of the last batch is empty
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, (n, epochs, kwargs, sync) in runs.items():
            x, y = data(n, seed=4)
            fit = dict(epochs=epochs, batch_size=BATCH, seed=3, verbose=0)
            m = bn_model(**kwargs)
            history = m.fit(x, y, optimizer=fastcnn.SGD(0.05, momentum=0.9), distributed=True, sync_batchnorm=sync,
                            **fit)
            norms = [layer for layer in m.layers if isinstance(layer, fastcnn.layers.BatchNorm)]
            run = result[name] = {"history": history, "digest": digest(m),
                                  "hooks_removed": all(layer.stats_reducer is None for layer in norms)}
            if w.is_root:  # the same training in one process
                ref = bn_model(**kwargs)
                run["one_process_history"] = ref.fit(x, y, optimizer=fastcnn.SGD(0.05, momentum=0.9), **fit)
                run["max_weight_diff"] = max(float(np.abs(p - q).max()) for (_, p, _), (_, q, _)
                                             in zip(m.named_parameters(), ref.named_parameters()))
                mine, theirs = m.state_dict(), ref.state_dict()
                run["max_running_stat_diff"] = max(float(np.abs(mine[k] - theirs[k]).max()) for k in mine
                                                   if "running" in k)
    result["warnings"] = [str(c.message) for c in caught]
    try:  # one rank synchronises, the other not: a clear error on both ranks, not a hang
        bn_model().fit(*data(128), verbose=0, distributed=True, sync_batchnorm=w.rank == 0)
    except ValueError as exc:
        result["mismatch"] = str(exc)
    (out / f"rank{w.rank}.json").write_text(json.dumps(result, default=int))


class FailOnRank1(fastcnn.layers.Layer):
    """Raises in its third training forward pass on rank 1."""

    calls = 0

    def forward(self, x, training=False):
        self.calls += training
        if distributed.world().rank == 1 and self.calls == 3:
            raise RuntimeError("deliberate failure on rank 1")
        return x

    def backward(self, grad):
        return grad


def abort(out: Path) -> None:
    x, y = data()
    m = model()
    m.layers.insert(0, FailOnRank1())
    start = time.perf_counter()
    m.fit(x, y, epochs=50, batch_size=BATCH, verbose=0, distributed=True)
    (out / f"finished{distributed.world().rank}").write_text(f"{time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    {"train": train, "sync_batchnorm": sync_batchnorm, "abort": abort}[sys.argv[1]](Path(sys.argv[2]))
