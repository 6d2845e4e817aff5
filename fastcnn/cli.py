"""The ``fastcnn`` command: ``train``, ``predict`` and ``info``."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, _files, _warmup, datasets, dispatch, models, threads
from . import functional as F
from .kernels import jit


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcnn", description="Fast CNNs on the CPU with NumPy and Numba.")
    parser.add_argument("--version", action="version", version=f"fastcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on full MNIST and evaluate it on the test set")
    train.add_argument("--model", choices=[m for m in models.PRESETS if m != "toy_conv"], default="lenet")
    train.add_argument("--epochs", type=_positive, help="default: the model's recipe")
    train.add_argument("--batch-size", type=_positive, help="default: the model's recipe")
    train.add_argument("--optimizer", choices=["sgd", "adam"], help="default: the model's recipe")
    train.add_argument("--lr", type=_positive_float, help="default: the model's recipe")
    train.add_argument("--backend", choices=dispatch.POLICIES, default=None, help="default: auto (or FASTCNN_BACKEND)")
    train.add_argument("--threads", type=_positive, help=f"threads for kernels and BLAS (1..{threads.max_threads()})")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="model.npz", help="where to save the trained model (default: model.npz)")
    train.add_argument("--plot", metavar="DIR", help="write training curves, test digits and a confusion matrix (needs matplotlib)")
    train.add_argument("--data", metavar="PATH", help="local MNIST (IDX directory or mnist.pkl.gz) instead of the cache")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    predict = sub.add_parser("predict", help="classify a digit with a saved model")
    predict.add_argument("model", help="a model saved by `fastcnn train` or Sequential.save")
    predict.add_argument("image", nargs="?", help="a PNG (white digit on black, any size) or an IDX image file")
    predict.add_argument("--index", type=int, default=None, help="which image: of the IDX file, or of the MNIST test set")

    sub.add_parser("info", help="versions, threads, caches and the dispatcher's saved decisions")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "predict": _predict, "info": _info}[args.command](args, parser)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"fastcnn {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _train(args, parser) -> int:
    start = time.perf_counter()
    if args.plot:
        from . import plots

        plots._pyplot()  # fail now, not after training
    if args.threads:
        threads.set_num_threads(args.threads)
    if args.backend:
        dispatch.set_backend(args.backend)
    model = models.PRESETS[args.model](seed=args.seed)
    recipe = model.recipe.with_overrides(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr)
    (x, y), (xt, yt) = datasets.load_mnist(path=args.data, as_float=True)
    if recipe.train_limit:
        x, y = x[: recipe.train_limit], y[: recipe.train_limit]
    print(f"fastcnn {__version__}: training {args.model} on {len(x):,} MNIST images "
          f"({recipe.optimizer} lr {recipe.lr:g}, batch {recipe.batch_size}, {recipe.epochs} epochs; "
          f"backend {dispatch.get_backend()}, {threads.get_num_threads()} threads)")
    print(model.summary())
    helper = _warmup.start(model, recipe.batch_size)  # on a cold cache, two processes compile at once
    try:  # meanwhile, the forward pass and the loss, on a whole batch and on the epoch's last one
        warm = recipe.batch_size + len(x) % recipe.batch_size
        F.softmax_cross_entropy(model.predict(x[:warm], batch_size=recipe.batch_size), y[:warm])
    finally:
        _warmup.finish(helper)
    # With --plot the test set is scored after every epoch too, for the training curves.
    history = model.fit(x, y, seed=args.seed, verbose=0 if args.quiet else 1,
                        validation_data=(xt, yt) if args.plot else None, **recipe.fit_kwargs(args.seed))
    predicted = model.predict(xt, batch_size=recipe.batch_size).argmax(axis=1)  # no new shapes to measure
    accuracy = float((predicted == yt).mean())
    model.save(args.out)
    elapsed = time.perf_counter() - start
    print(f"test accuracy: {accuracy:.4f} ({int((predicted != yt).sum())} of {len(yt):,} wrong)")
    print(f"model saved to {args.out}")
    if args.plot:
        from . import plots

        order = np.concatenate([np.flatnonzero(predicted != yt)[:16], np.flatnonzero(predicted == yt)])[:48]
        for path in plots.save_all(args.plot, history, xt[order], yt[order], predicted[order]):
            print(f"wrote {path}")
    print(f"total wall time: {elapsed:.1f} s")
    return 0


def _predict(args, parser) -> int:
    from .layers import softmax
    from .model import load_model

    model = load_model(args.model)
    if args.image is None:
        if args.index is None:
            parser.error("give an IMAGE file or --index N (an MNIST test image)")
        _, (xt, yt) = datasets.load_mnist(quiet=True)
        if not 0 <= args.index < len(xt):
            raise ValueError(f"--index must be in [0, {len(xt)}) for the MNIST test set, got {args.index}")
        image, truth = xt[args.index].astype(np.float32) / 255, int(yt[args.index])
        source = f"MNIST test image {args.index}"
    elif Path(args.image).suffix.lower() == ".png":
        image, truth, source = _png_digit(args.image), None, args.image
    else:
        images = datasets.read_idx(args.image)
        index = args.index or 0
        if images.ndim != 3 or not 0 <= index < len(images):
            raise ValueError(f"{args.image}: expected IDX images (N, H, W) and --index in [0, {len(images)}), "
                             f"got shape {images.shape} and index {index}")
        image, truth, source = images[index].astype(np.float32) / 255, None, f"{args.image}[{index}]"
    scores = model.predict(image[None, None])[0]
    probs = scores if np.all(scores >= 0) and abs(scores.sum() - 1) < 1e-4 else softmax(scores)
    digit = int(np.argmax(probs))
    print(f"{source}: predicted {digit}" + ("" if truth is None else f" (true {truth})"))
    for k, p in enumerate(probs):
        print(f"  {k}: {p:6.4f} {'#' * int(round(p * 40))}")
    return 0


def _png_digit(path) -> np.ndarray:
    """A PNG as a 28x28 MNIST-like image: inverted if it is dark on light, resampled if another size."""
    from ._png import read_png_gray

    gray = read_png_gray(path)
    if gray.mean() > 0.5:
        gray = 1.0 - gray
    h, w = gray.shape
    if (h, w) != (28, 28):
        rows = (np.arange(28) * h // 28)[:, None]
        cols = (np.arange(28) * w // 28)[None, :]
        gray = gray[rows, cols]
    return gray.astype(np.float32)


def _info(args, parser) -> int:
    from . import functional

    if jit.NUMBA_AVAILABLE:  # start Numba's thread pool so the layer it picked can be reported
        functional.max_pool2d(np.zeros((1, 1, 2, 2), np.float32), 2, backend="numba")
    try:
        import threadpoolctl

        blas = ", ".join(f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
                         for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas") or "none found"
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    rows = [
        ("fastcnn", __version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("numba", jit.numba.__version__ if jit.NUMBA_AVAILABLE else "not installed (numpy backend only)"),
        ("backends", ", ".join(dispatch.available_backends()) + f" (policy: {dispatch.get_backend()})"),
        ("threading layer", jit.threading_layer()),
        ("threads", f"{threads.get_num_threads()} of {threads.max_threads()}"),
        ("BLAS", blas),
        ("cache directory", str(_files.home_dir())),
        ("MNIST cached", "yes" if (_files.home_dir() / datasets.CACHE_NAME).exists() else "no"),
        ("numba cache", os.environ.get("NUMBA_CACHE_DIR") or "beside the package (__pycache__)"),
        ("dispatch decisions", str(dispatch.decisions_path())),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print()
    print(dispatch.dispatch_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
