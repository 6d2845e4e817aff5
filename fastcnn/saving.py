"""A codec for fastcnn's files: ``(header, arrays) <-> one .npz``, never pickled.

The header is JSON: a ``format`` name, a ``format_version``, whatever the caller adds, and each array's
SHA-256, shape and dtype. Writing goes through :func:`fastcnn._files.atomic_write`, so a crash leaves
the old file or none, never half of one. Reading checks every size the file claims before anything
is allocated, then the format, the version and every array's checksum before handing anything back,
so a truncated, altered, foreign or hostile file is refused with a ``ValueError``. This module knows
nothing of models: :mod:`fastcnn.model` builds and rebuilds them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from . import _files, _untrusted

_HEADER = "__fastcnn__"
MAX_HEADER_CHARS = 1 << 20
"""Longest header accepted: a model's is about 150 characters per layer."""
MAX_HEADER_DEPTH = 32
"""Deepest nesting of the header's JSON accepted: a model's is 4."""


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


def read_archive(path: str | os.PathLike, format_name: str, version: int,
                 check: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`write_archive` with ``format_name``, at most ``version``.

    Everything a file claims is checked before anything is allocated (see :mod:`fastcnn._untrusted`):
    the zip's members (unique ``.npy`` arrays, sizes that agree with their ``.npy`` headers, no
    decompression bombs, no objects), the header's size (:data:`MAX_HEADER_CHARS`) and nesting
    (:data:`MAX_HEADER_DEPTH`), and each array's shape and dtype against the header's; then ``check``,
    if given, sees the header; only then are the arrays read and their SHA-256 compared.

    Parameters
    ----------
    path : path-like
    format_name, version : str, int
    check : callable, optional
        Called with the header before any array is read; raises ``ValueError`` to refuse the file
        (e.g. :func:`fastcnn.load_model` compares the layers' configurations with the arrays' shapes).

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
        Not such a file, damaged, hostile, or of a newer format version.
    """
    path = os.fspath(path)
    what = format_name.replace(".", " ")
    zf, size = _untrusted.open_npz(path, what)
    with zf:
        members = _untrusted.npz_members(zf, path, size, kinds="biufU")
        if _HEADER not in members:
            raise ValueError(f"{path} is not a {what} file (no {_HEADER} header)")
        header_member = members.pop(_HEADER)
        if header_member.dtype.kind != "U" or header_member.shape != () or header_member.dtype.itemsize > 4 * MAX_HEADER_CHARS:
            raise ValueError(f"{path}: the header is {header_member.dtype} {header_member.shape}, not a JSON string of "
                             f"at most {MAX_HEADER_CHARS:,} characters")
        text = str(_untrusted.read_member(zf, header_member, path)[()])
        header = _untrusted.parse_json(text, f"the header of {path}", MAX_HEADER_CHARS, MAX_HEADER_DEPTH)
        if not isinstance(header, dict) or header.get("format") != format_name:
            raise ValueError(f"{path} is not a {what} file")
        found = header.get("format_version")
        if not isinstance(found, int) or found > version:
            raise ValueError(f"{path} has {what} format version {found!r}; this fastcnn reads versions up to "
                             f"{version}: upgrade fastcnn to load it")
        expected = _declared_arrays(header, path)
        held = {name[2:]: m for name, m in members.items() if name.startswith("w/")}
        if set(expected) != set(held) or len(held) != len(members):
            raise ValueError(f"{path} is damaged: the header lists arrays {sorted(expected)} but the file holds "
                             f"{sorted(held)}{' and others' if len(held) != len(members) else ''}")
        for name, m in held.items():
            shape, dtype = tuple(expected[name]["shape"]), expected[name]["dtype"]
            if m.shape != shape or m.dtype.name != dtype:
                raise ValueError(f"{path} is damaged: array {name!r} is {m.dtype} {m.shape} in the file, {dtype} {shape} "
                                 "in the header")
        if check is not None:
            check(header)
        arrays = {name: _untrusted.read_member(zf, held[name], path) for name in expected}
    for name, array in arrays.items():
        if _files.sha256_hex(array) != expected[name]["sha256"]:
            raise ValueError(f"{path} is damaged: array {name!r} fails its SHA-256 check")
    return header, arrays


def _declared_arrays(header: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """The header's ``arrays`` entry, checked to be ``{name: {"sha256": str, "shape": [int >= 0, ...], "dtype": str}}``."""
    declared = header.get("arrays")
    if not isinstance(declared, dict):
        raise ValueError(f"{path} is damaged: its header has no table of arrays")
    for name, spec in declared.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("sha256"), str) and isinstance(spec.get("dtype"), str)
                and isinstance(spec.get("shape"), list) and len(spec["shape"]) <= 32
                and all(type(s) is int and s >= 0 for s in spec["shape"])):
            raise ValueError(f"{path} is damaged: the header's entry for array {name!r} is {spec!r:.200}")
    return declared
