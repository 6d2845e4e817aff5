"""Data-parallel training (fastcnn.distributed): the batch split and the one-process context here, and
real runs under ``mpiexec -n 2`` (tests/mpi_worker.py), skipped when mpi4py or mpiexec is missing."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import distributed

WORKER = Path(__file__).with_name("mpi_worker.py")


def _mpi_available() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return distributed.mpiexec_path() is not None


# .ci/run sets FASTCNN_REQUIRE_MPI=1: there a missing extra fails these tests instead of skipping them.
needs_mpi = pytest.mark.skipif(not _mpi_available() and os.environ.get("FASTCNN_REQUIRE_MPI") != "1",
                               reason="needs the mpi extra: pip install 'fastcnn[mpi]'")


class _FakeWorld:
    def __init__(self, rank, size):
        self.rank, self.size, self.is_root, self.comm = rank, size, rank == 0, None


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("start, stop", [(0, 64), (64, 65), (128, 133), (5, 5)])
def test_shares_cover_the_batch_once_and_differ_by_at_most_one(size, start, stop):
    shares = [distributed.DataParallel(_FakeWorld(r, size)).share(start, stop) for r in range(size)]
    assert shares[0][0] == start and shares[-1][1] == stop
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


class _DoublingComm:
    """Allreduce as if a second rank had contributed exactly what this one did."""

    def Allreduce(self, _, buf):
        buf *= 2


@pytest.mark.parametrize("right", [7, None])
def test_all_reduce_scales_by_the_share_and_carries_loss_and_right_predictions(monkeypatch, right):
    monkeypatch.setattr(distributed.DataParallel, "_mpi_in_place", staticmethod(lambda: None))
    world = _FakeWorld(0, 2)
    world.comm = _DoublingComm()
    ctx = distributed.DataParallel(world)
    model = fastcnn.Sequential([fastcnn.Dense(3, 2, rng=0)])
    ctx._slices, ctx._buffer = [(0, 6), (6, 8)], np.zeros(10, np.float32)
    model.layers[0].grads = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(2, np.float32)}
    named, loss, right_all = ctx.all_reduce(model.named_parameters(), 0.5, right, 16, 64)
    # this rank's 16 of 64 samples, twice: half the batch's gradient, loss and right predictions
    np.testing.assert_array_equal(named[0][2], np.arange(6).reshape(2, 3) * 0.5)
    np.testing.assert_array_equal(named[1][2], [0.5, 0.5])
    assert loss == 0.25 and right_all == (None if right is None else 14)
    named, loss, right_all = ctx.all_reduce(model.named_parameters(), 0.0, 0, 0, 64)  # an empty share adds nothing
    assert not any(g.any() for _, _, g in named) and loss == 0 and right_all == 0


def test_one_process_context_changes_nothing():
    x = np.random.default_rng(0).random((40, 1, 6, 6), dtype=np.float32)
    y = np.arange(40) % 3

    def train(**kwargs):
        m = fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(36, 3, rng=0)], input_shape=(1, 6, 6))
        return m.fit(x, y, batch_size=16, seed=1, verbose=0, **kwargs), m.state_dict()

    (h1, s1), (h2, s2) = train(), train(distributed=False)
    assert h1 == h2 and all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert isinstance(distributed.training_context(False), distributed.Local)


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_world", None)
    with pytest.raises(ImportError, match=r"pip install 'fastcnn\[mpi\]'"):
        distributed.training_context(True)


def _mpiexec(mode, out, timeout):
    env = dict(os.environ, FASTCNN_BACKEND="numpy", PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [distributed.mpiexec_path(), "-n", "2", sys.executable, str(WORKER), mode, str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@needs_mpi
def test_two_processes_train_as_one_with_identical_weights(tmp_path):
    run = _mpiexec("train", tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["size"], r1["size"]) == (2, 2)
    assert r0["digest"] == r1["digest"], "ranks hold different weights after fit"
    assert r0["warnings"] == r1["warnings"] == []  # no rank's weights drifted and had to be replaced
    assert r0["history"] == r1["history"]  # the reduced loss and accuracy are global
    # One process with the same global batches: the same up to the order of float32 sums.
    one = r0["one_process_history"]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(r0["history"][key], one[key], rtol=1e-4, atol=1e-6)
    assert r0["history"]["accuracy"] == pytest.approx(one["accuracy"], abs=2 / 513)
    assert r0["one_process_max_weight_diff"] < 1e-4
    # Validation shared between the ranks and reduced equals evaluating the whole set in one process.
    assert r0["history"]["val_loss"][-1] == pytest.approx(r0["evaluate"][0], rel=1e-5)
    assert r0["history"]["val_accuracy"][-1] == r0["evaluate"][1]
    # Dropout and batch norm: masks and batch statistics differ between ranks, yet the weights and the
    # running statistics (rank 0's, copied after each epoch) agree, and a second run repeats the first.
    assert r0["dropout_digests"][0] == r0["dropout_digests"][1] == r1["dropout_digests"][0]
    assert r0["dropout_rng_states"] != r1["dropout_rng_states"]
    assert run.stderr.count("epoch 1/2") == 1  # only rank 0 shows progress
    for r in (r0, r1):
        assert "every rank must pass the same data" in r["mismatch"] and "(512, 1, 28, 28)" in r["mismatch"]


@needs_mpi
def test_synchronised_batch_norm_trains_as_one_process_and_per_rank_batch_norm_does_not(tmp_path):
    run = _mpiexec("sync_batchnorm", tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["warnings"] == r1["warnings"] == []
    for name in ("sync", "per_rank", "sync_short_shares", "sync_empty_share"):
        # weights and running statistics: the same bytes on both ranks (with sync, without an epoch-end copy)
        assert r0[name]["digest"] == r1[name]["digest"], name
        assert r0[name]["history"] == r1[name]["history"], name
        assert r0[name]["hooks_removed"] and r1[name]["hooks_removed"], name
    # Synchronised: one process's training on the same global batches, up to the rounding of float32 sums
    # (measured: losses within 1e-7 relative, weights within 3e-7, running statistics within 4e-6 after
    # two epochs), also when a rank's share has one sample, or none, of a short last batch.
    for name in ("sync", "sync_short_shares", "sync_empty_share"):
        r = r0[name]
        np.testing.assert_allclose(r["history"]["loss"], r["one_process_history"]["loss"], rtol=1e-5)
        assert r["max_weight_diff"] < 1e-5 and r["max_running_stat_diff"] < 1e-4, (name, r)
    # Per rank (DDP's default), each half batch is normalised by its own statistics: another training.
    per_rank, sync = r0["per_rank"], r0["sync"]
    assert sync["one_process_history"] == per_rank["one_process_history"]  # the same reference
    assert not np.allclose(per_rank["history"]["loss"], per_rank["one_process_history"]["loss"], rtol=1e-3)
    assert per_rank["max_weight_diff"] > 1e-3 > 100 * sync["max_weight_diff"]
    assert per_rank["max_running_stat_diff"] > 1e-2
    for r in (r0, r1):  # ranks that disagree about synchronising get a clear error, not a hang
        assert "every rank must pass the same" in r["mismatch"] and "'sync_batchnorm': False" in r["mismatch"]


@needs_mpi
def test_an_error_on_one_rank_stops_both_within_seconds(tmp_path):
    start = time.perf_counter()
    run = _mpiexec("abort", tmp_path, timeout=120)
    elapsed = time.perf_counter() - start
    assert run.returncode != 0
    assert "rank 1 of 2 failed" in run.stderr and "deliberate failure on rank 1" in run.stderr
    assert not list(tmp_path.glob("finished*"))  # neither rank got past fit
    assert elapsed < 60, f"took {elapsed:.0f} s"


@pytest.fixture
def restore_global_settings(monkeypatch):
    """`fastcnn train` sets the process's backend and threads; keep that inside each test."""
    from fastcnn import dispatch, threads

    monkeypatch.setattr(dispatch, "_global_policy", None)
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


TRAIN_TINY = ["train", "--model", "tiny_cnn", "--batch-size", "64", "--quiet", "--lr", "0.1", "--backend", "numpy",
              "--distributed"]


def test_cli_distributed_without_the_extra_says_how_to_install(monkeypatch, capsys, tmp_path):
    from fastcnn import cli

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_world", None)
    assert cli.main(TRAIN_TINY + ["--out", str(tmp_path / "m.npz")]) == 1
    assert "pip install 'fastcnn[mpi]'" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


def test_cli_sync_batchnorm_needs_distributed(capsys, tmp_path):
    from fastcnn import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(TRAIN_TINY[:-1] + ["--sync-batchnorm", "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--sync-batchnorm synchronises" in err and "add --distributed" in err
    assert not (tmp_path / "m.npz").exists()


@needs_mpi
def test_cli_distributed_without_mpiexec_trains_in_one_process(restore_global_settings, capsys, tmp_path):
    from fastcnn import cli

    assert cli.main(TRAIN_TINY + ["--threads", "1", "--out", str(tmp_path / "m.npz")]) == 0
    out, err = capsys.readouterr()
    assert "this is the only process" in err and "training in one process" in err
    assert "test accuracy" in out and (tmp_path / "m.npz").exists()


@needs_mpi
def test_cli_under_mpiexec_rank_0_reports_and_writes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    cmd = [distributed.mpiexec_path(), "-n", "2", "-wdir", str(tmp_path), sys.executable, "-m", "fastcnn",
           *TRAIN_TINY, "--epochs", "1", "--out", "m.npz", "--sync-batchnorm"]  # (tiny_cnn has no batch norm)
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("training tiny_cnn on 4,000 MNIST images") == 1, run.stdout
    assert re.search(r"\d+ threads in each of 2 processes", run.stdout)
    assert run.stdout.count("test accuracy: ") == 1
    accuracy = float(run.stdout.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert fastcnn.load_model(tmp_path / "m.npz").predict(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
