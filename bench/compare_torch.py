"""Train the same networks on full MNIST with fastcnn and with PyTorch CPU, in one run, and compare.

    python -m bench.compare_torch                       # every preset, 3 epochs each
    python -m bench.compare_torch --presets lenet mlp --epochs 5 --headline

For each preset both libraries start from the same weights and train with the same batch size,
optimizer, schedule and thread count, taking turns epoch by epoch (so the machine's slow spells fall
on both); the table gives seconds per epoch (median over the epochs; the first fastcnn epoch includes
loading the Numba kernels and the dispatcher's choices), the ratio and test accuracy. ``mlp`` is
full-batch gradient descent for 500 iterations, timed in total and also against the tutorial's
plain-NumPy loop. ``--headline`` times ``fastcnn train`` end to end in a fresh process and PyTorch
training the same LeNet recipe. PyTorch runs at its best: the script starts itself again with its
allocator settings (:data:`bench._peer_env.TORCH_MALLOC_ENV`) when they are missing. Needs PyTorch
(``pip install torch``).
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from typing import Iterator

import numpy as np

import fastcnn
from fastcnn import datasets, models

from ._peer_env import ensure_torch_malloc_env

try:
    import torch

    from . import torch_peer
except ImportError:  # pragma: no cover - reported in main()
    torch = None

# preset -> (batch size, target fastcnn/PyTorch s per epoch); the mlp's target is against plain NumPy.
PRESETS = {"lenet": (64, 0.45), "tiny_cnn": (32, 0.5), "pytorch_example": (64, 1.0), "mlp": (60000, 0.5)}
MLP_ITERATIONS = 500


def numpy_mlp(model, x: np.ndarray, y: np.ndarray, iterations: int) -> float:
    """The tutorial's full-batch MLP in plain NumPy float32, from ``model``'s initial weights; returns seconds."""
    state = model.state_dict()
    w1, b1, w2, b2 = (state[k].copy() for k in ("1.weight", "1.bias", "3.weight", "3.bias"))
    xf = x.reshape(len(x), -1)
    onehot = np.eye(10, dtype=np.float32)[y]
    lr = np.float32(model.recipe.lr)
    start = time.perf_counter()
    for _ in range(iterations):
        z1 = xf @ w1.T + b1
        a1 = np.maximum(z1, 0)
        z2 = a1 @ w2.T + b2
        e = np.exp(z2 - z2.max(axis=1, keepdims=True))
        dz2 = (e / e.sum(axis=1, keepdims=True) - onehot) / len(x)
        dw2, db2 = dz2.T @ a1, dz2.sum(axis=0)
        dz1 = (dz2 @ w2) * (z1 > 0)
        dw1, db1 = dz1.T @ xf, dz1.sum(axis=0)
        w1 -= lr * dw1
        b1 -= lr * db1
        w2 -= lr * dw2
        b2 -= lr * db2
    return time.perf_counter() - start


def fastcnn_epochs(model, x, y, recipe, epochs: int) -> Iterator[float]:
    """Train with ``Sequential.fit`` one epoch at a time (one schedule over all of them); yields each
    epoch's seconds as it ends."""
    kwargs = recipe.fit_kwargs()
    kwargs["optimizer"].total_steps = epochs * math.ceil(len(x) / recipe.batch_size)
    kwargs["epochs"] = 1
    for epoch in range(epochs):
        start = time.perf_counter()
        model.fit(x, y, seed=epoch, verbose=0, **kwargs)
        yield time.perf_counter() - start


def compare(name: str, epochs: int, data) -> dict:
    (x, y), (xt, yt) = data
    batch, target = PRESETS[name]
    model = models.PRESETS[name](seed=0)
    recipe = model.recipe.with_overrides(batch_size=batch)
    net = torch_peer.mirror(model)
    if name == "mlp":
        recipe = recipe.with_overrides(epochs=MLP_ITERATIONS)
        plain = numpy_mlp(model, x, y, MLP_ITERATIONS)
        start = time.perf_counter()  # one fit call for all iterations, as a user would train it
        model.fit(x, y, seed=0, verbose=0, **recipe.fit_kwargs())
        ours = time.perf_counter() - start
        theirs = sum(torch_peer.train_epochs(net, x, y, recipe, MLP_ITERATIONS))
        unit = f"s for {MLP_ITERATIONS} iterations"
        baseline, baseline_name = plain, "plain NumPy"
    else:
        # Epochs alternate between the two, so the machine's slow spells fall on both alike.
        turns = zip(fastcnn_epochs(model, x, y, recipe, epochs), torch_peer.epoch_times(net, x, y, recipe, epochs))
        ours, theirs = (statistics.median(side) for side in zip(*turns))
        unit = f"s/epoch, median of {epochs}"
        baseline, baseline_name = theirs, "PyTorch"
    acc = float((model.predict(xt).argmax(1) == yt).mean())
    return dict(preset=name, batch=batch, unit=unit, fastcnn=ours, torch=theirs, baseline_name=baseline_name,
                ratio=ours / baseline, target=target, fastcnn_acc=acc, torch_acc=torch_peer.accuracy(net, xt, yt),
                plain_numpy=baseline if name == "mlp" else None)


def headline(data) -> tuple[float, float, float]:
    """``fastcnn train`` wall time in a fresh process, and PyTorch's time and accuracy for the same recipe."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fastcnn", "train", "--quiet", "--out", "/dev/null"],
                         capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    acc = float(out.split("test accuracy: ")[1].split()[0])
    (x, y), (xt, yt) = data
    model = models.lenet(seed=0)
    net = torch_peer.mirror(model)
    start = time.perf_counter()
    torch_peer.train_epochs(net, x, y, model.recipe, model.recipe.epochs)
    torch_acc = torch_peer.accuracy(net, xt, yt)
    return wall, acc, time.perf_counter() - start, torch_acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_torch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--epochs", type=int, default=3, help="epochs per preset (median taken); default 3")
    parser.add_argument("--threads", type=int, default=fastcnn.threads.max_threads())
    parser.add_argument("--headline", action="store_true", help="also time `fastcnn train` end to end")
    args = parser.parse_args(argv)
    if torch is None:
        print("PyTorch is not installed: pip install torch (CPU build) to compare.", file=sys.stderr)
        return 1
    ensure_torch_malloc_env()  # PyTorch at its best: re-executes this script when the allocator settings are missing
    fastcnn.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    data = datasets.load_mnist(as_float=True, quiet=True)
    print(f"fastcnn {fastcnn.__version__} vs torch {torch.__version__}, {args.threads} threads, "
          f"60,000 MNIST training images, float32; {fastcnn.kernels.jit.cpu_description()}")
    print("| preset | batch | fastcnn | PyTorch | ratio | target | met | fastcnn test acc | PyTorch test acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.presets:
        r = compare(name, args.epochs, data)
        extra = f" (plain NumPy {r['plain_numpy']:.2f} s)" if r["plain_numpy"] else ""
        print(f"| {name} | {r['batch']} | {r['fastcnn']:.2f} {r['unit']} | {r['torch']:.2f}{extra} | "
              f"{r['ratio']:.2f}x {r['baseline_name']} | <= {r['target']:.2f}x | {'yes' if r['ratio'] <= r['target'] else 'NO'} | "
              f"{r['fastcnn_acc']:.4f} | {r['torch_acc']:.4f} |", flush=True)
    if args.headline:
        wall, acc, torch_s, torch_acc = headline(data)
        print(f"\n`fastcnn train` (defaults): {acc:.4f} test accuracy in {wall:.1f} s wall, start to final evaluation "
              f"(target >= 0.99 in <= 5 s, warm); PyTorch, same LeNet recipe: {torch_s:.1f} s of training, {torch_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
