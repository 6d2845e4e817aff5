"""Project-wide pytest options: ``pytest --benchmark`` runs the ``bench/`` suites for real.

Without it, the benchmarks still run once each, unmeasured, alongside the tests, so they cannot rot.
"""


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run only the bench/ suites, measured (otherwise each benchmark runs once, untimed)",
    )


def pytest_configure(config):
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        items[:] = [item for item in items if "bench" in item.nodeid.split("/")[0]]
