"""Where fastcnn keeps its files, how it writes them (atomically, never half-written), and the one
checksum it stores with them."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np


def home_dir() -> Path:
    """fastcnn's per-user directory: ``$FASTCNN_HOME``, else ``~/.cache/fastcnn``."""
    env = os.environ.get("FASTCNN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastcnn"


def sha256_hex(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order, as hex: what model files and the MNIST cache check."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for writing; on success, fsync and rename it over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
