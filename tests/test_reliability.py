"""Reliability: concurrent threads, forked workers, repeatable training and caches that cannot be written.

The thread and process tests run in a fresh interpreter, so that a crash (an abort in a threading
layer, a killed child, a hang) fails the test instead of killing pytest.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastcnn
from fastcnn import models

from .conftest import BACKENDS

needs_numba = pytest.mark.skipif("numba" not in BACKENDS, reason="Numba is not installed")

# Runs every op and a model serially, then the same calls from several threads at once, and compares.
CONCURRENT = """
import threading, numpy as np, fastcnn, fastcnn.functional as F
from fastcnn.kernels import jit
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 8, 28, 28)).astype(np.float32)
w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
images = rng.random((256, 1, 28, 28), dtype=np.float32)
labels = rng.integers(0, 10, 256)

def work(backend):
    y = F.conv2d(x, w, padding=1, backend=backend)
    gx, gw, _ = F.conv2d_backward(y, x, w, padding=1, backend=backend)
    p, idx = F.max_pool2d(F.relu(y, backend=backend), 2, backend=backend)
    model = fastcnn.models.lenet(seed=1)
    model.fit(images, labels, epochs=1, batch_size=64, seed=2, verbose=0)
    return [y, gx, gw, p, idx, model.predict(images)]

backends = fastcnn.available_backends()
want = {b: work(b) for b in backends}
errors = []
def run(i):
    try:
        b = backends[i % len(backends)]
        for _ in range(30):  # back-to-back kernels: threads overlap inside parallel regions
            np.testing.assert_array_equal(F.conv2d(x, w, padding=1, backend=b), want[b][0])
        for _ in range(3):
            for got, ref in zip(work(b), want[b]):
                np.testing.assert_array_equal(got, ref)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
print("OK", jit.threading_layer(), jit.SERIALIZE_KERNELS)
"""

WITHOUT_TBB = "import sys; sys.modules['numba.np.ufunc.tbbpool'] = None  # as if libtbb were missing\n"

FORK = """
import multiprocessing, numpy as np, fastcnn.functional as F
x = np.random.default_rng(0).standard_normal((8, 2, 12, 12)).astype(np.float32)
w = np.ones((4, 2, 3, 3), np.float32)
want = F.conv2d(x, w, backend="numba")  # the parallel runtime is up before the fork

def child(i):
    return F.conv2d(x, w, backend="numba"), F.max_pool2d(x, 2, backend="numba")[0]

with multiprocessing.get_context("fork").Pool(2) as pool:
    results = pool.map_async(child, range(4)).get(timeout=120)
for y, p in results:
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(p, F.max_pool2d(x, 2, backend="numba")[0])
print("OK")
"""


def _python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@needs_numba
def test_concurrent_calls_from_threads_give_the_serial_answers():
    out = _python(CONCURRENT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["OK", "tbb", "False"]


@needs_numba
def test_without_tbb_fastcnn_picks_workqueue_and_serialises_kernels():
    """workqueue aborts the process on concurrent parallel calls; fastcnn's lock must prevent that."""
    out = _python(WITHOUT_TBB + CONCURRENT, env={"NUMBA_THREADING_LAYER": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["OK", "workqueue", "True"]


@needs_numba
def test_a_forced_workqueue_layer_is_kept_and_serialised():
    out = _python(CONCURRENT, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["OK", "workqueue", "True"]


@needs_numba
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_workers_after_use_neither_die_nor_hang():
    out = _python(FORK)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "OK"


@pytest.mark.parametrize("backend", BACKENDS + ("auto",))
def test_same_seed_threads_and_backend_give_bit_identical_weights(backend):
    rng = np.random.default_rng(0)
    x = rng.random((320, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, len(x))

    def train():
        model = models.keras_cnn(seed=3)  # dropout too
        with fastcnn.use_backend(backend):
            model.fit(x, y, epochs=2, batch_size=64, seed=4, verbose=0)
        return model.state_dict()

    first, second = train(), train()
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


@needs_numba
def test_unwritable_numba_cache_works_without_cache_and_warns_once():
    code = """
    import warnings
    import numba.core.caching as caching
    def refuse(self):
        raise OSError("read-only file system")
    caching._CacheLocator.ensure_cache_path = refuse  # no cache directory anywhere is writable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numpy as np, fastcnn.functional as F
        y = F.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32), backend="numba")
    cache_warnings = [w for w in caught if "cannot cache" in str(w.message)]
    assert y.sum() == 36 and len(cache_warnings) == 1, [str(w.message) for w in caught]
    print("OK")
    """
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "OK"


@needs_numba
def test_a_changed_helper_module_recompiles_the_kernels_that_use_it(tmp_path):
    """Numba's cache checks only a kernel's own file; the dropout kernel compiles in ``_mask.kept``."""
    import shutil

    package = tmp_path / "fastcnn_copy"  # another name: the installed fastcnn may shadow PYTHONPATH
    shutil.copytree(os.path.dirname(fastcnn.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    code = """
    import numpy as np
    from fastcnn_copy.kernels import elementwise_numba
    print(int(elementwise_numba.dropout(np.ones(1000), np.uint64(7), np.uint64(1 << 23), 2.0).sum()))
    """
    env = {"PYTHONPATH": str(tmp_path)}
    first = _python(code, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert int(first.stdout) not in (0, 2000)
    mask = package / "kernels" / "_mask.py"
    mask.write_text(mask.read_text() + "\n\ndef kept(seed, index, threshold):  # keeps every element\n"
                    "    return True\n")
    second = _python(code, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert int(second.stdout) == 2000


CACHE_SAVER = """
import os, sys, time
import fastcnn.kernels.jit  # noqa: F401  (locks Numba's cache files)
from numba.core.caching import IndexDataCacheFile
folder, who = sys.argv[1], sys.argv[2]
cache = IndexDataCacheFile(folder, "kernel", ("stamp",))
open(os.path.join(folder, "ready-" + who), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.001)
for i in range(200):
    cache.save((who, i), f"{who}-{i}".encode())
"""


@needs_numba
def test_processes_saving_to_one_numba_cache_at_once_keep_every_entry(tmp_path):
    """Two processes save 200 entries each to one kernel's cache at the same moment (as test workers or
    MPI ranks compiling different signatures do): every entry loads back as saved. Numba alone lost or
    swapped about half of them here (the same data-file number taken by both)."""
    import time

    from numba.core.caching import IndexDataCacheFile

    savers = [subprocess.Popen([sys.executable, "-c", CACHE_SAVER, str(tmp_path), who]) for who in "ab"]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{who}").exists() for who in "ab"):
            assert time.monotonic() < deadline and all(s.poll() is None for s in savers), "a saver did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        assert [s.wait(timeout=120) for s in savers] == [0, 0]
    finally:
        for s in savers:
            s.kill()
    cache = IndexDataCacheFile(str(tmp_path), "kernel", ("stamp",))
    assert all(cache.load((who, i)) == f"{who}-{i}".encode() for who in "ab" for i in range(200))
