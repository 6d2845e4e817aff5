"""Data parallelism against threads: the same training as 1 process x 1 thread, 1 process x 2 threads
and 2 processes x 1 thread (``mpiexec -n 2``, ``fit(distributed=True)``), in one run.

    python -m bench.scaling                          # LeNet: one epoch; pytorch_example, mnist_bn: 300 steps
    python -m bench.scaling --models lenet --rounds 3 --no-model

Each configuration is a fresh process (or two) that loads MNIST, trains a throwaway copy of the
model for a few steps (compiling the kernels and letting the dispatcher choose, for the shapes of
this configuration), then times ``fit`` for one epoch of the preset's recipe (one-cycle schedule over
that epoch) on full MNIST, or on the first ``--steps`` batches for the larger networks (``mnist_bn``: the
model zoo's batch-norm MNIST net, Adam 1e-3 at batch 64; each rank normalises over its share), and scores the
test set. ``--rounds`` repeats the configurations in turn, so slow spells of a busy machine fall on
all of them; the table gives the median. Needs the mpi extra (``pip install 'fastcnn[mpi]'``).

Then, unless ``--no-model``, a MODEL (not a measurement) of 1, 2, 4, 8, 16 cores, for machines this
script cannot run on: a data-parallel step on P processes of 1 thread takes the measured 1-thread
step time at the batch share ``batch / P`` plus an allreduce modelled as ``log2(P) * latency +
2 (P - 1) / P * transfer``, with latency and transfer measured between the 2 processes here; one
process with P threads follows Amdahl's law with the serial fraction that the measured 2-thread
speed-up implies. Step times are the fastest of a few short runs and allreduce times the fastest of
100, so that a busy machine's slow spells fall out: the model is of idle cores. It ignores memory
bandwidth shared by many processes, hosts' networks and turbo clocks.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import numpy as np

DEFAULT_STEPS = {"lenet": None, "pytorch_example": 300, "mnist_bn": 300}  # None: a full epoch
ZOO_RECIPE = {"optimizer": "adam", "lr": 1e-3, "epochs": 1}  # a zoo network trains at its own batch size
CONFIGS = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)
MODEL_CORES = (1, 2, 4, 8, 16)
RESULT = "RESULT "


def make_model(name: str, seed: int = 0):
    """A fresh preset (with its recipe) or zoo network (``bench/zoo.py``, with :data:`ZOO_RECIPE` at its
    training batch size)."""
    from fastcnn import models

    from . import zoo

    if name in models.PRESETS:
        return models.PRESETS[name](seed=seed)
    model = zoo.build(name, seed)
    model.recipe = models.Recipe(batch_size=zoo.ZOO[name].train_batch, **ZOO_RECIPE)
    return model


# ---------------------------------------------------------------- one configuration (a worker process)
def _worker(spec: dict) -> None:
    import fastcnn
    from fastcnn import datasets, distributed

    w = distributed.world()
    fastcnn.set_num_threads(spec["threads"])
    (x, y), (xt, yt) = distributed.run_first_per_host(w, lambda: datasets.load_mnist(as_float=True, quiet=True))
    if "probe" in spec:
        print(RESULT + json.dumps(dict(spec, step_s=_probe(spec, x, y))), flush=True)
        return
    recipe = make_model(spec["model"]).recipe
    batch = spec.get("batch") or recipe.batch_size
    if spec.get("steps"):
        x, y = x[: spec["steps"] * batch], y[: spec["steps"] * batch]
    last = len(x) % batch or batch
    parallel = w.size > 1

    def train(model, n):
        kwargs = recipe.fit_kwargs()
        kwargs.update(epochs=1, batch_size=batch)
        return model.fit(x[:n], y[:n], seed=0, verbose=0, distributed=parallel, **kwargs)

    train(make_model(spec["model"]), 2 * batch + last)  # compile and choose, same shapes
    model = make_model(spec["model"])
    w.comm.Barrier()
    start = time.perf_counter()
    history = train(model, len(x))
    seconds = time.perf_counter() - start
    result = dict(spec, processes=w.size, seconds=seconds, steps=math.ceil(len(x) / batch), batch=batch,
                  loss=history["loss"][-1], params=sum(p.size for _, p, _ in model.named_parameters()))
    if parallel:
        result.update(_allreduce_ms(w.comm, result["params"] + 2))
    if w.is_root:
        result["test_accuracy"] = model.evaluate(xt, yt)[1]
        print(RESULT + json.dumps(result), flush=True)


def _probe(spec: dict, x: np.ndarray, y: np.ndarray, steps: int = 40, repeats: int = 5) -> dict[int, float]:
    """Seconds per training step in this one process at each batch size of ``spec["probe"]``: the
    fastest of ``repeats`` runs of ``steps`` steps (after one that compiles and lets the dispatcher
    choose), so that a busy machine's slow spells fall out."""
    step_s = {}
    for batch in spec["probe"]:
        times = []
        for _ in range(repeats + 1):
            model = make_model(spec["model"])
            kwargs = dict(model.recipe.fit_kwargs(), epochs=1, batch_size=batch)
            start = time.perf_counter()
            model.fit(x[: steps * batch], y[: steps * batch], seed=0, verbose=0, **kwargs)
            times.append((time.perf_counter() - start) / steps)
        step_s[batch] = min(times[1:])
    return step_s


def _allreduce_ms(comm, size: int, repeats: int = 100) -> dict:
    """Times of an in-place Allreduce of one float (latency) and of ``size`` float32 (a step's): the
    fastest (the cost on idle cores, which the model uses) and the median (with this machine's
    scheduling delays), each the slowest rank's."""
    from mpi4py import MPI

    out = {}
    for key, n in (("latency", 1), ("allreduce", size)):
        buf = np.ones(n, np.float32)
        times = []
        for _ in range(repeats):
            comm.Barrier()
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf)
            times.append(time.perf_counter() - t)
        out[f"{key}_ms"] = 1e3 * comm.allreduce(float(np.min(times)), op=MPI.MAX)
        out[f"{key}_median_ms"] = 1e3 * comm.allreduce(float(np.median(times)), op=MPI.MAX)
    return out


# ---------------------------------------------------------------- the runner
def _run(spec: dict, processes: int) -> dict:
    from fastcnn import distributed

    cmd = [sys.executable, "-m", "bench.scaling", "--worker", json.dumps(spec)]
    if processes > 1:
        mpiexec = distributed.mpiexec_path()
        if mpiexec is None:
            raise SystemExit(f"no mpiexec found: {distributed.INSTALL_HINT}")
        cmd = [mpiexec, "-n", str(processes)] + cmd
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def measure(models_: list[str], rounds: int, steps: dict) -> dict:
    """Every configuration of every model, ``rounds`` times in turn; median seconds per configuration."""
    results: dict = {}
    for r in range(rounds):
        for name in models_:
            for processes, threads in CONFIGS:
                res = _run(dict(model=name, threads=threads, steps=steps[name]), processes)
                results.setdefault((name, processes, threads), []).append(res)
                print(f"  round {r + 1}: {name} {processes} process(es) x {threads} thread(s): {res['seconds']:.2f} s, "
                      f"test accuracy {res['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    return results


def table(results: dict) -> str:
    lines = ["| model | steps x batch | processes x threads | seconds (median) | test accuracy | speed-up vs 1x1 |",
             "|---|---|---|---|---|---|"]
    for (name, p, t), runs in results.items():
        base = statistics.median(r["seconds"] for r in results[(name, 1, 1)])
        sec = statistics.median(r["seconds"] for r in runs)
        accs = ", ".join(f"{r['test_accuracy']:.4f}" for r in runs)
        lines.append(f"| {name} | {runs[0]['steps']} x {runs[0]['batch']} | {p} x {t} | {sec:.2f} | {accs} | {base / sec:.2f}x |")
    for name in dict.fromkeys(k[0] for k in results):
        two_threads = statistics.median(r["seconds"] for r in results[(name, 1, 2)])
        two_procs = statistics.median(r["seconds"] for r in results[(name, 2, 1)])
        lines.append(f"\n{name}: 2 processes x 1 thread are {two_threads / two_procs:.2f}x as fast as 1 process x 2 threads"
                     + (" (target >= 1.25x)" if name == "lenet" else ""))
    return "\n".join(lines)


def model_curve(results: dict, name: str) -> str:
    """The modelled curve for ``name`` (see the module's description): measures the step times it
    needs (1 thread at every batch share, 2 threads at the whole batch) in short repeated runs."""
    one = results[(name, 1, 1)][0]
    batch = one["batch"]
    shares = sorted({max(1, batch // p) for p in MODEL_CORES}, reverse=True)
    t1 = {int(b): s for b, s in _run(dict(model=name, threads=1, probe=shares), 1)["step_s"].items()}
    two_threads = _run(dict(model=name, threads=2, probe=[batch]), 1)["step_s"][str(batch)]
    serial = min(max(2 * two_threads / t1[batch] - 1, 0.0), 1.0)  # Amdahl: S2 = 1 / (s + (1 - s) / 2)
    pair = results[(name, 2, 1)]
    latency = min(r["latency_ms"] for r in pair) / 1e3
    transfer = max(min(r["allreduce_ms"] for r in pair) / 1e3 - latency, 0.0)
    busy = statistics.median(r["allreduce_median_ms"] for r in pair)
    lines = [f"MODEL, not a measurement ({name}, global batch {batch}, {one['params']:,} parameters): measured 1-thread "
             f"step {t1[batch] * 1e3:.2f} ms, 2-thread {two_threads * 1e3:.2f} ms (each the fastest of 5 runs of 40 steps), "
             f"so a serial fraction of {serial:.2f}; "
             f"allreduce latency {latency * 1e6:.0f} us + transfer {transfer * 1e6:.0f} us between 2 processes "
             f"(the fastest of 100; their median here, with scheduling delays: {busy * 1e3:.0f} us)",
             "| cores | P processes x 1 thread: step ms (share compute + allreduce) | speed-up | 1 process x P threads (Amdahl) | speed-up |",
             "|---|---|---|---|---|"]
    for p in MODEL_CORES:
        share = max(1, batch // p)
        reduce_s = 0.0 if p == 1 else math.log2(p) * latency + 2 * (p - 1) / p * transfer
        data_parallel = t1[share] + reduce_s
        threaded = t1[batch] * (serial + (1 - serial) / p)
        lines.append(f"| {p} | {data_parallel * 1e3:.2f} ({t1[share] * 1e3:.2f} + {reduce_s * 1e3:.2f}) | "
                     f"{t1[batch] / data_parallel:.2f}x | {threaded * 1e3:.2f} | {t1[batch] / threaded:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(DEFAULT_STEPS), default=list(DEFAULT_STEPS))
    parser.add_argument("--rounds", type=int, default=1, help="repeat every configuration, in turn (default 1)")
    parser.add_argument("--steps", type=int, help="train this many batches instead of the default "
                                                   "(LeNet: a full epoch; pytorch_example, mnist_bn: 300)")
    parser.add_argument("--no-model", action="store_true", help="skip the modelled 1..16-core curve")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0
    steps = {name: args.steps or DEFAULT_STEPS[name] for name in args.models}
    results = measure(args.models, args.rounds, steps)
    print(table(results))
    if not args.no_model:
        for name in args.models:
            print()
            print(model_curve(results, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
