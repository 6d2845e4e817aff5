"""A codec for fastcnn's files: ``(header, arrays) <-> one .npz``, never pickled.

The header is JSON: a ``format`` name, a ``format_version``, whatever the caller adds, and each array's
SHA-256, shape and dtype. Writing goes through :func:`fastcnn._files.atomic_write`, so a crash leaves
the old file or none, never half of one. Reading checks the format, the version and every array's
checksum before handing anything back, so a truncated, altered or foreign file is refused with a
``ValueError``. This module knows nothing of models: :mod:`fastcnn.model` builds and rebuilds them.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from . import _files

_HEADER = "__fastcnn__"


def write_archive(path: str | os.PathLike, format_name: str, version: int, header: dict[str, Any],
                  arrays: dict[str, np.ndarray]) -> None:
    """Write ``header`` (JSON-serialisable) and ``arrays`` to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file to write.
    format_name, version : str, int
        What the file holds; :func:`read_archive` refuses other formats and newer versions.
    header : dict
        Anything JSON can hold; the keys ``format``, ``format_version`` and ``arrays`` are added.
    arrays : dict of str to ndarray
        Stored under their names, each with its SHA-256, shape and dtype in the header.
    """
    header = dict(header, format=format_name, format_version=version, arrays={
        name: {"sha256": _files.sha256_hex(a), "shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()})
    with _files.atomic_write(path) as fh:
        np.savez(fh, **{_HEADER: np.array(json.dumps(header))}, **{f"w/{name}": a for name, a in arrays.items()})


def read_archive(path: str | os.PathLike, format_name: str, version: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`write_archive` with ``format_name``, at most ``version``.

    Returns
    -------
    header : dict
    arrays : dict of str to ndarray
        Every array listed in the header, each matching its SHA-256.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not such a file, damaged, or of a newer format version.
    """
    path = os.fspath(path)
    what = format_name.replace(".", " ")
    try:
        with np.load(path, allow_pickle=False) as data:
            if _HEADER not in data.files:
                raise ValueError(f"{path} is not a {what} file (no {_HEADER} header)")
            header = json.loads(str(data[_HEADER][()]))
            arrays = {name[2:]: data[name] for name in data.files if name.startswith("w/")}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable {what} file ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        if "pickle" in str(exc):  # NumPy's hint to load it "unsafely" is the opposite of what we promise
            why = ("it holds Python objects" if "Object arrays" in str(exc) else "it is not a .npz archive")
            raise ValueError(f"{path} is not a readable {what} file: {why} (fastcnn reads only the .npz files "
                             "Sequential.save writes, and never unpickles)") from None
        raise ValueError(f"{path} is not a readable {what} file: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != format_name:
        raise ValueError(f"{path} is not a {what} file")
    found = header.get("format_version")
    if not isinstance(found, int) or found > version:
        raise ValueError(f"{path} has {what} format version {found!r}; this fastcnn reads versions up to "
                         f"{version}: upgrade fastcnn to load it")
    expected = header.get("arrays", {})
    if set(expected) != set(arrays):
        raise ValueError(f"{path} is damaged: the header lists arrays {sorted(expected)} but the file holds {sorted(arrays)}")
    for name, array in arrays.items():
        if _files.sha256_hex(array) != expected[name]["sha256"]:
            raise ValueError(f"{path} is damaged: array {name!r} fails its SHA-256 check")
    return header, arrays
