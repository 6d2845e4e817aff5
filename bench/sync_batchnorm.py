"""What synchronised batch norm costs: training steps with per-rank and with synchronised batch norm
(``fit(..., distributed=True, sync_batchnorm=...)``), measured in turn in one run on the same ranks.

    mpiexec -n 2 python -m bench.sync_batchnorm                    # resnet preset, batch 128
    mpiexec -n 2 python -m bench.sync_batchnorm --model resnet --batch 64 --steps 10 --rounds 5

Each round times ``--steps`` training steps of each mode (after one untimed fit per mode that compiles
the kernels and lets the dispatcher choose); the table gives the median seconds per step over the
rounds, each the slowest rank's, and the ratio. It also times the two collective calls a batch-norm
layer adds per step (an ``Allgather`` of ``1 + 2C`` and an ``Allreduce`` of ``2C`` float64 values,
fastest and median of 200) for the model's channel counts. Random MNIST-shaped data: no download.
Needs the mpi extra (``pip install 'fastcnn[mpi]'``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _collective_us(comm, channels: int, repeats: int = 200) -> tuple[float, float]:
    """Fastest and median microseconds (the slowest rank's) of one batch-norm layer's two calls."""
    from mpi4py import MPI

    from fastcnn.distributed import BatchNormSync

    sync = BatchNormSync(comm)
    stats, sums = np.ones(channels, np.float32), np.ones(channels, np.float32)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        sync.statistics(stats, stats, 64)
        sync.gradient_sums(sums, sums, 0.5)
        times.append(time.perf_counter() - t)
    return tuple(1e6 * comm.allreduce(float(v), op=MPI.MAX) for v in (np.min(times), np.median(times)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpiexec -n N python -m bench.sync_batchnorm",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet", help="a preset with batch norm (default: resnet)")
    parser.add_argument("--batch", type=int, default=128, help="the global batch (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the modes in turn (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (default 1)")
    args = parser.parse_args(argv)

    import fastcnn
    from fastcnn import distributed, models

    w = distributed.world()
    fastcnn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.steps * args.batch
    x, y = rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)
    make = models.PRESETS[args.model]
    channels = [layer.num_features for layer in distributed._batch_norm_layers(make(seed=0).layers)]
    if not channels:
        raise SystemExit(f"{args.model} has no batch-norm layer")

    def train(sync: bool, samples: int) -> float:
        model = make(seed=0)
        w.comm.Barrier()
        start = time.perf_counter()
        model.fit(x[:samples], y[:samples], epochs=1, batch_size=args.batch, optimizer="adam", seed=0, verbose=0,
                  distributed=w.size > 1, sync_batchnorm=sync and w.size > 1)
        return w.comm.allreduce(time.perf_counter() - start, op=max)

    modes = {"per rank": False, "synchronised": True}
    for sync in modes.values():  # compile and choose, same shapes
        train(sync, 2 * args.batch)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, sync in modes.items():
            times[name].append(train(sync, n) / args.steps)
    per_layer = [_collective_us(w.comm, c) for c in sorted(set(channels))]
    if not w.is_root:
        return 0
    print(f"{args.model}, {len(channels)} batch-norm layers (channels {channels}), global batch {args.batch}, "
          f"{w.size} processes x {args.threads} thread(s), median of {args.rounds} rounds of {args.steps} steps")
    print("| batch norm | ms per step | vs per rank |\n|---|---|---|")
    base = statistics.median(times["per rank"])
    for name, values in times.items():
        print(f"| {name} | {1e3 * statistics.median(values):.2f} | {statistics.median(values) / base:.3f}x |")
    for c, (fastest, median) in zip(sorted(set(channels)), per_layer):
        print(f"one layer's Allgather + Allreduce, {c} channels: {fastest:.0f} us fastest, {median:.0f} us median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
