"""Where fastcnn keeps its files, how it writes them (atomically, never half-written), and the one
checksum it stores with them."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np


def home_dir() -> Path:
    """fastcnn's per-user directory: ``$FASTCNN_HOME``, else ``~/.cache/fastcnn``."""
    env = os.environ.get("FASTCNN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastcnn"


def sha256_hex(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order, as hex: what model files and the MNIST cache check.
    (A C-contiguous array is hashed in place, without a copy of its bytes.)"""
    return hashlib.sha256(np.ascontiguousarray(a)).hexdigest()


def _host_tag() -> str:
    """8 hex digits naming this host, so that a writer judges only its own host's process ids."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(f".{name}.") + r"([0-9a-f]{8})\.(\d+)\.[0-9a-f]+\.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (or an absurd number): leave it be
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed earlier writes of ``path`` left beside it; return them.

    A temporary file is named ``.NAME.HOST.PID.RANDOM.tmp`` (see :func:`atomic_write`). Only those of
    this host whose writer's process is no longer running are removed: a concurrent writer's file
    (its process is alive) is never touched. If a dead writer's PID was reused, its file stays until
    the new process ends.
    """
    path = Path(path)
    pattern, host, removed = _temp_pattern(path.name), _host_tag(), []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) == host and int(match.group(2)) != os.getpid() and not _running(int(match.group(2))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:  # another writer cleaned it first
                pass
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike, make_parents: bool = False) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for writing; on success, fsync and rename it over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was. The file gets
    the mode a plain ``open`` would give it (``0o666`` less the umask: 0644 under umask 022). The
    temporary file is ``.NAME.HOST.PID.RANDOM.tmp`` in the same folder; a process killed while writing
    leaves it behind, and the next write of the same ``path`` removes it
    (:func:`remove_stale_temporaries`: only files of writers no longer running, so concurrent writers
    never remove each other's).

    Parameters
    ----------
    path : path-like
    make_parents : bool
        Create missing folders above ``path`` (for fastcnn's own cache folders). Without it a missing
        folder is a ``FileNotFoundError`` naming it.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path}: the folder {path.parent} does not exist "
                                              "(create it first)", str(path.parent))
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
