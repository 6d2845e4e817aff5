"""The ``fastcnn`` command: ``train``, ``predict``, ``export`` and ``info``."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import threadpoolctl

from . import _files, _warmup, datasets, dispatch, distributed, models, threads
from ._version import __version__
from . import functional as F
from .callbacks import Callback
from .kernels import jit
from .tables import format_table


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
    train.add_argument("--out", help="where to save the trained model (default: the preset's name, e.g. lenet.npz, "
                       "so that presets never overwrite each other's models)")
    train.add_argument("--plot", metavar="DIR", help="write training curves, test digits and a confusion matrix (needs matplotlib)")
    train.add_argument("--parents", action="store_true", help="create the folders of --out and --plot if they do not exist")
    train.add_argument("--data", metavar="PATH", help="local MNIST (IDX directory or mnist.pkl.gz) instead of the cache")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over MPI: `mpiexec -n N fastcnn train --distributed` (needs fastcnn[mpi]); "
                            "--threads is then per process (default: this host's cores / its processes)")
    train.add_argument("--sync-batchnorm", action="store_true",
                       help="with --distributed: batch norm over the global batch, not each process's share "
                            "(two small collective calls per batch-norm layer and step)")

    predict = sub.add_parser("predict", help="classify a digit with a saved model")
    predict.add_argument("model", help="a model saved by `fastcnn train` or Sequential.save")
    predict.add_argument("image", nargs="?", help="a picture of one digit (PNG, JPEG, ... any size; needs Pillow) "
                         "or an IDX image file")
    predict.add_argument("--index", type=int, default=None, help="which image: of the IDX file, or of the MNIST test set")
    predict.add_argument("--no-preprocess", action="store_true",
                         help="classify the picture as it is (resized to 28x28) instead of cropping the digit, "
                              "fitting it to 20x20 and centring it as MNIST's digits were")
    predict.add_argument("--show", metavar="OUT.png", help="write the 28x28 image that is classified")
    predict.add_argument("--parents", action="store_true", help="create --show's folder if it does not exist")

    export = sub.add_parser("export", help="write a saved model as ONNX (needs fastcnn[onnx])")
    export.add_argument("model", help="a model saved by `fastcnn train` or Sequential.save")
    export.add_argument("out", help="the ONNX file to write")

    sub.add_parser("info", help="versions, threads, caches and the dispatcher's saved decisions")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "predict": _predict, "export": _export, "info": _info}[args.command](args, parser)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"fastcnn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemError) as exc:  # `train` says more itself
        if not _interrupt(exc):
            raise
        print(f"\nfastcnn {args.command}: interrupted", file=sys.stderr)
        _clear_stale_interrupt()
        return 130


def _interrupt(exc: BaseException | None) -> bool:
    """Whether ``exc`` is Ctrl-C: a KeyboardInterrupt, or the SystemError a C function raises when one
    interrupts the Python code it calls (Numba's dispatcher, loading a kernel from its cache)."""
    while isinstance(exc, SystemError):
        exc = exc.__cause__ or exc.__context__
    return isinstance(exc, KeyboardInterrupt)


def _check_out_dir(path, parents: bool) -> None:
    """A file's folder must exist (a typo must not create a tree of folders) unless ``--parents``."""
    folder = Path(path).expanduser().parent
    if folder.is_dir():
        return
    if folder.exists():
        raise ValueError(f"cannot write {path}: {folder} is not a folder")
    if not parents:
        raise ValueError(f"cannot write {path}: the folder {folder} does not exist (create it, or pass --parents)")
    folder.mkdir(parents=True, exist_ok=True)


class _EpochCounter(Callback):
    """How far ``fastcnn train`` got (stage, epochs done of how many), for the line Ctrl-C prints."""

    def __init__(self) -> None:
        self.done, self.epochs, self.stage = 0, 0, "preparing"

    def on_epoch_end(self, model, epoch, logs):
        self.done = epoch + 1


def _train(args, parser) -> int:
    if args.sync_batchnorm and not args.distributed:
        parser.error("--sync-batchnorm synchronises batch norm over the processes of --distributed training; "
                     "add --distributed")
    args.out = args.out or f"{args.model}.npz"
    _check_out_dir(args.out, args.parents)
    if args.plot:
        from . import plots

        plots.pyplot()  # fail now, not after training
        _check_out_dir(args.plot, args.parents)  # DIR itself is made when the plots are written
    counter = _EpochCounter()
    try:
        if not args.distributed:
            return _run_training(args, counter, None)
        w = distributed.world()
        if w.size == 1:
            print("fastcnn train: --distributed, but this is the only process (start several with "
                  "`mpiexec -n N fastcnn train --distributed`): training in one process", file=sys.stderr)
            return _run_training(args, counter, None)
        if not args.threads:  # processes x threads = this host's cores
            args.threads = max(1, threads.max_threads() // w.local_size)
        with distributed.abort_on_error(w):  # an error on one rank stops all; rank 0 alone reports and writes
            return _run_training(args, counter, w)
    except (KeyboardInterrupt, SystemError) as exc:
        if not _interrupt(exc):
            raise
        _clear_stale_interrupt()
        if counter.stage == "training":
            where = f"at epoch {counter.done + 1} of {counter.epochs}"
        else:
            where = {"preparing": "before training", "evaluating": "after training, before saving"}.get(counter.stage, "")
        saved = (f"the model was saved to {args.out}" if counter.stage == "saved" else
                 f"nothing was saved ({args.out} is as it was)")
        print(f"\nfastcnn train: interrupted {where}; {saved}".replace(" ;", ";"), file=sys.stderr)
        return 130


def _clear_stale_interrupt() -> None:
    """Let ``fastcnn train`` exit with status 130 after Ctrl-C, as promised.

    CPython remembers a KeyboardInterrupt that escaped code it ran through its ``PyRun_*`` functions
    (as happens when Ctrl-C lands in an import inside Numba's compiler) and at exit kills the process
    with SIGINT whatever status it was given; only the next such run resets that flag. So run one.
    """
    if sys.implementation.name == "cpython":
        import ctypes

        try:
            ctypes.pythonapi.PyRun_SimpleString(b"pass")
        except (AttributeError, OSError):
            pass


def _run_training(args, counter: "_EpochCounter", w) -> int:
    """``fastcnn train`` in this process, or on every rank of the MPI world ``w`` (None: one process)."""
    start = time.perf_counter()
    root = w is None or w.is_root
    say = print if root else lambda *a, **k: None
    if args.threads:
        threads.set_num_threads(args.threads)
    if args.backend:
        dispatch.set_backend(args.backend)
    model = models.PRESETS[args.model](seed=args.seed)
    recipe = model.recipe.with_overrides(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr)

    def load():
        return datasets.load_mnist(path=args.data, as_float=True, quiet=not root)

    # Ranks on one host share its cache: the first fetches MNIST if need be, the others then read it.
    (x, y), (xt, yt) = load() if w is None else distributed.run_first_per_host(w, load)
    if recipe.train_limit:
        x, y = x[: recipe.train_limit], y[: recipe.train_limit]
    say(f"fastcnn {__version__}: training {args.model} on {len(x):,} MNIST images "
        f"({recipe.optimizer} lr {recipe.lr:g}, batch {recipe.batch_size}, {recipe.epochs} epochs; "
        f"backend {dispatch.get_backend()}, {threads.get_num_threads()} threads"
        + ("" if w is None else f" in each of {w.size} processes") + ")")
    say(model.summary())
    counter.epochs = recipe.epochs
    processes = 1 if w is None else w.size
    batch = -(-recipe.batch_size // processes)  # a process's share of a batch (the largest)

    def warm_up():
        # the forward pass and the loss, on a whole batch and on the epoch's last one; on a cold cache,
        # a second process compiles the conv gradients meanwhile
        with _warmup.gradients_compiled_beside(model, batch):
            warm = batch + -(-(len(x) % recipe.batch_size) // processes)
            F.softmax_cross_entropy(model.predict(x[:warm], batch_size=batch), y[:warm])

    if w is None:
        warm_up()
    else:  # on a cold Numba cache the host's first rank compiles, the others then load its kernels
        distributed.run_first_per_host(w, warm_up)
    # With --plot the test set is scored after every epoch too, for the training curves.
    counter.stage = "training"
    history = model.fit(x, y, seed=args.seed, verbose=0 if args.quiet else 1, callbacks=[counter],
                        validation_data=(xt, yt) if args.plot else None, distributed=w is not None,
                        sync_batchnorm=w is not None and args.sync_batchnorm,
                        **recipe.fit_kwargs(args.seed))
    if not root:
        return 0
    counter.stage = "evaluating"
    predicted = model.predict(xt, batch_size=batch).argmax(axis=1)  # no new shapes to measure
    accuracy = float((predicted == yt).mean())
    model.save(args.out)  # atomic: Ctrl-C during the write leaves the old file or none
    counter.stage = "saved"
    elapsed = time.perf_counter() - start
    print(f"test accuracy: {accuracy:.4f} ({int((predicted != yt).sum())} of {len(yt):,} wrong)")
    print(f"model saved to {args.out}")
    if args.plot:
        from . import plots

        for path in plots.save_all(args.plot, history, xt, yt, predicted):
            print(f"wrote {path}")
    print(f"total wall time: {elapsed:.1f} s")
    return 0


def _predict(args, parser) -> int:
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
    elif _is_idx(args.image):
        images = datasets.read_idx(args.image)
        index = args.index or 0
        if images.ndim != 3 or not 0 <= index < len(images):
            raise ValueError(f"{args.image}: expected IDX images (N, H, W) and --index in [0, {len(images)}), "
                             f"got shape {images.shape} and index {index}")
        image, truth, source = images[index].astype(np.float32) / 255, None, f"{args.image}[{index}]"
    else:
        from .images import load_digit

        image, truth, source = load_digit(args.image, preprocess=not args.no_preprocess), None, args.image
    if args.show:
        from .images import save_gray

        _check_out_dir(args.show, args.parents)
        save_gray(args.show, image)
    scores = model.predict(image[None, None])[0]
    probs = scores if np.all(scores >= 0) and abs(scores.sum() - 1) < 1e-4 else F.softmax(scores)
    digit = int(np.argmax(probs))
    print(f"{source}: predicted {digit}" + ("" if truth is None else f" (true {truth})"))
    for k, p in enumerate(probs):
        print(f"  {k}: {p:6.4f} {'#' * int(round(p * 40))}")
    if args.show:
        print(f"the 28x28 image classified: {args.show}")
    return 0


def _export(args, parser) -> int:
    from .model import load_model

    model = load_model(args.model)
    _check_out_dir(args.out, parents=False)
    model.export_onnx(args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes; input (N, {', '.join(map(str, model.input_shape))}))")
    return 0


def _is_idx(path) -> bool:
    """IDX files (MNIST's own format) start with two zero bytes; no image format does."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\0\0"


def _info(args, parser) -> int:
    from . import functional

    if jit.NUMBA_AVAILABLE:  # a kernel big enough to run in parallel starts the threading layer it reports
        functional.max_pool2d(np.zeros((1, 16, 64, 64), np.float32), 2, backend="numba")
    blas, blas_note = _blas_libraries()
    rows = [
        ("fastcnn", __version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("numba", jit.numba.__version__ if jit.NUMBA_AVAILABLE else "not installed (numpy backend only)"),
        ("backends", ", ".join(dispatch.available_backends()) + f" (policy: {dispatch.get_backend()})"),
        ("threading layer", jit.threading_layer()),
        ("cpu", jit.cpu_description()),
        ("threads", f"{threads.get_num_threads()} of {threads.max_threads()}"),
        ("BLAS", blas),
        *([("", blas_note)] if blas_note else []),
        ("cache directory", str(_files.home_dir())),
        ("MNIST cached", "yes" if (_files.home_dir() / datasets.CACHE_NAME).exists() else "no"),
        ("numba cache", os.environ.get("NUMBA_CACHE_DIR") or "beside the package (__pycache__)"),
        ("dispatch decisions", str(dispatch.decisions_path())),
    ]
    print(format_table(rows))
    print()
    print(dispatch.dispatch_report())
    return 0


def _blas_libraries() -> tuple[str, str]:
    """The BLAS libraries loaded in this process, each with the package that brought it, and a note on why
    there can be several."""
    found = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not found:
        return "none found", ""
    listed = "; ".join(f"{i['internal_api']} {i['version']} from {_owner(i['filepath'])} ({i['num_threads']} threads)"
                       for i in found)
    note = ("(each wheel ships its own BLAS; fastcnn's matrix products run on NumPy's, the others are loaded by the "
            "packages named and idle here; set_num_threads/--threads sets them all)" if len(found) > 1 else "")
    return listed, note


def _owner(filepath: str) -> str:
    """The package a shared library came with: ``numpy`` for ``.../numpy.libs/libopenblas...so``."""
    for part in reversed(Path(filepath).parts[:-1]):
        if part.endswith(".libs"):
            return part[: -len(".libs")]
        if part not in ("lib", "lib64", "linalg", ".dylibs"):
            return part
    return filepath


if __name__ == "__main__":
    sys.exit(main())
