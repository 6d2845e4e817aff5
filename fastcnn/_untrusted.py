"""Reading files fastcnn did not write in this session: every size and shape is checked before anything
is allocated.

A file can claim anything: a JSON header nested 100,000 levels deep, an ``.npy`` header promising
16 GB beside 16 bytes, a zip member named twice, a deflate bomb. The readers here check what a file
claims against what it holds (its byte sizes) and against fixed limits first, and refuse with a
``ValueError`` naming the member and the sizes; only then do they read data, and never more than the
sizes checked. So a hostile file costs milliseconds and at most its own size (times the compression
ratio allowed, :data:`MAX_COMPRESSION_RATIO`).
"""
from __future__ import annotations

import json
import math
import os
import stat
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

MAX_COMPRESSION_RATIO = 64
"""Largest uncompressed / compressed size accepted for a zip member or a gzip file (plus
:data:`_COMPRESSION_SLACK`): real data compresses far less (MNIST's images about 5x, float weights
about 1.1x), a deflate bomb about 1000x."""
_COMPRESSION_SLACK = 1 << 16
_NPY_HEADER_LIMIT = 10_000  # characters of an .npy header dict (NumPy's own default limit)
_READ_CHUNK = 1 << 20  # bytes read at a time past a file's stated size (a pipe has none)


def _nesting(codes: np.ndarray) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings in JSON text given as code units (bytes
    or code points), in a few vector passes: a quote counts unless an odd run of backslashes precedes
    it; brackets count where the quotes before them are even. Up to the first syntax error this is the
    depth a JSON parser reaches."""
    if codes.size == 0:
        return 0
    quote = codes == 0x22
    backslash = codes == 0x5C
    if backslash.any():
        pos = np.arange(codes.size)
        last_plain = np.maximum.accumulate(np.where(backslash, -1, pos))  # last position not a backslash
        quote &= np.concatenate(([0], pos[:-1] - last_plain[:-1])) % 2 == 0
    outside = np.cumsum(quote) % 2 == 0
    opens = ((codes == 0x5B) | (codes == 0x7B)) & outside
    closes = ((codes == 0x5D) | (codes == 0x7D)) & outside
    return int(np.cumsum(opens.astype(np.int64) - closes).max())


def parse_json(text: str | bytes, what: str, max_chars: int, max_depth: int = 32) -> Any:
    """``json.loads(text)`` after checking its size and nesting: a ``ValueError`` naming ``what``
    (never a ``RecursionError`` or ``MemoryError``) for text longer than ``max_chars``, nested deeper
    than ``max_depth`` or not JSON."""
    if len(text) > max_chars:
        raise ValueError(f"{what} is {len(text):,} characters long; at most {max_chars:,} are accepted")
    if isinstance(text, str):
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    else:
        codes = np.frombuffer(text, np.uint8)
    depth = _nesting(codes)
    if depth > max_depth:
        raise ValueError(f"{what} is nested {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise ValueError(f"{what} is not valid JSON ({exc})") from None


def read_limited(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, refusing (``ValueError``) a file longer than ``max_bytes`` without reading
    past that. Memory is asked for as the bytes arrive (a file's size, then chunks for what a pipe or a
    growing file adds), never for the whole limit at once."""
    with open(path, "rb") as fh:
        status = os.fstat(fh.fileno())
        oversized = stat.S_ISREG(status.st_mode) and status.st_size > max_bytes  # refused unread
        chunks = [] if oversized else [fh.read(min(status.st_size, max_bytes) + 1)]
        read = max_bytes + 1 if oversized else len(chunks[0])
        while read <= max_bytes:
            more = fh.read(min(_READ_CHUNK, max_bytes + 1 - read))
            if not more:
                break
            chunks.append(more)
            read += len(more)
    if read > max_bytes:
        raise ValueError(f"{what} {os.fspath(path)} is larger than the {max_bytes:,} bytes accepted")
    return b"".join(chunks)


def _compression_limit(compressed: int) -> int:
    return MAX_COMPRESSION_RATIO * compressed + _COMPRESSION_SLACK


def inflate_gzip(raw: bytes, what: str) -> bytearray:
    """Decompress gzip data (one or more members), refusing output beyond :data:`MAX_COMPRESSION_RATIO`
    times the input (a gzip bomb) before producing it: a ``ValueError`` naming ``what``."""
    limit, out, rest = _compression_limit(len(raw)), bytearray(), raw
    try:
        while rest:
            inflater, data = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            while not inflater.eof:
                if not data:
                    raise ValueError(f"{what}: truncated gzip data")
                out += inflater.decompress(data, limit + 1 - len(out))
                if len(out) > limit:
                    raise ValueError(f"{what} inflates to more than {MAX_COMPRESSION_RATIO}x its {len(raw):,} bytes: "
                                     "refused as a decompression bomb")
                data = inflater.unconsumed_tail
            rest = inflater.unused_data.lstrip(b"\0")  # zero padding may follow the last member
    except zlib.error as exc:
        raise ValueError(f"{what}: damaged gzip data ({exc})") from None
    return out


# ---------------------------------------------------------------- .npz archives
@dataclass(frozen=True)
class Member:
    """One ``.npy`` member of a zip, as its headers declare it (checked against its byte size)."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header_length)`` of the ``.npy`` member ``info``, from its header alone."""
    try:
        with zf.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=_NPY_HEADER_LIMIT)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=_NPY_HEADER_LIMIT)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header = stream.tell()
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError,
            OverflowError) + _ZIP_ERRORS as exc:  # TokenError: NumPy re-reads a header that is not a literal
        raise ValueError(f"{where} has no readable .npy header ({type(exc).__name__}: {exc})") from None
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"{where} declares an invalid shape {shape!r}")
    return tuple(shape), bool(fortran), dtype, header


def npz_members(zf: zipfile.ZipFile, where: str, archive_size: int,
                kinds: str = "biuf") -> dict[str, Member]:
    """Every member of ``zf`` (an ``.npz``) by name without ``.npy``, checked without reading any data.

    Refused with a ``ValueError``: names that are not ``*.npy`` or occur twice, encrypted members or
    compression other than stored or deflate, members reaching past the end of the archive, deflate
    bombs (beyond :data:`MAX_COMPRESSION_RATIO`), ``.npy`` headers that do not parse, dtypes whose kind
    is not in ``kinds`` (never objects: nothing is unpickled), and a declared shape and dtype whose
    byte size differs from the member's.
    """
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{where} holds members named more than once: {twice}")
    members: dict[str, Member] = {}
    for info in infos:
        at = f"{where}, member {info.filename!r},"
        if not info.filename.endswith(".npy"):
            raise ValueError(f"{at} is not an .npy array")
        if info.flag_bits & 0x1:
            raise ValueError(f"{at} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"{at} uses compression method {info.compress_type}; only stored or deflate are read")
        if info.header_offset + info.compress_size > archive_size:
            raise ValueError(f"{at} claims {info.compress_size:,} bytes at offset {info.header_offset:,}, past the "
                             f"end of the {archive_size:,}-byte file")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ValueError(f"{at} is stored but claims {info.file_size:,} bytes in {info.compress_size:,}")
        if info.file_size > _compression_limit(info.compress_size):
            raise ValueError(f"{at} would inflate {info.compress_size:,} bytes to {info.file_size:,}: refused as a "
                             "decompression bomb")
        shape, fortran, dtype, header = _npy_header(zf, info, at[:-1])
        if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"{at} has dtype {dtype}; only plain {', '.join(kinds)} kinds are read (never objects)")
        member = Member(info, shape, dtype, fortran)
        if header + member.nbytes != info.file_size:
            raise ValueError(f"{at} declares shape {shape} of {dtype} ({member.nbytes:,} bytes) but holds "
                             f"{info.file_size - header:,} bytes of data")
        members[info.filename[: -len(".npy")]] = member
    return members


def read_member(zf: zipfile.ZipFile, member: Member, where: str) -> np.ndarray:
    """The array of a member :func:`npz_members` checked (its size is known to be what it holds), in C order."""
    try:
        with zf.open(member.info) as stream:
            array = np.lib.format.read_array(stream, allow_pickle=False, max_header_size=_NPY_HEADER_LIMIT)
        return np.ascontiguousarray(array) if member.fortran_order and array.ndim > 1 else array
    except (ValueError,) + _ZIP_ERRORS as exc:
        raise ValueError(f"{where}, member {member.info.filename!r}, cannot be read ({type(exc).__name__}: {exc})") from None


def open_npz(path: str | os.PathLike, what: str) -> tuple[zipfile.ZipFile, int]:
    """``(zipfile, size in bytes)`` of ``path``; a ``ValueError`` if it is not a zip file at all."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    try:
        return zipfile.ZipFile(path), size
    except (ValueError, OverflowError) + _ZIP_ERRORS as exc:
        raise ValueError(f"{path} is not a readable {what} file: it is not a .npz archive ({type(exc).__name__}: "
                         f"{exc}); fastcnn reads only the .npz files it writes, and never unpickles") from None


def read_npz(path: str | os.PathLike, what: str, expected: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` that must hold exactly ``expected``'s names with its (shape, dtype)
    each, all checked (:func:`npz_members`) before any is read; a ``ValueError`` otherwise."""
    path = os.fspath(path)
    zf, size = open_npz(path, what)
    with zf:
        members = npz_members(zf, path, size)
        if set(members) != set(expected):
            raise ValueError(f"{path} holds arrays {sorted(members)}, expected {sorted(expected)}")
        for name, (shape, dtype) in expected.items():
            m = members[name]
            if m.shape != tuple(shape) or m.dtype != np.dtype(dtype):
                raise ValueError(f"{path}: array {name!r} is {m.dtype} {m.shape}, expected {np.dtype(dtype)} {tuple(shape)}")
        return {name: read_member(zf, members[name], path) for name in expected}


def read_zip_member(zf: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    """The bytes of member ``name`` of ``zf``, refusing (``ValueError``) one larger than ``max_bytes`` or
    inflating beyond :data:`MAX_COMPRESSION_RATIO` before reading it."""
    info = zf.getinfo(name)
    if info.file_size > max_bytes or info.file_size > _compression_limit(info.compress_size):
        raise ValueError(f"{zf.filename}, member {name!r}, claims {info.file_size:,} bytes in {info.compress_size:,}: "
                         f"refused (at most {max_bytes:,} bytes and {MAX_COMPRESSION_RATIO}x compression)")
    with zf.open(info) as stream:
        return stream.read(info.file_size)


def first_non_finite(arrays: Iterable[tuple[str, np.ndarray]]) -> str | None:
    """The name of the first float array holding NaN or infinity, or None."""
    for name, a in arrays:
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return name
    return None

