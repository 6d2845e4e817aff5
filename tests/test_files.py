"""_files.atomic_write: the mode the umask gives, missing folders, and temporary files killed writers left."""
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from fastcnn import _files

# A writer killed (SIGKILL) in the middle of a save, as by the OOM killer or `kill -9`.
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from fastcnn import _files
    with _files.atomic_write(sys.argv[1]) as fh:
        fh.write(b"half of a file")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
""")


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with _files.atomic_write(tmp_path / "f.bin") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == mode


def test_a_missing_folder_is_an_error_unless_asked_to_make_it(tmp_path):
    target = tmp_path / "missing" / "deeper" / "f.bin"
    with pytest.raises(FileNotFoundError, match="folder .*missing.* does not exist"):
        with _files.atomic_write(target) as fh:
            fh.write(b"x")
    assert not (tmp_path / "missing").exists()
    with _files.atomic_write(target, make_parents=True) as fh:
        fh.write(b"x")
    assert target.read_bytes() == b"x"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with _files.atomic_write(target) as fh:
            fh.write(b"new")
            raise RuntimeError("stop")
    assert target.read_bytes() == b"old" and _temporaries(tmp_path) == []


def test_killed_writers_temporaries_are_removed_by_the_next_save(tmp_path):
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True)
        assert result.returncode == -signal.SIGKILL, result.stderr
    assert len(_temporaries(tmp_path)) == 1 and target.read_bytes() == b"old"  # each writer cleaned the last one's
    with _files.atomic_write(target) as fh:
        fh.write(b"new")
    assert _temporaries(tmp_path) == [] and target.read_bytes() == b"new"


def test_a_running_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "model.npz"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = _files._host_tag()
        alive = tmp_path / f".model.npz.{host}.{sleeper.pid}.abc123.tmp"
        other_host = tmp_path / f".model.npz.{'0' * 8 if host != '0' * 8 else '1' * 8}.999999999.abc.tmp"
        other_file = tmp_path / f".other.npz.{host}.999999999.abc.tmp"
        for p in (alive, other_host, other_file):
            p.write_bytes(b"in progress")
        with _files.atomic_write(target) as fh:
            fh.write(b"new")
        assert alive.exists() and other_host.exists() and other_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _files.remove_stale_temporaries(target) == [alive]  # its writer is gone now
