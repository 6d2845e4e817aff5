"""Project-wide pytest options: ``pytest --benchmark`` runs the ``bench/`` suites for real.

Without it, the benchmarks still run once each, unmeasured, alongside the tests, so they cannot rot.
With it, a summary table is printed at the end and written to ``.benchmarks/summary.{json,md}``.
"""
import os
import tempfile
from pathlib import Path

# Keep tests and benchmarks away from the user's real cache (dispatch decisions, data sets).
os.environ.setdefault("FASTCNN_HOME", tempfile.mkdtemp(prefix="fastcnn-test-home-"))


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run only the bench/ suites, measured, and print the summary table",
    )


def pytest_configure(config):
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True
        return
    from bench._common import ensure_torch_malloc_env

    capture = config.pluginmanager.getplugin("capturemanager")
    ensure_torch_malloc_env(before_exec=capture.stop_global_capturing if capture else None)
    if config.option.benchmark_max_time == 1.0:  # pytest-benchmark's default: halve it, 2 noisy cores
        config.option.benchmark_max_time = 0.5


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        items[:] = [item for item in items if "bench" in item.nodeid.split("/")[0]]


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
    tr.write_line(summary.terminal(rows))
    for line in summary.verdicts(rows):
        tr.write_line(line)
    paths = summary.write(rows, env, Path(config.rootpath) / ".benchmarks")
    tr.write_line("written: " + ", ".join(str(p) for p in paths))
