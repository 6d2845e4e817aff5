"""Data-parallel training over MPI: every process (rank) takes a share of each batch, and one in-place
``Allreduce`` of a flat, preallocated buffer per step averages the gradients (the Horovod model).

``Sequential.fit`` asks :func:`training_context` for the object that says how to train: :class:`Local`
(one process, the default: every hook a no-op, so training is exactly as without this module) or
:class:`DataParallel` (``fit(..., distributed=True)`` under ``mpiexec -n N``). MPI comes from the
optional extra (``pip install 'fastcnn[mpi]'``: mpi4py and the mpich wheel, which brings ``mpiexec``);
nothing here imports it until a distributed run asks for it.

How a step runs on N ranks, and why the ranks stay bit-identical:

- every rank holds the whole training set and draws the same shuffle from the same seed (rank 0's,
  broadcast), so the ranks agree on each global batch without sending any data;
- each rank takes a contiguous share of the global batch (shares differ by at most one sample; a
  rank may get none of a short last batch), computes the mean loss and gradient of its share, and
  scales the gradient by ``share / batch``, so that the sum over ranks is the gradient of the global
  batch's mean loss, as one process computes it (up to rounding in the order of the sums);
- one ``Allreduce`` sums, in place, a buffer holding every scaled gradient followed by the share's
  loss sum and number of right predictions, so the progress bar and the history show global figures;
- MPI's sum of the same buffers arrives identical on every rank (MPICH reduces each element in one
  place or combines commuting pairs), and the optimizer's update is deterministic, so the ranks'
  weights stay bit-identical without broadcasting them. :meth:`DataParallel.end` checks that with a
  SHA-256 of the parameters and, should hosts with different CPUs ever round differently, copies rank
  0's weights to all and warns.

Dropout draws its masks from ``[seed, layer index, rank]``: different on every rank, reproducible.

Batch norm, by default, normalises each rank's share with that share's own statistics (PyTorch DDP's
default): the step then differs from one process's on the same global batch, and more so the smaller
the shares. At the end of each epoch, before validation, rank 0's running statistics are copied to
every rank (DDP's ``broadcast_buffers``). With ``fit(..., sync_batchnorm=True)`` (PyTorch's
``SyncBatchNorm``) every batch-norm layer works on the global batch instead, through a
:class:`BatchNormSync` that the context installs as the layer's ``stats_reducer`` for the duration of
``fit`` (outside it, and in one process, the hook is None and costs nothing):

- forward: one ``Allgather`` of each rank's (values per channel, mean, variance), combined in float64
  with the pairwise formula of Chan et al. (no cancellation of ``E[x^2] - E[x]^2``); every rank
  normalises its share with the global statistics and updates its running statistics with them;
- backward: one ``Allreduce`` of the per-channel sums of ``g`` and ``g * x_hat``, each rank's weighted
  by its share of the batch, from which each rank forms its input gradient: the gradient of the global
  batch's mean loss, in the units of its own share's loss, as the gradient averaging expects;
- so one step is one process's step on the global batch up to rounding, and the running statistics
  are the same bytes on every rank without copying. A rank with an empty share of a short last batch
  still runs its forward and backward pass on zero samples: the others wait for its contributions.

That is two more collective calls per batch-norm layer and step, of ``1 + 2C`` and ``2C`` float64
values for ``C`` channels: latency rather than bandwidth (about 30 microseconds per layer between two
processes on one machine; more between machines), and the ranks wait for each other at every
batch-norm layer instead of once per step; ``bench/sync_batchnorm.py`` measures it.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import sysconfig
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from .layers import BatchNorm, walk

__all__ = ["World", "world", "Local", "DataParallel", "BatchNormSync", "combine_statistics", "training_context",
           "run_first_per_host", "abort_on_error", "abort", "mpiexec_path", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'fastcnn[mpi]'"
_ABORT_GRACE_S = 0.5  # how long a failing rank waits, its message written, before aborting every rank

Named = list  # [(name, param, grad)], as Sequential.named_parameters returns
T = TypeVar("T")


def _mpi():
    """mpi4py's ``MPI`` module (initialising MPI), or ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"distributed training needs mpi4py and an MPI library ({exc}); install them with: "
                          f"{INSTALL_HINT}") from None
    return MPI


@dataclass(frozen=True)
class World:
    """The processes of this run: ``rank`` of ``size`` in all, ``local_rank`` of ``local_size`` on this host."""

    comm: Any
    rank: int
    size: int
    local_comm: Any
    local_rank: int
    local_size: int

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0, the one that prints and writes files."""
        return self.rank == 0


_world: World | None = None


def world() -> World:
    """The MPI world this process belongs to (size 1 when not started by ``mpiexec``).

    Raises
    ------
    ImportError
        mpi4py (or its MPI library) is missing; the message says ``pip install 'fastcnn[mpi]'``.
    """
    global _world
    if _world is None:
        MPI = _mpi()
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        _world = World(comm, comm.Get_rank(), comm.Get_size(), local, local.Get_rank(), local.Get_size())
    return _world


def run_first_per_host(w: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the first rank of each host, then on that host's other ranks.

    For work that fills a per-host cache (MNIST under ``$FASTCNN_HOME``, Numba's compiled kernels):
    the other ranks then read it instead of fetching or compiling it at the same time. If ``fn`` raises
    on the first rank, the others are aborted by :meth:`Local.guard` around the caller.
    """
    if w.local_rank == 0:
        result = fn()
        w.local_comm.Barrier()
        return result
    w.local_comm.Barrier()
    return fn()


def mpiexec_path() -> str | None:
    """The ``mpiexec`` that belongs to this Python's mpi4py: beside the interpreter (a venv with the
    mpich wheel), in the base installation's scripts, else the first on ``PATH``."""
    names = ("mpiexec", "mpiexec.exe")
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts")),
                   Path(sys.base_prefix) / ("Scripts" if os.name == "nt" else "bin")):
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
    return shutil.which("mpiexec")


class Local:
    """Training in one process: what :meth:`fastcnn.Sequential.fit` does without ``distributed=True``."""

    rank = 0
    size = 1
    is_root = True
    sync_batchnorm = False
    """Whether batch norm works on the global batch: every rank then runs each step, even on an empty share."""

    def begin(self, model, seed: int | None, settings: dict[str, Any]) -> int | None:
        """Prepare ``model`` for training with ``settings`` (what every rank must pass alike: data
        shapes, epochs, batch size); returns the seed every rank uses."""
        return seed

    def dropout_rng(self, seed: int, index: int) -> np.random.Generator:
        """The generator of the dropout masks of layer ``index``."""
        return np.random.default_rng([seed, index])

    def share(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's positions ``[lo, hi)`` of the global batch at positions ``[start, stop)``."""
        return start, stop

    def all_reduce(self, named: Named, loss_value: float, right: int | None, count: int,
                   batch: int) -> tuple[Named, float, int | None]:
        """Average the gradients in ``named`` and the loss and right predictions of this rank's ``count``
        samples over the global ``batch``; returns the triples with averaged gradients, the batch's
        mean loss and its right predictions (None when the model is not a classifier)."""
        return named, loss_value, right

    def evaluate(self, model, x: np.ndarray, y: np.ndarray, loss) -> tuple[float, float | None]:
        """Mean loss and accuracy on ``(x, y)``, shared among the ranks."""
        return model.evaluate(x, y, loss=loss)

    def end_epoch(self, model) -> None:
        """Called after every epoch, before validation."""

    def end(self, model) -> None:
        """Called when training has finished."""

    @contextmanager
    def attached(self, model) -> Iterator[None]:
        """Hook this context into ``model``'s layers while training (one process: nothing to hook)."""
        yield

    @contextmanager
    def guard(self, collective: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Let exceptions through (in one process there is nobody to stop)."""
        yield


class DataParallel(Local):
    """Training on every rank of ``w``: see the module's description.

    Parameters
    ----------
    w : World
        From :func:`world`; its size must be at least 2.
    sync_batchnorm : bool
        Batch statistics over the global batch (:class:`BatchNormSync`) instead of each rank's share.
    """

    def __init__(self, w: World, sync_batchnorm: bool = False) -> None:
        self.world = w
        self.comm = w.comm
        self.rank, self.size, self.is_root = w.rank, w.size, w.is_root
        self.sync_batchnorm = bool(sync_batchnorm)
        self._buffer = np.empty(0)
        self._slices: list[tuple[int, int]] = []

    # ---------------------------------------------------------------- before and after training
    def begin(self, model, seed, settings):
        """Raises ValueError on every rank if the ranks' ``settings`` or models differ: they would
        otherwise run different numbers of steps, and wait for each other forever."""
        settings = dict(settings, parameters=[(name, p.shape, p.dtype.str) for name, p, _ in model.named_parameters()],
                        sync_batchnorm=self.sync_batchnorm)
        everyone = self.comm.allgather(settings)
        differ = [r for r, other in enumerate(everyone) if other != everyone[0]]
        if differ:
            raise ValueError(f"fit(distributed=True): every rank must pass the same data shapes, settings and model; "
                             f"rank 0 has {everyone[0]}, rank {differ[0]} has {everyone[differ[0]]}")
        if seed is None:  # one seed for all: the shuffle must be the same everywhere
            seed = int(np.random.SeedSequence().entropy % 2**63)
        seed = self.comm.bcast(seed, root=0)
        for layer in model.layers:  # start from rank 0's weights and statistics
            self._broadcast(layer.params)
            self._broadcast(layer.buffers)
        named = model.named_parameters()
        bounds = np.cumsum([0] + [p.size for _, p, _ in named])
        self._slices = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        self._buffer = np.zeros(int(bounds[-1]) + 2, model.dtype)  # + the loss sum and the right predictions
        return seed

    def dropout_rng(self, seed, index):
        return np.random.default_rng([seed, index, self.rank])

    def end_epoch(self, model):
        if self.sync_batchnorm:  # the running statistics are the same everywhere already
            return
        for layer in model.layers:  # batch-norm statistics: rank 0's, as DDP's broadcast_buffers
            self._broadcast(layer.buffers)

    def end(self, model):
        digest = hashlib.sha256()
        for layer in model.layers:
            for store in (layer.params, layer.buffers):
                for value in store.values():
                    digest.update(np.ascontiguousarray(value).tobytes())
        digests = self.comm.allgather(digest.hexdigest())
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            for layer in model.layers:
                self._broadcast(layer.params)
                self._broadcast(layer.buffers)
            if self.is_root:
                warnings.warn(f"after training, the weights or batch-norm statistics of ranks {differ} differed "
                              "from rank 0's (hosts that round differently?); rank 0's were copied to every rank",
                              RuntimeWarning, stacklevel=3)

    @contextmanager
    def attached(self, model):
        """With ``sync_batchnorm``, every batch-norm layer of ``model`` (in blocks too) gets a
        :class:`BatchNormSync` as ``stats_reducer`` until the block ends, however it ends."""
        norms = {id(layer): layer for layer in _batch_norm_layers(model.layers)} if self.sync_batchnorm else {}
        sync = BatchNormSync(self.comm)
        for layer in norms.values():
            layer.stats_reducer = sync
        try:
            yield
        finally:
            for layer in norms.values():
                del layer.stats_reducer  # back to the class's None

    def _broadcast(self, store: dict[str, np.ndarray]) -> None:
        """Rank 0's arrays of ``store`` on every rank: in place where they can be written, else (a
        NumPy scalar such as a batch count) as new arrays."""
        for key, value in store.items():
            if not (isinstance(value, np.ndarray) and value.flags.c_contiguous and value.flags.writeable):
                value = store[key] = np.array(value)
            self.comm.Bcast(value, root=0)

    # ---------------------------------------------------------------- every step
    def share(self, start, stop):
        base, extra = divmod(stop - start, self.size)
        lo = start + self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def all_reduce(self, named, loss_value, right, count, batch):
        buf = self._buffer
        if len(named) != len(self._slices):
            raise ValueError(f"the model has {len(named)} parameters now but had {len(self._slices)} when training began")
        if count:
            weight = buf.dtype.type(count / batch)
            for (name, p, g), (a, b) in zip(named, self._slices):
                np.multiply(g.reshape(-1), weight, out=buf[a:b])
            buf[-2] = loss_value * count
            buf[-1] = math.nan if right is None else right
        else:  # none of this batch is ours: we add nothing
            buf.fill(0)
        self.comm.Allreduce(self._mpi_in_place(), buf)
        averaged = [(name, p, buf[a:b].reshape(p.shape)) for (name, p, _), (a, b) in zip(named, self._slices)]
        total_right = float(buf[-1])
        return averaged, float(buf[-2]) / batch, None if math.isnan(total_right) else int(round(total_right))

    @staticmethod
    def _mpi_in_place():
        return _mpi().IN_PLACE

    # ---------------------------------------------------------------- validation
    def evaluate(self, model, x, y, loss):
        lo, hi = self.share(0, len(x))
        sums = np.zeros(3)  # loss sum, right predictions (NaN: not a classifier), samples
        if hi > lo:
            value, acc = model.evaluate(x[lo:hi], y[lo:hi], loss=loss)
            sums[:] = value * (hi - lo), math.nan if acc is None else round(acc * (hi - lo)), hi - lo
        self.comm.Allreduce(self._mpi_in_place(), sums)
        loss_sum, right, n = sums
        return float(loss_sum / n), None if math.isnan(right) else float(right / n)

    def guard(self, collective=()):
        return abort_on_error(self.world, collective)


class BatchNormSync:
    """The ``stats_reducer`` of a batch-norm layer in synchronised training over ``comm``: see the
    module's description. Every rank calls each method once per layer and step, in the same order."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm

    def statistics(self, mean: np.ndarray, var: np.ndarray, count: int) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        """The global batch's ``((mean, var), values per channel)`` from this rank's share's ``mean``
        and biased ``var`` over ``count`` values per channel (one ``Allgather``), combined in float64
        and returned in ``mean``'s dtype."""
        c = len(mean)
        mine = np.empty(1 + 2 * c)
        mine[0], mine[1 : 1 + c], mine[1 + c :] = count, mean, var
        everyone = np.empty((self.comm.Get_size(), 1 + 2 * c))
        self.comm.Allgather(mine, everyone)
        (global_mean, global_var), total = combine_statistics(everyone[:, 0], everyone[:, 1 : 1 + c],
                                                              everyone[:, 1 + c :])
        return (global_mean.astype(mean.dtype), global_var.astype(mean.dtype)), total

    def gradient_sums(self, grad_weight: np.ndarray, grad_bias: np.ndarray,
                      share: float) -> tuple[np.ndarray, np.ndarray]:
        """The sums :func:`fastcnn.functional.batch_norm_input_grad` needs, from this rank's sums of
        ``g * x_hat`` and ``g`` and its ``share`` of the global batch's values: the sum over ranks of
        ``share * sums`` (one ``Allreduce`` in float64), in ``grad_weight``'s dtype."""
        c = len(grad_weight)
        mine, total = np.empty(2 * c), np.empty(2 * c)
        mine[:c], mine[c:] = grad_weight, grad_bias
        mine *= share
        self.comm.Allreduce(mine, total)
        return total[:c].astype(grad_weight.dtype), total[c:].astype(grad_weight.dtype)


def combine_statistics(counts: np.ndarray, means: np.ndarray,
                       variances: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """Mean and biased variance per channel of the union of parts with ``counts[r]`` values per channel,
    means ``means[r]`` and biased variances ``variances[r]`` (pairwise formula, float64: no
    cancellation however large the mean against the spread); returns ``((mean, var), total count)``.
    Parts with no values add nothing."""
    counts = np.asarray(counts, np.float64)[:, None]
    means, variances = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    total = counts.sum()
    mean = (counts * means).sum(axis=0) / max(total, 1)
    squares = (counts * variances).sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return (mean, squares / max(total, 1)), int(total)


def _batch_norm_layers(layers: list) -> Iterator[BatchNorm]:
    """The batch-norm layers among ``layers`` and inside their blocks."""
    return (layer for layer in walk(layers) if isinstance(layer, BatchNorm))


@contextmanager
def abort_on_error(w: World, collective: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Stop every rank of ``w`` if this one raises: the others would wait for it in their next
    collective call forever. Exceptions in ``collective`` (raised on every rank at the same point,
    such as a diverged loss, which all ranks see after the same Allreduce) pass through, as does
    everything when ``w`` has one rank."""
    try:
        yield
    except collective:
        raise
    except BaseException:
        if w.size > 1:
            abort(w)
        raise


def abort(w: World, exc_info=None) -> None:
    """Print the exception being handled, naming this rank, and abort every rank of ``w`` (exit status 1)."""
    text = "".join(traceback.format_exception(*(exc_info or sys.exc_info())))
    sys.stderr.write(f"fastcnn: rank {w.rank} of {w.size} failed; stopping all ranks.\n{text}")
    sys.stderr.flush()
    time.sleep(_ABORT_GRACE_S)  # the process manager tears down its output forwarding on MPI_Abort: let it
    w.comm.Abort(1)  # forward the message first (else it is lost, at times: 4 runs of 12 on 2 cores)
    os._exit(1)  # MPICH's MPI_Abort can return before the process manager ends this process


def training_context(distributed: bool, sync_batchnorm: bool = False) -> Local:
    """:class:`Local`, or with ``distributed=True`` :class:`DataParallel` over :func:`world` (or
    :class:`Local` with a warning when this process is the only rank, where batch norm is synchronised
    by definition).

    Raises
    ------
    ValueError
        ``sync_batchnorm`` without ``distributed``.
    """
    if sync_batchnorm and not distributed:
        raise ValueError("sync_batchnorm=True synchronises batch norm over the processes of distributed training; "
                         "it needs distributed=True")
    if not distributed:
        return Local()
    w = world()
    if w.size == 1:
        warnings.warn("fit(distributed=True): this is the only MPI process (not started by `mpiexec -n N`); "
                      "training in one process", RuntimeWarning, stacklevel=3)
        return Local()
    return DataParallel(w, sync_batchnorm)
