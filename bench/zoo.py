"""A model zoo: common CNN shapes that users bring, each timed in fastcnn and in PyTorch at its best.

    python -m bench.zoo                       # every net, 5 interleaved rounds, medians (needs torch)
    python -m bench.zoo --nets vgg_bn strided --rounds 7 --threads 2

Each network is defined once, as fastcnn layers; its PyTorch twin is built from it with the same
weights (:func:`bench.torch_peer.mirror`). Three phases are timed per network: one training step
(forward, cross-entropy, backward, an SGD-with-momentum update) at the net's training batch, and
inference (eval mode, no gradients) at batch 1 and 256. fastcnn runs under each backend policy
(``numba``, ``numpy`` and ``auto``, whose per-op choices are measured afresh when the script starts and
not timed) and PyTorch with the same number of threads and the allocator settings of
``bench._peer_env.TORCH_MALLOC_ENV`` (the script re-executes itself with them when they are missing).

Rounds are interleaved: every round times every (network, phase, backend) once, in a rotating backend
order, so a slow spell of a shared machine falls on all sides of a ratio; the table gives the medians.
Each timed block starts after a pause and one untimed call (:func:`settle`), so that no backend's
timed calls run while the previous one's threads still spin.
The same rows, measured by pytest-benchmark, come from ``pytest --benchmark`` (``bench/bench_zoo.py``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastcnn
from fastcnn import layers as L
from fastcnn.blocks import Residual
from fastcnn.kernels import blas

INFER_BATCHES = (1, 256)
FASTCNN_BACKENDS = ("numba", "numpy", "auto")


@dataclass(frozen=True)
class Net:
    """One zoo network: its fastcnn layers (built fresh by ``layers()``), per-sample input shape,
    training batch size and what it covers."""

    name: str
    covers: str
    input_shape: tuple[int, int, int]
    train_batch: int
    layers: Callable[[], list[L.Layer]]


def _conv_bn_relu(cin: int, cout: int) -> list[L.Layer]:
    return [L.Conv2D(cin, cout, 3, padding="same", bias=False), L.BatchNorm2D(cout), L.ReLU()]


def _vgg_bn() -> list[L.Layer]:
    return [*_conv_bn_relu(3, 32), *_conv_bn_relu(32, 32), L.MaxPool2D(2),
            *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), L.MaxPool2D(2),
            L.Flatten(), L.Dense(64 * 8 * 8, 10)]


def _strided() -> list[L.Layer]:
    return [L.Conv2D(3, 32, 3, padding=1), L.ReLU(),
            L.Conv2D(32, 64, 3, stride=2, padding=1), L.ReLU(),     # 32x32 -> 16x16
            L.Conv2D(64, 128, 3, stride=2, padding=1), L.ReLU(),    # 16x16 -> 8x8
            L.AvgPool2D(8), L.Flatten(), L.Dense(128, 10)]


def _lenet5() -> list[L.Layer]:
    return [L.Conv2D(1, 6, 5, padding=2), L.Tanh(), L.AvgPool2D(2),
            L.Conv2D(6, 16, 5), L.Tanh(), L.AvgPool2D(2),
            L.Flatten(), L.Dense(400, 120), L.Tanh(), L.Dense(120, 84), L.Tanh(), L.Dense(84, 10)]


def _mnist_bn() -> list[L.Layer]:
    return [*_conv_bn_relu(1, 16), L.MaxPool2D(2), *_conv_bn_relu(16, 32), L.MaxPool2D(2),
            L.Flatten(), L.Dense(32 * 7 * 7, 128, bias=False), L.BatchNorm1D(128), L.ReLU(), L.Dense(128, 10)]


def _nin() -> list[L.Layer]:
    return [L.Conv2D(3, 64, 3, padding=1), L.ReLU(), L.Conv2D(64, 32, 1), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(32, 64, 3, padding=1), L.ReLU(), L.Conv2D(64, 64, 1), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(64, 10, 1), L.AvgPool2D(8), L.Flatten()]


def _wide() -> list[L.Layer]:
    return [L.Conv2D(3, 64, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
            L.Conv2D(64, 128, 3, padding=1), L.ReLU(), L.MaxPool2D(2),               # 128 ch at 16x16
            L.Conv2D(128, 128, 3, padding=1), L.ReLU(), L.Conv2D(128, 256, 3, padding=1), L.ReLU(),  # at 8x8
            L.AvgPool2D(8), L.Flatten(), L.Dense(256, 10)]


def _depthwise_separable(cin: int, cout: int, stride: int = 1) -> list[L.Layer]:
    """MobileNet's block: a 3x3 depthwise conv (groups = channels), BN, ReLU, a 1x1 pointwise conv, BN, ReLU."""
    return [L.Conv2D(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), L.BatchNorm2D(cin), L.ReLU(),
            L.Conv2D(cin, cout, 1, bias=False), L.BatchNorm2D(cout), L.ReLU()]


def _mobilenet_dw() -> list[L.Layer]:
    return [*_conv_bn_relu(3, 32),
            *_depthwise_separable(32, 64),
            *_depthwise_separable(64, 128, stride=2),      # 32x32 -> 16x16
            *_depthwise_separable(128, 128),
            *_depthwise_separable(128, 256, stride=2),     # 16x16 -> 8x8
            L.GlobalAvgPool2D(), L.Dense(256, 10)]


def _basic_block(cin: int, cout: int, stride: int = 1) -> list[L.Layer]:
    """ResNet's basic block and the ReLU after it: two 3x3 conv + BN in the body; the shortcut is the
    identity, or a 1x1 conv + BN with the body's stride where the shape changes."""
    body = [L.Conv2D(cin, cout, 3, stride=stride, padding=1, bias=False), L.BatchNorm2D(cout), L.ReLU(),
            L.Conv2D(cout, cout, 3, padding=1, bias=False), L.BatchNorm2D(cout)]
    shortcut = None if stride == 1 and cin == cout else [L.Conv2D(cin, cout, 1, stride=stride, bias=False),
                                                         L.BatchNorm2D(cout)]
    return [Residual(body, shortcut), L.ReLU()]


def _resnet_mini() -> list[L.Layer]:
    return [*_conv_bn_relu(3, 16),
            *_basic_block(16, 16),
            *_basic_block(16, 32, stride=2),               # 32x32 -> 16x16
            *_basic_block(32, 64, stride=2),               # 16x16 -> 8x8
            L.GlobalAvgPool2D(), L.Dense(64, 10)]


ZOO: dict[str, Net] = {net.name: net for net in (
    Net("vgg_bn", "VGG-style same-padded 3x3 convs + BatchNorm2D + ReLU, max-pool", (3, 32, 32), 64, _vgg_bn),
    Net("strided", "stride-2 3x3 downsampling, average pooling at the end", (3, 32, 32), 64, _strided),
    Net("lenet5", "classic LeNet-5: 5x5 convs, tanh, 2x2 average pooling", (1, 28, 28), 64, _lenet5),
    Net("mnist_bn", "small MNIST net with BatchNorm2D and BatchNorm1D", (1, 28, 28), 64, _mnist_bn),
    Net("nin", "network-in-network: 1x1 convs between 3x3 ones, global average pool", (3, 32, 32), 64, _nin),
    Net("wide", "wide layers: 128 channels at 16x16, 128 and 256 at 8x8", (3, 32, 32), 32, _wide),
    Net("mobilenet_dw", "MobileNet-style depthwise-separable blocks (3x3 depthwise, groups = channels, + 1x1 "
        "pointwise, BN, ReLU), stride-2 depthwise downsampling, global average pool", (3, 32, 32), 32, _mobilenet_dw),
    Net("resnet_mini", "ResNet-style basic blocks (3x3 conv + BN twice) with identity and 1x1 stride-2 conv + BN "
        "shortcuts, global average pool", (3, 32, 32), 64, _resnet_mini),
)}


def build(name: str, seed: int = 0) -> fastcnn.Sequential:
    """A fresh zoo network ``name`` with weights drawn from ``seed``."""
    net = ZOO[name]
    fastcnn.seed(seed)
    return fastcnn.Sequential(net.layers(), input_shape=net.input_shape)


def phases(name: str, train_batch: int | None = None, infer_batches=INFER_BATCHES) -> list[tuple[str, str, int]]:
    """``(phase label, kind, batch)`` for a network: one training step and inference per batch size."""
    train = ZOO[name].train_batch if train_batch is None else train_batch
    return [(f"train b{train}", "train", train)] + [(f"infer b{b}", "infer", b) for b in infer_batches]


def data(name: str, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 images and labels for ``name`` (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + ZOO[name].input_shape, dtype=np.float32)
    return x, rng.integers(0, 10, batch)


def fastcnn_runner(model: fastcnn.Sequential, kind: str, x: np.ndarray, y: np.ndarray, backend: str) -> Callable[[], None]:
    """One training step (``kind="train"``) or one inference of ``model`` on ``x`` under ``backend``'s policy.

    The step is what :meth:`~fastcnn.Sequential.fit` does per batch: forward with training on, the
    loss, backward (no input gradient) and the optimizer's update, with the allocator as ``fit`` sets it
    (:func:`fastcnn.memory.keep_freed_memory`).
    """
    if kind == "infer":
        def infer():
            with fastcnn.use_backend(backend):
                model.predict(x, batch_size=len(x))
        return infer
    loss = fastcnn.CrossEntropyLoss()
    opt = fastcnn.SGD(0.01, momentum=0.9)
    fastcnn.memory.keep_freed_memory()  # as fit has it: the step's arrays reuse what the last one freed

    def step():
        with fastcnn.use_backend(backend), blas.held():
            out = model.forward(x, training=True)
            loss(out, y)
            model.backward(loss.backward(), input_grad=False)
            opt.step(model.named_parameters())
    return step


def torch_runner(model: fastcnn.Sequential, kind: str, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """The same step or inference in PyTorch, on a twin of ``model`` with its current weights."""
    import torch

    from . import torch_peer

    net = torch_peer.mirror(model)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    if kind == "infer":
        net.eval()

        def infer():
            with torch.inference_mode():
                net(tx)
        return infer
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        opt.step()
    return step


def runner(name: str, kind: str, batch: int, backend: str, seed: int = 0) -> Callable[[], None]:
    """A callable timing one phase of zoo network ``name`` under ``backend`` (a fastcnn policy or ``torch``)."""
    model = build(name, seed)
    x, y = data(name, batch, seed)
    if backend == "torch":
        return torch_runner(model, kind, x, y)
    return fastcnn_runner(model, kind, x, y, backend)


def choice_counts(decisions: list[dict]) -> dict[str, int]:
    """How many of ``decisions`` (from :func:`fastcnn.dispatch_decisions`) chose each backend."""
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d["choice"]] = counts.get(d["choice"], 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------- script
SETTLE_S = 0.05  # long enough for another library's spinning threads to go to sleep


def settle(fn: Callable[[], object]) -> None:
    """Pause, then call ``fn`` once untimed: for a timed block that follows another library's (or
    backend's) in an interleaved round. Thread pools spin for a while after a parallel region (OpenMP,
    ONNX Runtime, TBB); on a machine with as many threads as cores, a pool still spinning takes a core
    from the next library's first calls. The untimed call wakes the next one's own threads."""
    time.sleep(SETTLE_S)
    fn()


def _calls_per_sample(fn: Callable[[], None], min_seconds: float) -> int:
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, min(1000, int(min_seconds / max(once, 1e-6))))


def measure(names: list[str], backends: list[str], rounds: int, min_sample_s: float,
            log: Callable[[str], None]) -> list[dict]:
    """Median seconds per call for every (network, phase, backend), from ``rounds`` interleaved rounds."""
    cases = []
    fastcnn.clear_dispatch_decisions()  # auto measures afresh, once per signature for the whole run
    for name in names:
        for label, kind, batch in phases(name):
            for backend in backends:
                log(f"  preparing {name} {label} {backend}")
                fn = runner(name, kind, batch, backend)
                known = {(d["op"], d["signature"]) for d in fastcnn.dispatch_decisions()}
                fn()  # compiles, and for auto measures the choices (not timed)
                choice = (choice_counts([d for d in fastcnn.dispatch_decisions() if (d["op"], d["signature"]) not in known])
                          if backend == "auto" else None)
                cases.append(dict(name=name, phase=label, kind=kind, backend=backend, fn=fn, choice=choice,
                                  calls=_calls_per_sample(fn, min_sample_s), samples=[]))
    by_row: dict[tuple, list[dict]] = {}
    for case in cases:
        by_row.setdefault((case["name"], case["phase"]), []).append(case)
    for r in range(rounds):
        log(f"  round {r + 1}/{rounds}")
        for row in by_row.values():
            for case in row[r % len(row):] + row[: r % len(row)]:  # rotate who goes first
                settle(case["fn"])
                start = time.perf_counter()
                for _ in range(case["calls"]):
                    case["fn"]()
                case["samples"].append((time.perf_counter() - start) / case["calls"])
    return [dict(name=c["name"], phase=c["phase"], kind=c["kind"], backend=c["backend"], choice=c["choice"],
                 seconds=statistics.median(c["samples"]), spread=_spread(c["samples"])) for c in cases]


def _spread(samples: list[float]) -> float:
    """(max - min) / median of a case's samples: how noisy its rounds were."""
    med = statistics.median(samples)
    return (max(samples) - min(samples)) / med if med else 0.0


def main(argv: list[str] | None = None) -> int:
    from ._common import bench_threads, ensure_torch_malloc_env, torch
    from .summary import zoo_rows, zoo_table, zoo_verdicts

    parser = argparse.ArgumentParser(prog="python -m bench.zoo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--nets", nargs="+", choices=list(ZOO), default=list(ZOO))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken); default 5")
    parser.add_argument("--threads", type=int, default=bench_threads(),
                        help="threads for fastcnn and PyTorch alike; default FASTCNN_BENCH_THREADS or all")
    parser.add_argument("--min-sample-ms", type=float, default=20.0,
                        help="repeat fast calls until a sample lasts this long; default 20")
    parser.add_argument("--backends", nargs="+", choices=fastcnn.available_backends() + ("auto", "torch"),
                        default=[b for b in FASTCNN_BACKENDS if b in fastcnn.available_backends() + ("auto",)] + ["torch"])
    args = parser.parse_args(argv)
    if "torch" in args.backends:
        if torch is None:
            print("PyTorch is not installed: timing fastcnn only (pip install torch for the ratios).", file=sys.stderr)
            args.backends.remove("torch")
        else:
            ensure_torch_malloc_env()  # re-executes this script when the allocator settings are missing
            torch.set_num_threads(args.threads)
    fastcnn.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    start = time.perf_counter()
    results = measure(args.nets, args.backends, args.rounds, args.min_sample_ms / 1e3, log)
    rows = zoo_rows(results)
    print(f"fastcnn {fastcnn.__version__}, torch {torch.__version__ if torch else 'absent'}; {args.threads} threads; "
          f"float32; median of {args.rounds} interleaved rounds; "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}; "
          f"{fastcnn.kernels.jit.cpu_description()}")
    print(zoo_table(rows))
    print("ms: median per call. auto chose: the backends of the decisions auto made for this row's new op "
          "signatures. spread: (max - min) / median over the rounds, for the row's noisiest backend; "
          "a large spread means a busy machine, so rerun before trusting a ratio.")
    for line in zoo_verdicts(rows):
        print(line)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
