"""Choosing a backend for each op call.

Policies
--------
``"auto"`` (the default), ``"numba"`` or ``"numpy"``, chosen by, from strongest to weakest: the
``backend=`` argument of a call, :func:`use_backend` for a block, :func:`set_backend`, and the
``FASTCNN_BACKEND`` environment variable.

In ``auto`` the first call with a new signature (op, shapes, parameters, dtype and thread count) runs
every available backend once to compile and warm it, times a few more runs of each, and keeps the
faster; later calls with that signature cost one dictionary lookup. Decisions are kept per machine in
``$FASTCNN_HOME/dispatch/<machine>.json`` (``FASTCNN_DISPATCH_PERSIST=0`` turns that off), so a new
process does not measure again. The file name also hashes the kernels' and this module's source,
NumPy's and Numba's versions, so changed kernels are measured afresh.

Timings are the best of several interleaved rounds, each call after a pause like the one between two
ops of a training step (so a parallel kernel pays for waking its threads, as it does there); a close
call gets more rounds. A decision measured while the machine is busy (1-minute load average above the
core count) is used by this process but not saved.

In-place ops (the optimizer update) cannot be timed by running them twice; ``auto`` gives them the
first available backend, Numba when it is installed.
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import platform
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import _files, _untrusted, backends
from .tables import format_table
from .kernels import jit
from .kernels.scratch import shared_inputs

BACKENDS = ("numba", "numpy")
POLICIES = ("auto",) + BACKENDS
_MEASURE_ROUNDS = (3, 15)  # rounds of timing, usually at least and at most
_LEAST_ROUNDS = 2  # rounds, even of slow calls: each backend timed once first and once second in a round
_MEASURE_BUDGET_S = 0.05  # keep adding rounds (up to the most) while all of them took less than this
_SLOW_ROUND_S = 0.1  # rounds that took longer than this in all: _LEAST_ROUNDS suffice (but for a close call), the difference is plain
_CLOSE_CALL = 1.5  # best times within this factor of each other: a close call, worth more rounds ...
_CLOSE_CALL_BUDGET_S = 0.4  # ... while the next one still ends within this (measured: with two rounds, a 1x1
# conv at batch 256 that runs in 12 ms took 32 ms in one and lost to NumPy's 28 ms, which runs in 19)
_MAX_FILE_BYTES = 8 << 20  # a persisted decision takes about 250 bytes
_GLUE_S = 50e-6  # the pause before each timed call (see _pause)
_clock = time.perf_counter  # what times the backends (a test replaces it)


class BackendUnavailableError(ValueError):
    """A backend was asked for by name but cannot run here (e.g. Numba is not installed)."""


_registry: dict[str, dict[str, Callable[..., Any]]] = {op: entry.kernels for op, entry in backends.OPS.items()}
_local_policy: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastcnn_backend", default=None)
_global_policy: str | None = None  # None: read FASTCNN_BACKEND
_choices: dict[str, str] = {}  # by the key the decisions file uses, a string
_known: dict[tuple, Callable[..., Any]] = {}  # (op, signature, threads) -> the chosen kernel: the fast path
_in_place: set[str] = {op for op, entry in backends.OPS.items() if entry.in_place}
_unsaved: set[str] = set()  # decisions measured on a busy machine: this process only
_decisions: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()
_loaded = False
_persist_warned = False


def available_backends() -> tuple[str, ...]:
    """The backends that can run here, in preference order."""
    return tuple(b for b in BACKENDS if b != "numba" or jit.NUMBA_AVAILABLE)


def _check_policy(name: Any, source: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, POLICIES))}, got {name!r}")
    if name == "numba" and not jit.NUMBA_AVAILABLE:
        raise BackendUnavailableError(
            f"{source}={name!r} but Numba is not installed; install it (pip install numba) or use 'numpy'"
        )
    return name


def set_backend(name: str) -> None:
    """Set the process-wide backend policy: ``"auto"``, ``"numba"`` or ``"numpy"``."""
    global _global_policy
    _global_policy = _check_policy(name, "backend")


def get_backend() -> str:
    """The policy in force here: the innermost :func:`use_backend`, else the process-wide one."""
    local = _local_policy.get()
    if local is not None:
        return local
    if _global_policy is not None:
        return _global_policy
    return _check_policy(_environment("FASTCNN_BACKEND") or "auto", "FASTCNN_BACKEND")


def _environment(name: str) -> str | None:
    """``os.environ.get(name)``, without the KeyError that raises and catches inside for a variable not
    set (a microsecond or two, per predict call)."""
    data = getattr(os.environ, "_data", None)  # CPython's and PyPy's os._Environ: the encoded variables
    if data is None:
        return os.environ.get(name)
    value = data.get(os.environ.encodekey(name))
    return None if value is None else os.environ.decodevalue(value)


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use backend policy ``name`` inside a ``with`` block (per thread and per asyncio task)."""
    token = _local_policy.set(_check_policy(name, "backend"))
    try:
        yield
    finally:
        _local_policy.reset(token)


def run(op: str, signature: tuple, args: tuple, backend: str | None = None, auto_only: str | None = None) -> Any:
    """Run ``op`` on ``args`` with the backend that ``backend`` (or the policy in force) selects.

    ``signature`` must describe everything that affects speed but not the values: shapes, parameters
    and dtype. ``auto_only`` names the one backend ``auto`` should use without measuring, for calls
    the other backend is not built for (it is then not even compiled).
    """
    policy = get_backend() if backend is None else _check_policy(backend, "backend")
    impls = _registry[op]
    if policy != "auto":
        return impls.get(policy, impls["numpy"])(*args)  # an op with no Numba kernel runs NumPy's
    if auto_only is not None:
        return impls[auto_only](*args)
    threads = jit.num_threads()
    kernel = _known.get((op, signature, threads))
    if kernel is not None:
        return kernel(*args)
    if op in _in_place:
        kernel = _known[(op, signature, threads)] = impls[next(b for b in available_backends() if b in impls)]
        return kernel(*args)
    key = f"{op}{signature}@{threads}"  # about 2 us to format: once per signature, not per call
    choice = _choices.get(key)
    if choice is None:
        return impls[_decide(op, key, args, impls)](*args)
    _known[(op, signature, threads)] = impls[choice]
    return impls[choice](*args)


def chosen(op: str, signature: tuple, args: tuple, backend: str | None = None) -> Callable[..., Any]:
    """The kernel :func:`run` calls for ``op`` with these arguments now (under ``auto``, a signature not
    decided yet is decided first, running the kernels on ``args``), for a caller that calls it
    directly many times, such as the inference plan."""
    policy = get_backend() if backend is None else _check_policy(backend, "backend")
    impls = _registry[op]
    if policy != "auto":
        return impls.get(policy, impls["numpy"])
    known = (op, signature, jit.num_threads())
    kernel = _known.get(known)
    if kernel is None:
        run(op, signature, args, policy)  # decides a new signature
        kernel = _known.get(known) or impls[_choices[f"{op}{signature}@{known[2]}"]]
    return kernel


def fastest(op: str, signature: tuple, args: tuple, candidates: dict[str, Callable[..., Any]],
            backend: str | None = None) -> Callable[..., Any]:
    """Of ``candidates`` (backend name -> a callable of ``args`` that computes ``op``), the one that
    ``backend`` (or the policy in force) selects: under ``auto``, the faster as measured on ``args``
    the first time ``op`` and ``signature`` are met (and kept, as :func:`run`'s decisions), else the
    policy's own (NumPy's where the policy's is missing). For callers that run an op through something
    other than its registered kernels, such as the inference plan's prepared convs: ``signature``
    must then differ from the registered kernels' ones."""
    policy = get_backend() if backend is None else _check_policy(backend, "backend")
    if policy != "auto" or len(candidates) == 1:
        return candidates.get(policy, candidates.get("numpy", next(iter(candidates.values()))))
    key = f"{op}{signature}@{jit.num_threads()}"
    choice = _choices.get(key)
    if choice is None:
        choice = _decide(op, key, args, candidates)
    return candidates[choice]


def _decide(op: str, key: str, args: tuple, impls: dict[str, Callable[..., Any]]) -> str:
    """The backend ``auto`` chooses for ``key``: measured now (:func:`_time_interleaved`), unless known.
    The warm-up calls' outputs are let go before the timing, so that the timed calls can reuse their
    memory instead of faulting in fresh pages."""
    with _lock:
        _load_persisted()
        choice = _choices.get(key)
        if choice is not None:
            return choice
        candidates = [b for b in available_backends() if b in impls]
        start = time.perf_counter()
        for name in candidates:  # compile (Numba) and warm up
            impls[name](*args)
        timings = _time_interleaved(impls, candidates, args) if len(candidates) > 1 else {candidates[0]: float("nan")}
        choice = min(candidates, key=lambda b: timings[b]) if len(candidates) > 1 else candidates[0]
        _choices[key] = choice
        _decisions[key] = {
            "op": op,
            "signature": key[len(op) :],
            "choice": choice,
            "ms": {b: round(t * 1e3, 4) for b, t in timings.items()},
            "measure_ms": round((time.perf_counter() - start) * 1e3, 2),
        }
        if _machine_is_quiet():
            _save_persisted()
        else:
            _unsaved.add(key)
        return choice


def _time_interleaved(impls: dict[str, Callable[..., Any]], candidates: list[str], args: tuple) -> dict[str, float]:
    """Best seconds per call of each backend, timed in alternating rounds so that noise from the rest
    of the machine falls on all of them alike: rounds until they have taken :data:`_MEASURE_BUDGET_S`
    (at least :data:`_MEASURE_ROUNDS` ``[0]`` of them, unless they pass :data:`_SLOW_ROUND_S`), or for a
    close call up to :data:`_CLOSE_CALL_BUDGET_S` (:func:`_measured_enough`); at least
    :data:`_LEAST_ROUNDS` and at most :data:`_MEASURE_ROUNDS` ``[1]`` rounds. The first call timed
    can pay for what came before it (fresh pages for a large output, another pool's threads still
    spinning): in a zoo network's prediction at batch 256 (2026-12-02, an AMD Zen 4), single calls took
    54-205 ms where the same kernel then took 1.5-6.5, and when such a call ended the measuring after
    one round, ``auto`` kept the other backend for good. Each call runs in a :class:`~.kernels.scratch.shared_inputs`
    block of its own, so it pays for what it prepares from its inputs (a conv gradient's layout of the
    output gradient, made once for both gradients in a training step): a kernel timed on what an
    earlier call prepared looked up to 4x cheaper than it is. (Where both gradients run on one
    backend, the second is so charged for a layout it shares: a small bias the other way.)"""
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    spent = 0.0
    for round_ in range(_MEASURE_ROUNDS[1]):
        if round_ >= _LEAST_ROUNDS and _measured_enough(runs, round_, spent):
            break
        for name in candidates if round_ % 2 == 0 else reversed(candidates):
            _pause()
            with shared_inputs():
                t0 = _clock()
                impls[name](*args)
                runs[name].append(_clock() - t0)
            spent += runs[name][-1]
    return {name: min(times) for name, times in runs.items()}  # the least disturbed run of each


def _measured_enough(runs: dict[str, list[float]], rounds: int, spent: float) -> bool:
    """Whether ``rounds`` rounds that took ``spent`` seconds in all suffice (see :func:`_time_interleaved`).
    A close call, best times within :data:`_CLOSE_CALL` of each other, goes on while one more round
    ends within :data:`_CLOSE_CALL_BUDGET_S`: noise could pick the slower backend, and every later
    call would pay for it."""
    limit = _SLOW_ROUND_S if rounds < _MEASURE_ROUNDS[0] else _MEASURE_BUDGET_S
    best = [min(times) for times in runs.values()]
    if max(best) < _CLOSE_CALL * min(best):
        limit = max(limit, _CLOSE_CALL_BUDGET_S - spent / rounds)
    return spent > limit


def _pause(seconds: float = _GLUE_S) -> None:
    """Busy-wait ``seconds``, as the Python code between two ops of a training step does. Numba's
    worker threads go to sleep in such a gap, and waking them (about 10 microseconds) is part of what
    a parallel kernel costs in real use, so each timed call comes after one."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _machine_is_quiet() -> bool:
    """False when other work competes for the cores (1-minute load above the core count): timings
    taken then are used by this process but not saved, so a busy moment cannot mislead later runs."""
    try:
        return os.getloadavg()[0] <= (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return True


def dispatch_decisions() -> list[dict[str, Any]]:
    """The ``auto`` decisions known to this process: op, signature, choice, ms per backend, measure cost."""
    with _lock:
        _load_persisted()
        return [dict(d) for d in _decisions.values()]


def dispatch_report() -> str:
    """A table of :func:`dispatch_decisions`, one line per decision."""
    rows = [("op", "signature (shapes, params, dtype)@threads", "choice", "numba ms", "numpy ms", "measure ms")]
    for d in dispatch_decisions():
        ms = d["ms"]
        rows.append((d["op"], d["signature"], d["choice"], str(ms.get("numba", "-")), str(ms.get("numpy", "-")), str(d["measure_ms"])))
    return format_table(rows)


def clear_dispatch_decisions(persisted: bool = False) -> None:
    """Forget the ``auto`` decisions of this process, and with ``persisted=True`` this machine's file."""
    global _loaded
    with _lock:
        _choices.clear()
        _known.clear()
        _decisions.clear()
        _unsaved.clear()
        _loaded = True
        if persisted:
            try:
                decisions_path().unlink()
            except FileNotFoundError:
                pass


@functools.lru_cache(maxsize=None)
def _machine_id() -> str:
    numba_version = jit.numba.__version__ if jit.NUMBA_AVAILABLE else "none"
    text = f"{platform.machine()}|{jit.cpu_description()}|{os.cpu_count()}|numpy {np.__version__}|numba {numba_version}"
    digest = hashlib.sha256(text.encode())
    digest.update(jit.sources_digest(os.path.dirname(jit.__file__)))  # new kernels or way of measuring:
    digest.update(Path(__file__).read_bytes())  # measure again
    digest.update(Path(__file__).with_name("inference.py").read_bytes())  # the plan's candidates (fastest)
    return digest.hexdigest()[:16]


def decisions_path():
    """The file where this machine's ``auto`` decisions are kept."""
    return _files.home_dir() / "dispatch" / f"{_machine_id()}.json"


def _persist_enabled() -> bool:
    return os.environ.get("FASTCNN_DISPATCH_PERSIST", "1") not in ("0", "false", "no")


def _load_persisted() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    if not _persist_enabled():
        return
    try:
        records = _untrusted.parse_json(_untrusted.read_limited(decisions_path(), _MAX_FILE_BYTES, "dispatch decisions"),
                                        "dispatch decisions", _MAX_FILE_BYTES, max_depth=4)
    except (OSError, ValueError):
        return  # missing, unreadable or hostile: measure again, and the next save replaces it
    for key, record in records.items() if isinstance(records, dict) else ():
        if _valid_record(key, record):
            _decisions.setdefault(key, record)
            _choices.setdefault(key, record["choice"])


def _valid_record(key: str, record) -> bool:
    """Whether ``record`` has the form :func:`run` saves under ``key``, for a backend available here."""
    number = (int, float)
    return (isinstance(record, dict) and isinstance(record.get("op"), str) and isinstance(record.get("signature"), str)
            and key == record["op"] + record["signature"] and record.get("choice") in available_backends()
            and isinstance(record.get("ms"), dict) and all(isinstance(v, number) for v in record["ms"].values())
            and isinstance(record.get("measure_ms"), number))


def _save_persisted() -> None:
    global _persist_warned
    if not _persist_enabled():
        return
    try:
        saved = {k: d for k, d in _decisions.items() if k not in _unsaved}
        with _files.atomic_write(decisions_path(), make_parents=True) as fh:
            fh.write(json.dumps(saved, indent=1, sort_keys=True).encode())
    except OSError as exc:
        if not _persist_warned:
            warnings.warn(f"fastcnn: cannot save dispatch decisions ({exc}); they last for this process only", RuntimeWarning, stacklevel=3)
            _persist_warned = True
