"""Synchronised batch norm (fastcnn.distributed.BatchNormSync) without MPI: the split backward ops, the
combined statistics, and batch-norm layers on simulated ranks (threads whose collective calls meet in
memory) against one batch-norm layer on the whole batch. tests/test_distributed.py runs it under
``mpiexec -n 2``."""
import threading

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import distributed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_the_two_halves_of_the_backward_pass_make_the_whole(backend, rng, dtype, relu):
    x = (rng.standard_normal((3, 4, 5, 2)) * 2 + 1).astype(dtype)
    w, b = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
    grad = rng.standard_normal(x.shape).astype(dtype)
    y, mean, var = F.batch_norm(x, w, b, relu=relu, backend=backend)
    options = dict(eps=1e-5, relu_output=y if relu else None, backend=backend)
    gx, gw, gb = F.batch_norm_backward(grad, x, w, mean, var, **options)
    sums = F.batch_norm_grad_sums(grad, x, mean, var, **options)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sums[0], gw, **tol)
    np.testing.assert_allclose(sums[1], gb, **tol)
    got = F.batch_norm_input_grad(grad, x, w, mean, var, *sums, **options)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, gx, **tol)
    stats = F.batch_norm_stats(x, backend=backend)
    np.testing.assert_array_equal(stats[0], mean)
    np.testing.assert_array_equal(stats[1], var)


def test_the_split_ops_take_empty_batches(backend):
    x, c = np.zeros((0, 3, 2, 2), np.float32), np.ones(3, np.float32)
    assert all(v.shape == (3,) and not v.any() for v in F.batch_norm_stats(x, backend=backend))
    assert all(v.shape == (3,) and not v.any() for v in F.batch_norm_grad_sums(x, x, c, c, backend=backend))
    assert F.batch_norm_input_grad(x, x, c, c, c, c, c, backend=backend).shape == x.shape


def test_combined_statistics_are_the_whole_batch_without_cancellation(rng):
    # a mean 1e4 times the spread: E[x^2] - E[x]^2 in float64 would lose about 8 of 16 digits
    x = rng.standard_normal((40, 3)) + 1e4
    parts = [x[:25], x[25:25], x[25:39], x[39:]]  # uneven, one empty, one of a single sample
    (mean, var), total = distributed.combine_statistics([len(p) for p in parts],
                                                        [p.mean(axis=0) if len(p) else np.zeros(3) for p in parts],
                                                        [p.var(axis=0) if len(p) else np.zeros(3) for p in parts])
    assert total == 40
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-11)


class _Threads:
    """An in-memory stand-in for an MPI communicator of ``size`` ranks, one thread each."""

    def __init__(self, size):
        self.size, self.barrier, self.slots = size, threading.Barrier(size, timeout=60), [None] * size

    def rank(self, r):
        world = self

        class Comm:
            def Get_size(self):
                return world.size

            def Allgather(self, mine, everyone):
                everyone[:] = np.stack(world._exchange(r, mine))

            def Allreduce(self, mine, total):
                total[:] = sum(world._exchange(r, mine))  # rank order: the same sum on every rank

        return Comm()

    def _exchange(self, r, value):
        self.slots[r] = value.copy()
        self.barrier.wait()
        everyone = list(self.slots)
        self.barrier.wait()
        return everyone


def _norm(layer_type, channels, dtype, backend, seed=0):
    r = np.random.default_rng(seed)
    norm = layer_type(channels, backend=backend)
    norm.params["weight"][:] = r.random(channels) + 0.5
    norm.params["bias"][:] = r.standard_normal(channels)
    return norm.astype(dtype)


@pytest.mark.parametrize("layer_type, shape", [(fastcnn.BatchNorm2D, (8, 3, 4, 5)), (fastcnn.BatchNorm1D, (8, 3))])
@pytest.mark.parametrize("shares", [(4, 4), (5, 3), (8, 0), (1, 1, 6)])
@pytest.mark.parametrize("relu", [False, True])
def test_ranks_with_synchronised_layers_compute_what_one_layer_does_on_the_whole_batch(layer_type, shape, shares, relu,
                                                                                       backend, rng):
    """Each rank's upstream gradient is that of its share's mean loss; the gradient averaging weights
    each rank's gradients by its share of the batch: so must the input gradients add up."""
    dtype = np.float64
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    probe = rng.standard_normal(shape).astype(dtype)  # loss = mean over samples of sum(probe * y)
    bounds = np.cumsum((0,) + shares)
    whole = _norm(layer_type, shape[1], dtype, backend)
    step = fastcnn.layers.BatchNormReLU(whole, fastcnn.ReLU()) if relu else whole
    y_whole = step.forward(x, training=True)
    gx_whole = step.backward(probe / len(x))

    comms, results = _Threads(len(shares)), {}

    def rank(r):
        norm = _norm(layer_type, shape[1], dtype, backend)
        norm.stats_reducer = distributed.BatchNormSync(comms.rank(r))
        s = fastcnn.layers.BatchNormReLU(norm, fastcnn.ReLU()) if relu else norm
        lo, hi = bounds[r], bounds[r + 1]
        y = s.forward(x[lo:hi], training=True)
        gx = s.backward(probe[lo:hi] / max(hi - lo, 1))
        results[r] = y, gx, dict(norm.grads), dict(norm.buffers)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(len(shares))), "a simulated rank failed"
    results = [results[r] for r in range(len(shares))]
    np.testing.assert_allclose(np.concatenate([y for y, *_ in results]), y_whole, rtol=1e-12, atol=1e-12)
    share = [n / len(x) for n in shares]
    np.testing.assert_allclose(np.concatenate([r[1] * s for r, s in zip(results, share)]), gx_whole,
                               rtol=1e-10, atol=1e-12)
    for key in ("weight", "bias"):  # what the gradient averaging makes of the ranks' gradients
        np.testing.assert_allclose(sum(r[2][key] * s for r, s in zip(results, share)), whole.grads[key],
                                   rtol=1e-10, atol=1e-12)
    for key in ("running_mean", "running_var"):
        for r in results:
            np.testing.assert_array_equal(r[3][key], results[0][3][key])
        np.testing.assert_allclose(results[0][3][key], whole.buffers[key], rtol=1e-12)


def test_sync_batchnorm_needs_distributed():
    m = fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(4, 2, rng=0)], input_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="sync_batchnorm=True .* needs distributed=True"):
        m.fit(np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64), verbose=0, sync_batchnorm=True)


def test_the_one_process_path_installs_nothing():
    assert fastcnn.BatchNorm2D(3).stats_reducer is None
    assert not distributed.Local().sync_batchnorm


def test_a_training_step_runs_on_an_empty_share():
    """What a rank runs when its share of a short last batch is empty and batch norm is synchronised."""
    m = fastcnn.Sequential([fastcnn.Conv2D(1, 2, 3, rng=0), fastcnn.ReLU(), fastcnn.MaxPool2D(2), fastcnn.Flatten(),
                            fastcnn.Dropout(0.5), fastcnn.Dense(2 * 3 * 3, 3, rng=1)], input_shape=(1, 8, 8))
    m.layers[4].rng = np.random.default_rng(0)
    loss = fastcnn.losses.get_loss("cross_entropy")
    out = m._forward(np.zeros((0, 1, 8, 8), np.float32), training=True)
    assert out.shape == (0, 3) and loss(out, np.zeros(0, np.int64)) == 0.0
    m.backward(loss.backward(), input_grad=False)
    assert not any(g.any() for _, _, g in m.named_parameters())


class _FakeWorld:
    rank, size, is_root, comm = 0, 2, True, None


def test_every_batch_norm_gets_the_hook_while_training_and_loses_it_however_training_ends():
    model = fastcnn.models.resnet(seed=0)  # nine batch norms, six of them inside Residual blocks
    norms = list(distributed._batch_norm_layers(model.layers))
    assert len(norms) == 9 and len({id(n) for n in norms}) == 9
    ctx = distributed.DataParallel(_FakeWorld(), sync_batchnorm=True)
    with pytest.raises(RuntimeError, match="boom"):
        with ctx.attached(model):
            assert all(isinstance(n.stats_reducer, distributed.BatchNormSync) for n in norms)
            raise RuntimeError("boom")
    assert all(n.stats_reducer is None for n in norms) and "stats_reducer" not in vars(norms[0])
    with distributed.DataParallel(_FakeWorld()).attached(model):  # per-rank batch norm: no hook
        assert all(n.stats_reducer is None for n in norms)
