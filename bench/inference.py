"""Inference latency: fastcnn's ``predict`` against ONNX Runtime and PyTorch, and where the time goes.

    python -m bench.inference                           # every preset and zoo network at batch 1 and 256
    python -m bench.inference --models lenet --batches 1 --profile
    FASTCNN_BENCH_THREADS=2 python -m bench.inference --rounds 9

ONNX Runtime runs the file fastcnn itself exports (``Sequential.export_onnx``) with
``intra_op_num_threads`` equal to fastcnn's threads (and one inter-op thread); PyTorch runs the same
network and weights (``bench.torch_peer.mirror``) in eval mode under ``torch.inference_mode`` with the
same threads. The script starts itself again with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set (PyTorch at its best; the three libraries share the one process and
its settings). Each round times every library on every row back to back (a fixed number of calls,
sized to take about 20 ms, after one untimed call), so a slow spell of the machine falls on all of
them, and no library's timed calls start while the previous one's threads still spin; the table gives the
median over rounds of the time per call and the ratios. A network that fastcnn cannot export yet
gets its row without ONNX Runtime, marked "not exportable yet", and the reason under the table.
``--profile`` splits LeNet's
``predict`` (at each batch size) into its plan steps, each step's kernel called directly, and what remains (Python).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

import fastcnn
from fastcnn import dispatch, models

from . import zoo
from ._peer_env import ensure_torch_malloc_env
from .summary import ort_target

class NotExportable(Exception):
    """fastcnn cannot export this network to ONNX (yet): the message says why."""


def networks() -> dict[str, Callable[[], fastcnn.Sequential]]:
    """The networks timed, by name: the presets, then the model zoo's networks (``bench/zoo.py``)."""
    nets = {name: (lambda f=f: f(seed=0)) for name, f in models.PRESETS.items()}
    nets.update({name: (lambda name=name: zoo.build(name)) for name in zoo.ZOO})
    return nets


def threads() -> int:
    return int(os.environ.get("FASTCNN_BENCH_THREADS", fastcnn.threads.max_threads()))


def fastcnn_runner(model: fastcnn.Sequential, x: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: model.predict(x, batch_size=len(x))


def ort_runner(model: fastcnn.Sequential, x: np.ndarray, n_threads: int, directory: str) -> Callable[[], np.ndarray]:
    """ONNX Runtime on the model as fastcnn exports it; None when onnxruntime is not installed.

    Raises
    ------
    NotExportable
        The model has a layer fastcnn's ONNX export does not take.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = Path(directory) / f"model-{id(model)}.onnx"
    if not path.exists():
        try:
            model.export_onnx(path)
        except ValueError as exc:
            raise NotExportable(str(exc)) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": x}
    return lambda: session.run(None, feed)[0]


def torch_runner(model: fastcnn.Sequential, x: np.ndarray, n_threads: int) -> Callable[[], np.ndarray]:
    """PyTorch eval mode on the same network and weights; None when torch is not installed."""
    try:
        import torch

        from . import torch_peer
    except ImportError:
        return None
    torch.set_num_threads(n_threads)
    net = torch_peer.mirror(model).eval()
    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return net(tx).numpy()

    return run


def _per_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls, once another library's threads have settled
    (:func:`bench.zoo.settle`)."""
    zoo.settle(fn)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _calls_for(fn: Callable[[], object], seconds: float = 0.02) -> int:
    once = _per_call(fn, 3)
    return max(3, min(2000, int(seconds / max(once, 1e-7))))


def measure(names: list[str], batches: list[int], rounds: int) -> list[dict]:
    """Median seconds per call of each library on each (network, batch), from interleaved rounds."""
    n_threads = threads()
    fastcnn.set_num_threads(n_threads)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in names:
            model = networks()[name]()
            for batch in batches:
                x = np.random.default_rng(0).random((batch,) + model.input_shape, dtype=np.float32)
                notes = {}
                try:
                    ort = ort_runner(model, x, n_threads, directory)
                except NotExportable as exc:
                    ort, notes["ort"] = None, f"not exportable yet: {exc}"
                runners = {"fastcnn": fastcnn_runner(model, x), "ort": ort, "torch": torch_runner(model, x, n_threads)}
                runners = {k: v for k, v in runners.items() if v is not None}
                reference = runners["fastcnn"]()  # also compiles and lets the dispatcher decide
                for lib, fn in runners.items():
                    got = fn()
                    if not np.allclose(got, reference, rtol=0, atol=1e-4):
                        raise AssertionError(f"{lib} disagrees with fastcnn on {name} at batch {batch}: "
                                             f"max abs diff {np.abs(got - reference).max():.3g}")
                rows.append({"model": name, "batch": batch, "runners": runners, "notes": notes,
                             "calls": {k: _calls_for(fn) for k, fn in runners.items()}, "times": {k: [] for k in runners}})
    for _ in range(rounds):
        for row in rows:
            for lib, fn in row["runners"].items():
                row["times"][lib].append(_per_call(fn, row["calls"][lib]))
    for row in rows:
        row["ms"] = {lib: statistics.median(t) * 1e3 for lib, t in row["times"].items()}
        del row["runners"]
    return rows


def table(rows: list[dict]) -> str:
    cols = ["model", "batch", "fastcnn ms", "ORT ms", "torch ms", "fastcnn / ORT", "fastcnn / torch", "target"]
    body = []
    for r in rows:
        ms = r["ms"]
        over_ort = ms["fastcnn"] / ms["ort"] if "ort" in ms else None
        target = ort_target(r["model"], r["batch"])
        verdict = "-" if target is None else f"<= {target:.1f}x ORT: " + (
            "?" if over_ort is None else "met" if over_ort <= target else "MISSED")
        body.append([r["model"], str(r["batch"])]
                    + [f"{ms[k]:.3f}" if k in ms else "not exportable yet" if k in r["notes"] else "-"
                       for k in ("fastcnn", "ort", "torch")]
                    + [f"{ms['fastcnn'] / ms[k]:.2f}x" if k in ms else "-" for k in ("ort", "torch")] + [verdict])
    lines = [cols] + body
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines[:1]) + "\n" + \
        "|" + "|".join("-" * (w + 2) for w in widths) + "|\n" + \
        "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in body)


def profile(name: str = "lenet", batch: int = 1, calls: int = 3000) -> str:
    """Where ``predict``'s time goes: in each of ``calls`` iterations, ``predict`` once, then each plan
    step on the same data (as the plan runs it, bound to the input's shape), each timed on its own; medians per iteration. What ``predict`` takes beyond its steps is its own Python (the
    input check, the plan's key, batching). Interleaving at this grain lets a busy machine's slow
    spells fall on every part alike."""
    model = networks()[name]()
    x = np.random.default_rng(0).random((batch,) + model.input_shape, dtype=np.float32)
    for _ in range(20):
        model.predict(x)
    plan = model._inference
    runs = plan.bound(x.shape)
    clock = time.perf_counter_ns
    whole, parts = [], [[] for _ in plan.steps]
    for _ in range(calls):
        t0 = clock()
        model.predict(x)
        whole.append(clock() - t0)
        h = x
        for k, (step, run) in enumerate(zip(plan.steps, runs)):
            arrays = step.arrays()
            t0 = clock()
            h = run(h, arrays)
            parts[k].append(clock() - t0)
    med = [statistics.median(p) / 1e3 for p in parts]
    total = statistics.median(whole) / 1e3
    lines = [f"{name} at batch {batch}: predict {total:.1f} us per call (median of {calls})"]
    h = x
    for step, run, t in zip(plan.steps, runs, med):
        label = getattr(step, "op", "") + (" +relu" if getattr(step, "relu", False) else "")
        lines.append(f"  {type(step).__name__[1:]:8s} {label:24s} {str(h.shape):18s} {t:8.1f} us")
        h = run(h, step.arrays())
    lines.append(f"  steps together {sum(med):.1f} us; predict's own Python (input check, plan key, batching, "
                 f"backend policy) {total - sum(med):.1f} us")
    for d in dispatch.dispatch_decisions():
        if d["signature"].startswith(f"(({batch},"):
            lines.append(f"  dispatcher: {d['op']} {d['signature'][:70]} -> {d['choice']} {d['ms']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(networks()), choices=list(networks()))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="also split LeNet's predict into its steps (each batch)")
    args = parser.parse_args(argv)
    rows = measure(args.models, args.batches, args.rounds)
    print(f"Median ms per call over {args.rounds} interleaved rounds, float32, {threads()} threads, "
          f"{fastcnn.kernels.jit.cpu_description()}; `python -m bench.inference {' '.join(argv or sys.argv[1:])}`".rstrip())
    print(table(rows))
    for name, note in dict.fromkeys((r["model"], r["notes"]["ort"]) for r in rows if "ort" in r["notes"]):
        print(f"{name}: ONNX Runtime {note}")
    if args.profile:
        for batch in args.batches:
            print()
            print(profile(batch=batch, calls=max(20, 3000 // batch)))
    return 0


if __name__ == "__main__":
    ensure_torch_malloc_env()  # PyTorch at its best: starts this script again with its allocator settings
    sys.exit(main())
