"""The test run itself: its own temporary FASTCNN_HOME, removed afterwards; the user's never written."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import os
from fastcnn import _files

def test_probe():
    home = _files.home_dir()
    assert home.name.startswith("fastcnn-test-home-") and home != __import__("pathlib").Path(os.environ["USER_HOME"])
    (home / "dispatch").mkdir()
    (home / "dispatch" / "decisions.json").write_text("{}")
    assert (home / "mnist.npz").read_bytes() == b"the user's MNIST cache"  # copied in, not fetched again
'''


def test_this_run_has_its_own_home():
    home = Path(os.environ["FASTCNN_HOME"])
    assert home.name.startswith("fastcnn-test-home-") and home.parent == Path(tempfile.gettempdir())


def test_a_run_never_touches_the_users_home_and_leaves_nothing(tmp_path):
    user_home, tmp = tmp_path / "user-home", tmp_path / "tmp"
    user_home.mkdir()
    tmp.mkdir()
    (user_home / "mnist.npz").write_bytes(b"the user's MNIST cache")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in user_home.iterdir()}
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = dict(os.environ, FASTCNN_HOME=str(user_home), USER_HOME=str(user_home), TMPDIR=str(tmp))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), str(probe)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in user_home.iterdir()} == before
    assert list(tmp.iterdir()) == []  # the temporary home is gone


def test_benchmark_summary_comes_last_and_says_why_torch_columns_are_empty(tmp_path):
    """One real `pytest --benchmark` run of one benchmark, with PyTorch made unimportable."""
    (tmp_path / "torch.py").write_text("raise ImportError('hidden by the test')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # a worker's: benchmarks off
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "pytest", "--benchmark", "-p", "no:cacheprovider",
                             "bench/bench_layers.py", "-k", "400 and fastcnn", "--benchmark-storage", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "max_time=0.5" in out.split("collected")[0]  # pytest-benchmark's header shows the time used
    assert out.index("fastcnn summary") > out.rindex("Legend:")  # after pytest-benchmark's tables
    summary = out[out.index("fastcnn summary"):]
    assert "max_time=0.5 s" in summary and "PyTorch is not installed" in summary and 'are "-"' in summary
