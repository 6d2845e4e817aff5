"""fastcnn.memory: glibc keeps the memory a step frees, so the next step's arrays cost no page faults.

Each case runs in a fresh interpreter: the allocator's settings are the process's, read once."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastcnn
from fastcnn import memory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="page-fault counts of glibc's allocator: Linux")

_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from fastcnn import memory
    applied = memory.keep_freed_memory() if sys.argv[1] == "keep" else None
    assert applied is None or memory.keep_freed_memory() == applied  # once per process: the same answer
    size = 48 << 20  # over glibc's largest dynamic mmap threshold (32 MiB): mapped afresh every time by default
    np.ones(size // 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(size // 8)  # allocated, written, freed: as a training step's activations
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(applied, faults // 5, size // 4096)
""")


def _run(mode: str, **env: str) -> tuple[str, int, int]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "FASTCNN_KEEP_FREED_MEMORY")} | env
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, env=environment,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    applied, faults, pages = done.stdout.split()
    return applied, int(faults), int(pages)


def test_kept_memory_makes_a_repeated_large_allocation_fault_free():
    if memory._glibc() is None:
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    applied, faults, pages = _run("keep")
    assert applied == "True"
    assert faults < pages // 100, f"{faults} page faults per 48 MiB array with freed memory kept"
    _, default_faults, _ = _run("default")  # the control: glibc's defaults give the memory back each time
    assert default_faults >= 20, f"only {default_faults} page faults per array by default"  # (2 MiB pages: 24)


@pytest.mark.parametrize("env", [{"FASTCNN_KEEP_FREED_MEMORY": "0"}, {"MALLOC_MMAP_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_the_users_choice_stands(env):
    applied, faults, pages = _run("keep", **env)
    assert applied == "False"
    if "FASTCNN_KEEP_FREED_MEMORY" in env:
        assert faults >= 20  # glibc's defaults, untouched


def test_fit_asks_for_kept_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or False)
    model = fastcnn.Sequential([fastcnn.Dense(4, 2)], input_shape=(4,))
    model.fit(np.zeros((3, 4), np.float32), np.array([0, 1, 0]), epochs=1, batch_size=2, verbose=0)
    assert calls == [1]
