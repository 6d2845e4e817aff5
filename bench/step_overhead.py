"""Python overhead of a training step: the step's time minus the time spent inside kernels.

Every registered kernel is wrapped with a timer (about half a microsecond a call, counted as
overhead), then ``fit`` trains the preset for ``--steps`` steps of ``--batch-size`` random images,
several rounds; per round, overhead = (fit's time - kernel time) / steps. Prints the median over rounds.

    python -m bench.step_overhead [--model lenet] [--steps 200] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastcnn
from fastcnn import dispatch, models


def _timed(fn, clock):
    def run(*args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            clock[0] += time.perf_counter() - t0
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    clock = [0.0]
    for impls in dispatch._registry.values():
        for name in list(impls):
            impls[name] = _timed(impls[name], clock)
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n)
    model = getattr(models, args.model)(seed=0)
    model.fit(x[: 4 * args.batch_size], y[: 4 * args.batch_size], batch_size=args.batch_size, verbose=0)  # compile, decide
    overheads, steps = [], []
    for _ in range(args.rounds):
        clock[0] = 0.0
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, verbose=0, optimizer=fastcnn.Adam(1e-4))
        total = time.perf_counter() - t0
        overheads.append((total - clock[0]) / args.steps * 1e6)
        steps.append(total / args.steps * 1e6)
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds: "
          f"step {statistics.median(steps):.0f} us, Python overhead {statistics.median(overheads):.0f} us/step (medians; "
          f"min {min(overheads):.0f}, max {max(overheads):.0f})")


if __name__ == "__main__":
    main()
