"""Project-wide pytest options: ``pytest --benchmark`` runs the ``bench/`` suites for real.

Without it, the benchmarks still run once each, unmeasured, alongside the tests, so they cannot rot.
With it, a summary table is printed at the very end (after pytest-benchmark's own tables) and written
to ``.benchmarks/summary.{json,md}``.

The tests run in xdist worker processes (``-n auto`` in pyproject.toml, at most
:data:`_MOST_WORKERS`); ``pytest --benchmark`` runs in this one process.

Tests and benchmarks run with their own ``FASTCNN_HOME``, a temporary folder made here and removed when
the session ends, even when ``FASTCNN_HOME`` is set: the user's cache (dispatch decisions, data sets)
is never written. A cached MNIST found in the user's cache is copied in, so it is not fetched again.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_MNIST_CACHE = "mnist.npz"  # fastcnn.datasets.CACHE_NAME, without importing fastcnn before FASTCNN_HOME is set
_user_setting = os.environ.get("FASTCNN_HOME")
_user_home = Path(_user_setting or Path.home() / ".cache" / "fastcnn").expanduser()
_test_home = Path(tempfile.mkdtemp(prefix="fastcnn-test-home-"))
os.environ["FASTCNN_HOME"] = str(_test_home)
if (_user_home / _MNIST_CACHE).is_file():
    try:  # a copy, not a link: a test may damage the cache on purpose
        shutil.copyfile(_user_home / _MNIST_CACHE, _test_home / _MNIST_CACHE)
    except OSError:
        pass


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run only the bench/ suites, measured, and print the summary table",
    )


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): a worker a core this process may use, at most
    :data:`_MOST_WORKERS`; ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still overrides it (xdist's own rule)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(_MOST_WORKERS, cores)


_MOST_WORKERS = 4  # each worker compiles the kernels its tests need: more cost memory and repeat the work


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's and xdist's own pytest_configure read the options
def pytest_configure(config):
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True
        return
    if hasattr(config.option, "dist"):  # measured in one process: no xdist workers (pyproject's -n auto)
        config.option.dist, config.option.tx = "no", []
    from bench._common import ensure_torch_malloc_env

    capture = config.pluginmanager.getplugin("capturemanager")

    def before_exec():  # the process starts again: give back pytest's file descriptors and our home
        if capture:
            capture.stop_global_capturing()
        shutil.rmtree(_test_home, ignore_errors=True)
        if _user_setting is None:
            os.environ.pop("FASTCNN_HOME", None)
        else:
            os.environ["FASTCNN_HOME"] = _user_setting

    ensure_torch_malloc_env(before_exec=before_exec)
    if not any(arg.startswith("--benchmark-max-time") for arg in config.invocation_params.args):
        config.option.benchmark_max_time = 0.5  # half pytest-benchmark's default: 2 noisy cores


def pytest_unconfigure(config):
    shutil.rmtree(_test_home, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        items[:] = [item for item in items if "bench" in item.nodeid.split("/")[0]]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables, so that it is what stays on the screen
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if not config.getoption("--benchmark") or session is None or not session.benchmarks:
        return
    from bench import summary
    from bench._common import bench_threads

    rows = summary.build_rows(session.benchmarks)
    if not rows:
        return
    env = summary.environment(bench_threads())
    tr = terminalreporter
    tr.write_sep("=", "fastcnn summary: median ms, numba vs numpy, auto's choice, ratio to PyTorch")
    tr.write_line(summary.header(env, float(session.options["max_time"])))
    tr.write_line(summary.terminal(rows))
    for line in summary.verdicts(rows):
        tr.write_line(line)
    paths = summary.write(rows, env, Path(config.rootpath) / ".benchmarks")
    tr.write_line("written: " + ", ".join(str(p) for p in paths))
