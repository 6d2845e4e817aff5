"""Model files: one ``.npz`` holding the architecture (JSON) and the weights, never pickled.

The file is written to a temporary name and renamed, so a crash leaves the old file or none, never half
of one. Each array's SHA-256 is stored in the header and checked on load, so a truncated, altered or
foreign file is refused before any weight reaches the model.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from . import _files
from .layers import LAYER_TYPES
from .model import Sequential

FORMAT = "fastcnn.model"
FORMAT_VERSION = 1
_HEADER = "__fastcnn__"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def save_model(model: Sequential, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` (``.npz``) atomically."""
    from . import __version__

    state = model.state_dict()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastcnn_version": __version__,
        "dtype": model.dtype.name,
        "input_shape": None if model.input_shape is None else list(model.input_shape),
        "layers": model.get_config(),
        "arrays": {name: {"sha256": _digest(a), "shape": list(a.shape), "dtype": a.dtype.name} for name, a in state.items()},
    }
    arrays = {f"w/{name}": a for name, a in state.items()}
    with _files.atomic_write(path) as fh:
        np.savez(fh, **{_HEADER: np.array(json.dumps(header))}, **arrays)


def load_model(path: str | os.PathLike) -> Sequential:
    """Read a model written by :meth:`Sequential.save`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a fastcnn model, is damaged, or comes from a newer format version.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if _HEADER not in data.files:
                raise ValueError(f"{path} is not a fastcnn model file (no {_HEADER} header)")
            header = json.loads(str(data[_HEADER][()]))
            arrays = {name[2:]: data[name] for name in data.files if name.startswith("w/")}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable fastcnn model file ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable fastcnn model file: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastcnn model file")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {version!r}; this fastcnn reads versions up to "
                         f"{FORMAT_VERSION}: upgrade fastcnn to load it")
    expected = header.get("arrays", {})
    if set(expected) != set(arrays):
        raise ValueError(f"{path} is damaged: the header lists arrays {sorted(expected)} but the file holds {sorted(arrays)}")
    for name, array in arrays.items():
        if _digest(array) != expected[name]["sha256"]:
            raise ValueError(f"{path} is damaged: array {name!r} fails its SHA-256 check")
    layers = []
    for spec in header["layers"]:
        cls = LAYER_TYPES.get(spec.get("type"))
        if cls is None:
            raise ValueError(f"{path} uses an unknown layer type {spec.get('type')!r}")
        try:
            layers.append(cls(**spec.get("config", {})))
        except TypeError as exc:
            raise ValueError(f"{path}: cannot rebuild layer {spec!r}: {exc}") from None
    model = Sequential(layers, input_shape=header.get("input_shape"))
    model.astype(header.get("dtype", "float32"))
    model.load_state_dict(arrays)
    return model
