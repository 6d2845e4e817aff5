"""The dispatcher: policies, overrides, auto decisions, the report and per-machine persistence."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import dispatch
from fastcnn.kernels import jit

from .conftest import BACKENDS

X = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)


@pytest.fixture
def spy(monkeypatch):
    """Record which backend ran each op, by wrapping the registered kernels."""
    calls = []
    for op, impls in dispatch._registry.items():
        for name, fn in list(impls.items()):
            def wrapped(*args, _fn=fn, _name=name, _op=op):
                calls.append((_op, _name))
                return _fn(*args)
            monkeypatch.setitem(impls, name, wrapped)
    return calls


MACHINE_IS_QUIET = dispatch._machine_is_quiet


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCNN_HOME", str(tmp_path))
    monkeypatch.setattr(dispatch, "_global_policy", None)
    monkeypatch.setattr(dispatch, "_machine_is_quiet", lambda: True)  # a busy test machine must not skip the saving
    dispatch.clear_dispatch_decisions()
    monkeypatch.setattr(dispatch, "_loaded", False)
    yield
    dispatch.clear_dispatch_decisions()


def test_forcing_a_backend_runs_only_that_backend(spy):
    for name in BACKENDS:
        spy.clear()
        F.conv2d(X, W, backend=name)
        assert spy == [("conv2d", name)]


def test_set_backend_and_use_backend_nest(spy):
    fastcnn.set_backend("numpy")
    assert fastcnn.get_backend() == "numpy"
    F.max_pool2d(X, 2)
    assert spy[-1] == ("max_pool2d", "numpy")
    if "numba" in BACKENDS:
        with fastcnn.use_backend("numba"):
            assert fastcnn.get_backend() == "numba"
            F.max_pool2d(X, 2)
            assert spy[-1] == ("max_pool2d", "numba")
            F.max_pool2d(X, 2, backend="numpy")  # the per-call argument beats the block
            assert spy[-1] == ("max_pool2d", "numpy")
    assert fastcnn.get_backend() == "numpy"


def test_env_variable_sets_the_default(monkeypatch, spy):
    monkeypatch.setenv("FASTCNN_BACKEND", "numpy")
    assert fastcnn.get_backend() == "numpy"
    F.conv2d(X, W)
    assert spy == [("conv2d", "numpy")]
    monkeypatch.setenv("FASTCNN_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"FASTCNN_BACKEND must be one of .* got 'gpu'"):
        F.conv2d(X, W)
    monkeypatch.setenv("FASTCNN_BACKEND", "")  # empty: the default
    assert fastcnn.get_backend() == "auto"
    monkeypatch.delenv("FASTCNN_BACKEND")
    assert fastcnn.get_backend() == "auto"
    os.environ["FASTCNN_BACKEND"] = "numpy"  # set as a program would, after the first read
    try:
        assert fastcnn.get_backend() == "numpy"
    finally:
        del os.environ["FASTCNN_BACKEND"]
    assert fastcnn.get_backend() == "auto"


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        fastcnn.set_backend("fast")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        with fastcnn.use_backend("torch"):
            pass


def test_auto_measures_once_then_reuses_the_choice(spy):
    y = F.conv2d(X, W)
    measured = list(spy)
    assert {name for _, name in measured} == set(BACKENDS)
    spy.clear()
    np.testing.assert_array_equal(F.conv2d(X, W), y)
    [(op, choice)] = spy
    [decision] = fastcnn.dispatch_decisions()
    assert op == "conv2d" and decision["choice"] == choice
    assert decision["op"] == "conv2d" and "(2, 3, 10, 10)" in decision["signature"]
    if len(BACKENDS) == 2:
        assert set(decision["ms"]) == set(BACKENDS)
        assert decision["ms"][choice] == min(decision["ms"].values())
    report = fastcnn.dispatch_report()
    assert "conv2d" in report and choice in report.splitlines()[1]


def test_new_signature_is_measured_again(spy):
    F.conv2d(X, W)
    F.conv2d(X[:1], W)
    F.conv2d(X.astype(np.float64), W.astype(np.float64))
    assert len(fastcnn.dispatch_decisions()) == 3


def test_decisions_persist_for_a_new_process(tmp_path):
    F.max_pool2d(X, 2)
    [decision] = fastcnn.dispatch_decisions()
    saved = json.loads(dispatch.decisions_path().read_text())
    assert [r["choice"] for r in saved.values()] == [decision["choice"]]
    code = textwrap.dedent(
        """
        import numpy as np, fastcnn
        from fastcnn import dispatch
        [d] = fastcnn.dispatch_decisions()
        calls = []
        impls = dispatch._registry["max_pool2d"]
        for name, fn in list(impls.items()):
            impls[name] = lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a)
        fastcnn.functional.max_pool2d(np.zeros((2, 3, 10, 10), np.float32), 2)
        print(d["choice"], calls)
        """
    )
    env = dict(os.environ, FASTCNN_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == decision["choice"]
    assert out.strip().endswith(f"['{decision['choice']}']")  # one call, no re-measurement


def test_a_corrupt_decision_file_is_ignored(spy):
    path = dispatch.decisions_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    F.max_pool2d(X, 2)
    assert len(fastcnn.dispatch_decisions()) == 1
    json.loads(path.read_text())  # rewritten whole


def test_unwritable_home_warns_once_and_still_works(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCNN_HOME", str(blocker / "sub"))
    monkeypatch.setattr(dispatch, "_persist_warned", False)
    with pytest.warns(RuntimeWarning, match="cannot save dispatch decisions"):
        F.max_pool2d(X, 2)
        F.max_pool2d(X, 3)
    assert len(fastcnn.dispatch_decisions()) == 2


def test_without_numba_numpy_still_works_and_numba_is_a_clear_error():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numba"] = None  # makes `import numba` fail
        import numpy as np, fastcnn
        assert fastcnn.available_backends() == ("numpy",)
        y = fastcnn.functional.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32))
        assert y.shape == (1, 1, 2, 2) and (y == 9).all()
        try:
            fastcnn.set_backend("numba")
        except fastcnn.BackendUnavailableError as e:
            print("refused:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused: backend='numba' but Numba is not installed" in out


def test_in_place_ops_run_once_under_auto(spy):
    """The Adam update changes its arguments: auto must not time it by running it several times."""
    p = np.ones(5, np.float32)
    opt = fastcnn.optim.Adam(0.1)
    opt.step([("w", p, np.full(5, 2.0, np.float32))])
    assert spy == [("adam_update", BACKENDS[0])]
    np.testing.assert_allclose(p, 0.9, rtol=1e-6)  # one step of Adam moves by lr
    assert fastcnn.dispatch_decisions() == []


def test_decision_file_name_depends_on_the_kernels_source(monkeypatch):
    before = dispatch.decisions_path().name
    original = dispatch.Path.read_bytes
    monkeypatch.setattr(dispatch.Path, "read_bytes", lambda self: original(self) + b"# changed")
    dispatch._machine_id.cache_clear()
    try:
        assert dispatch.decisions_path().name != before
    finally:
        monkeypatch.undo()
        dispatch._machine_id.cache_clear()


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs Numba")
def test_decision_file_name_depends_on_the_cpu_the_kernels_are_compiled_for(monkeypatch):
    from llvmlite import binding

    host = binding.get_host_cpu_name()
    target = jit.numba.config.CPU_NAME or host  # NUMBA_CPU_NAME=haswell, as CI's second pass sets it, or the host
    other = "haswell" if target != "haswell" else "skylake-avx512"
    before, described = dispatch.decisions_path().name, jit.cpu_description()
    assert f"({host}" in described and f"; {jit.VECTOR_BYTES}-byte vectors)" in described
    monkeypatch.setattr(jit.numba.config, "CPU_NAME", other)
    monkeypatch.setattr(jit.numba.config, "CPU_FEATURES", "")
    jit.cpu_description.cache_clear()
    dispatch._machine_id.cache_clear()
    try:
        assert jit.cpu_description().endswith(
            f"({host}; kernels compiled for {other} with its own features only; {jit.VECTOR_BYTES}-byte vectors)")
        named = dispatch.decisions_path().name
        assert named != before  # AVX2 kernels are timed apart from AVX-512 ones
        monkeypatch.setattr(jit.numba.config, "CPU_FEATURES", None)  # Numba then adds the host's features
        jit.cpu_description.cache_clear()
        assert jit.cpu_description().endswith(f"kernels compiled for {other} with {host}'s features; "
                                              f"{jit.VECTOR_BYTES}-byte vectors)")
        monkeypatch.setattr(jit, "VECTOR_BYTES", 96 - jit.VECTOR_BYTES)  # the other tile geometry
        jit.cpu_description.cache_clear()
        dispatch._machine_id.cache_clear()
        assert dispatch.decisions_path().name not in (before, named)
    finally:
        monkeypatch.undo()
        jit.cpu_description.cache_clear()
        dispatch._machine_id.cache_clear()


def test_decisions_measured_on_a_busy_machine_are_not_saved(monkeypatch):
    monkeypatch.setattr(dispatch, "_machine_is_quiet", MACHINE_IS_QUIET)  # the real one, reading the load
    monkeypatch.setattr(dispatch.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    F.conv2d(X, W)
    assert len(fastcnn.dispatch_decisions()) == 1  # used by this process
    assert not dispatch.decisions_path().exists() or json.loads(dispatch.decisions_path().read_text()) == {}
    monkeypatch.setattr(dispatch.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    F.max_pool2d(X, 2)
    saved = json.loads(dispatch.decisions_path().read_text())
    assert [d["op"] for d in saved.values()] == ["max_pool2d"]


def test_chosen_names_the_kernel_run_calls():
    """``chosen``: under a named policy, that backend's kernel; under auto, the one decided for the
    signature (measured on the first call, looked up after); NumPy's for an op without a Numba kernel."""
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    signature = (x.shape, "f")
    for name in BACKENDS:
        assert dispatch.chosen("relu", signature, (x,), name) is dispatch._registry["relu"][name]
    kernel = dispatch.chosen("relu", signature, (x,))
    [decision] = fastcnn.dispatch_decisions()
    assert kernel is dispatch._registry["relu"][decision["choice"]]
    assert dispatch.chosen("relu", signature, (x,)) is kernel
    assert len(fastcnn.dispatch_decisions()) == 1
    assert dispatch.chosen("sigmoid", signature, (x,), "numba" if "numba" in BACKENDS else None) is \
        dispatch._registry["sigmoid"]["numpy"]


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs numba")
def test_fastest_measures_callers_candidates_once():
    """``fastest``: under a named policy, that backend's candidate; under auto, the faster one (a slow
    candidate loses), measured once per op and signature and kept as a decision."""
    calls = []

    def candidate(name, seconds):
        def run(x):
            calls.append(name)
            end = dispatch.time.perf_counter() + seconds
            while dispatch.time.perf_counter() < end:
                pass
            return x
        return run

    candidates = {"numba": candidate("numba", 0.002), "numpy": candidate("numpy", 0.0)}
    for name in ("numba", "numpy"):
        assert dispatch.fastest("conv2d", ("sig",), (1,), candidates, name) is candidates[name]
    assert calls == [] and fastcnn.dispatch_decisions() == []
    assert dispatch.fastest("conv2d", ("sig",), (1,), candidates) is candidates["numpy"]
    assert set(calls) == {"numba", "numpy"}
    [decision] = fastcnn.dispatch_decisions()
    assert decision["choice"] == "numpy" and decision["ms"]["numba"] >= 2
    calls.clear()
    assert dispatch.fastest("conv2d", ("sig",), (1,), candidates) is candidates["numpy"]
    assert calls == [] and len(fastcnn.dispatch_decisions()) == 1


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs numba")
def test_each_timed_call_pays_for_what_it_prepares():
    """A conv's gradients share what one prepares from grad_y (``scratch.shared``); timing a candidate
    on what its previous call left would hide that cost. Every timed call prepares afresh, so a
    candidate whose preparation is slow loses to one that is plainly faster."""
    from fastcnn.kernels.scratch import shared, shared_inputs

    x = np.zeros(4, np.float32)
    calls, made = [], []

    def busy(seconds):
        end = dispatch.time.perf_counter() + seconds
        while dispatch.time.perf_counter() < end:
            pass

    def make():
        made.append(1)
        busy(0.003)
        return x + 1

    def prepared(a):
        calls.append("numba")
        return shared("test layout", (a,), (), make)

    def plain(a):
        calls.append("numpy")
        busy(0.001)
        return a + 1

    candidates = {"numba": prepared, "numpy": plain}
    with shared_inputs():
        assert dispatch.fastest("conv2d_grad_input", ("prepared",), (x,), candidates) is plain
    assert len(made) == calls.count("numba") > 2


def test_a_close_call_is_measured_longer(monkeypatch):
    """Slow calls get two rounds when one backend is plainly faster, more when the two are within
    ``_CLOSE_CALL`` of each other (while one more round ends within the close-call budget, and at most
    the most rounds), so noise is less likely to pick the slower one for good."""
    clock = [0.0]
    monkeypatch.setattr(dispatch, "_clock", lambda: clock[0])
    monkeypatch.setattr(dispatch, "_pause", lambda: None)

    def rounds(a, b):
        calls = {"a": 0, "b": 0}

        def taking(name, seconds):
            def kernel():
                calls[name] += 1
                clock[0] += seconds
            return kernel
        dispatch._time_interleaved({"a": taking("a", a), "b": taking("b", b)}, ["a", "b"], ())
        assert calls["a"] == calls["b"]
        return calls["a"]

    assert rounds(0.02, 0.07) == 2  # 3.5x apart: the usual rounds (past _SLOW_ROUND_S after two)
    assert rounds(0.2, 0.9) == dispatch._LEAST_ROUNDS == 2  # each backend timed once first, once second
    close = rounds(0.03, 0.04)  # 0.07 s a round
    assert close > 2 and close * 0.07 <= dispatch._CLOSE_CALL_BUDGET_S < (close + 1) * 0.07
    assert rounds(0.25, 0.3) == 2  # close, but past the budget already
    assert rounds(0.004, 0.005) == dispatch._MEASURE_ROUNDS[1]  # close: up to the most rounds (6 before)
    assert rounds(0.0001, 0.00012) == dispatch._MEASURE_ROUNDS[1]  # fast calls: as many rounds as before


def test_a_slow_first_timed_call_does_not_decide(monkeypatch):
    """The first call timed can pay for what came before it (fresh pages for its output, another thread
    pool still spinning): in a zoo network's prediction at batch 256, single calls took 54 to 205 ms
    where the same kernel then took 1.5 to 6.5 ms, and a slow call ended the measuring after one round.
    Every backend is timed at least once first and once second in a round, so such a call is outvoted."""
    clock = [0.0]
    monkeypatch.setattr(dispatch, "_clock", lambda: clock[0])
    monkeypatch.setattr(dispatch, "_pause", lambda: None)
    calls = {"numba": 0, "numpy": 0}

    def kernel(name, first, later):
        def run():
            clock[0] += later if calls[name] else first
            calls[name] += 1
        return run

    timings = dispatch._time_interleaved({"numba": kernel("numba", 0.5, 0.01), "numpy": kernel("numpy", 0.05, 0.05)},
                                         ["numba", "numpy"], ())
    assert timings == pytest.approx({"numba": 0.01, "numpy": 0.05})


def test_the_warm_up_outputs_are_let_go_before_the_timing(monkeypatch):
    """While the warm-up calls' outputs were held, the first backend timed needed memory beyond what the
    process had touched (page faults on a large output) and the second reused what the first freed.
    Now no timed call needs more outputs alive at once than the warm-up did."""
    import weakref

    monkeypatch.setattr(dispatch, "_pause", lambda: None)

    class Output:
        pass

    alive, most = weakref.WeakSet(), [0]

    def kernel(x):
        out = Output()
        alive.add(out)
        most[0] = max(most[0], len(alive))
        return out

    candidates = {"numba": kernel, "numpy": lambda x: kernel(x)}
    choice = dispatch.fastest("relu", ("warm-up outputs",), (X,), candidates)
    assert choice in candidates.values() and most[0] == 1
