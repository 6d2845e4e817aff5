"""The inference plan behind predict/evaluate: the same answers as running the layers, batch norm
folded, and never stale after training, edits in place, new weights or a new dtype."""
import threading

import numpy as np
import pytest

import fastcnn
from fastcnn import backends, inference, models
from fastcnn import layers as L
from fastcnn._checks import conv_geometry, pool_geometry
from fastcnn.blocks import Residual
from fastcnn.kernels import jit, scratch

from . import reference as ref
from .reference import random_batch_norm

if jit.NUMBA_AVAILABLE:
    from fastcnn.kernels import conv_numba


def _forward(model, x, batch_size):
    """The reference: every layer's own forward, batch by batch (what predict did before the plan)."""
    return np.concatenate([model.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])




def bn_model():
    return fastcnn.Sequential([
        L.Conv2D(1, 4, 3, padding=1, rng=0), random_batch_norm(L.BatchNorm2D(4), 1), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(4, 4, 3, bias=False, rng=2), random_batch_norm(L.BatchNorm2D(4), 3), L.Tanh(), L.AvgPool2D(2, padding=1),
        L.Flatten(), L.Dropout(0.5, rng=0), L.Dense(16, 8, rng=4), random_batch_norm(L.BatchNorm1D(8), 5), L.ReLU(),
        L.Dense(8, 3, rng=6),
    ], input_shape=(1, 8, 8))


@pytest.mark.parametrize("name", ["lenet", "mlp", "toy_conv"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_is_the_layers_forward_bit_for_bit(name, dtype):
    model = models.PRESETS[name](seed=0).astype(dtype)
    x = np.random.default_rng(0).random((5,) + model.input_shape).astype(dtype)
    for batch_size in (2, 5):
        got = model.predict(x, batch_size=batch_size)
        assert got.dtype == dtype
        assert np.array_equal(got, _forward(model, x, batch_size))


def test_predict_follows_every_conv_and_pool_option():
    """A depthwise conv (its batch norm folded), grouped and padding-mode convs (not folded: a batch norm
    after them runs as itself), a conv fused with a dilated ceil-mode max-pool, and average pools with
    ceil mode, count_include_pad=False and divisor_override, against the layers' own forward."""
    model = fastcnn.Sequential([
        L.Conv2D(2, 4, 3, padding=1, groups=2, rng=0), random_batch_norm(L.BatchNorm2D(4), 1),
        L.Conv2D(4, 4, 3, padding=1, groups=2, rng=6), random_batch_norm(L.BatchNorm2D(4), 7),
        L.Conv2D(4, 4, 3, padding=1, padding_mode="reflect", rng=2), random_batch_norm(L.BatchNorm2D(4), 3),
        L.Conv2D(4, 4, 3, rng=4), L.MaxPool2D(2, stride=2, padding=1, dilation=2, ceil_mode=True), L.ReLU(),
        L.AvgPool2D(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        L.AvgPool2D(2, stride=1, divisor_override=3), L.MaxPool2D(2, stride=1, ceil_mode=True),
        L.Flatten(), L.Dense(16, 2, rng=5),
    ], input_shape=(2, 13, 13))
    x = np.random.default_rng(4).standard_normal((3, 2, 13, 13)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, batch_size=2), _forward(model, x, 2), rtol=1e-5, atol=1e-5)
    steps = model._inference.steps
    assert [type(s).__name__ for s in steps[:3]] == ["_Conv", "_Layer", "_Layer"]  # depthwise + BN, grouped, BN
    assert steps[0].op == "depthwise_conv2d"


def test_batch_norm_is_folded_and_steps_fused():
    model = bn_model()
    x = np.random.default_rng(1).random((6, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x, batch_size=4), _forward(model, x, 4), rtol=1e-5, atol=1e-5)
    steps = model._inference.steps
    # conv+BN+ReLU+pool is one fused op; conv+BN, then Tanh (in place on the conv's output) and the
    # average pool; dense+BN with the ReLU after it; dense.
    assert [type(s).__name__ for s in steps] == ["_Conv", "_Conv", "_Activation", "_AvgPool", "_Flatten", "_Linear",
                                                 "_Linear"]
    assert steps[2].in_place
    assert steps[0].op == "conv2d_max_pool2d" and steps[0].relu
    assert steps[5].relu and not steps[6].relu


def residual_model():
    """Residual blocks with batch norm in the body and in a strided shortcut, an identity shortcut, a
    block nested in a body, and a block that ends the model."""
    return fastcnn.Sequential([
        L.Conv2D(1, 4, 3, padding=1, rng=0),
        Residual([L.Conv2D(4, 6, 3, stride=2, padding=1, bias=False, rng=1), random_batch_norm(L.BatchNorm2D(6), 2),
                  L.ReLU(), L.Conv2D(6, 6, 3, padding=1, rng=3), L.MaxPool2D(2), L.ReLU()],
                 [L.Conv2D(4, 6, 1, stride=4, bias=False, rng=4), random_batch_norm(L.BatchNorm2D(6), 5)]),
        Residual([Residual([L.Conv2D(6, 6, 3, padding=1, rng=6), random_batch_norm(L.BatchNorm2D(6), 7)]), L.ReLU()]),
        L.ReLU(), Residual([L.Conv2D(6, 6, 1, rng=8)]),
    ], input_shape=(1, 12, 12))


@pytest.mark.parametrize("policy", ["auto", "numpy"] + (["numba"] if jit.NUMBA_AVAILABLE else []))
def test_a_relu_after_a_conv_without_pool_runs_in_the_conv_step(policy):
    """Same-padded, strided and depthwise convs each followed by a ReLU (no pool): one step each, the
    same bits as the layers' own forward (no batch norm, so nothing is folded), NaN kept."""
    model = fastcnn.Sequential([
        L.Conv2D(2, 8, 3, padding="same", rng=0), L.ReLU(),
        L.Conv2D(8, 8, 3, stride=2, padding=1, rng=1), L.ReLU(),
        L.Conv2D(8, 8, 3, padding=1, groups=8, rng=2), L.ReLU(), L.ReLU(),
        L.Flatten(), L.Dense(8 * 5 * 5, 3, rng=3),
    ], input_shape=(2, 9, 9))
    x = np.random.default_rng(16).standard_normal((4, 2, 9, 9)).astype(np.float32)
    x[1, 0, 4, 4] = np.nan
    with fastcnn.dispatch.use_backend(policy):
        got = model.predict(x, batch_size=3)
        want = _forward(model, x, 3)
    if policy == "auto":  # the plan's conv steps and the ops may each have measured faster on another backend
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # NaN where want has NaN
    else:
        np.testing.assert_array_equal(got, want)
    assert [type(s).__name__ for s in model._inference.steps] == ["_Conv", "_Conv", "_Conv", "_Activation", "_Flatten",
                                                                   "_Linear"]
    assert all(step.relu for step in model._inference.steps[:3])


@pytest.mark.parametrize("policy", ["auto", "numpy"] + (["numba"] if jit.NUMBA_AVAILABLE else []))
def test_large_outputs_alternate_between_two_kept_buffers(policy):
    """Outputs of 128 KiB or more that the next step consumes are written into the plan's two buffers,
    the same memory from call to call; activations run in place on arrays the plan made, never on the
    caller's input (a residual body's first ReLU: the shortcut reads the same input). The answers are
    the layers' own, for two inputs in turn, and what predict returns is never a buffer."""
    model = fastcnn.Sequential([
        L.Conv2D(4, 16, 3, padding=1, rng=0), L.ReLU(),
        L.Conv2D(16, 16, 3, padding=1, groups=16, rng=1), random_batch_norm(L.BatchNorm2D(16), 2), L.ReLU(),
        L.Tanh(), L.AvgPool2D(2),
        Residual([L.ReLU(), L.Conv2D(16, 16, 1, rng=3), L.ReLU()]), L.ReLU(),
        L.Conv2D(16, 16, 3, padding=2, dilation=2, rng=4), L.Tanh(),
        L.Conv2D(16, 8, 3, stride=2, padding=1, rng=5), L.GlobalAvgPool2D(), L.Dense(8, 3, rng=6),
    ], input_shape=(4, 32, 32))
    rng = np.random.default_rng(21)
    x1, x2 = (rng.standard_normal((16, 4, 32, 32)).astype(np.float32) for _ in range(2))
    given = x1.copy()
    with fastcnn.dispatch.use_backend(policy):
        first = model.predict(x1)
        buffers = [b.__array_interface__["data"][0] for b in model._inference._outputs._local.buffers]
        kept = first.copy()
        second = model.predict(x2)
        want1, want2 = _forward(model, x1, 16), _forward(model, x2, 16)
    assert np.array_equal(x1, given)
    tolerance = dict(rtol=1e-5, atol=1e-5)  # the plan folds batch norm; auto may pick other kernels than forward
    np.testing.assert_allclose(first, want1, **tolerance)
    np.testing.assert_allclose(second, want2, **tolerance)
    assert np.array_equal(first, kept)
    plan = model._inference
    assert [b.__array_interface__["data"][0] for b in plan._outputs._local.buffers] == buffers
    # outputs the next step consumes alternate (an activation in place, or the last step: none)
    assert plan._slots == [0, 1, None, 0, 1, 0, None, 1, 0, None]
    assert not any(np.shares_memory(second, b) for b in plan._outputs._local.buffers)
    names = [type(s).__name__ for s in plan.steps]
    assert names == ["_Conv", "_Conv", "_Activation", "_AvgPool", "_Residual", "_Conv", "_Activation", "_Conv",
                     "_AvgPool", "_Linear"]
    assert plan.steps[4].relu  # the ReLU after the block, in its add
    assert all(plan.steps[k].in_place for k in (2, 6))
    assert not plan.steps[4].plans[0].steps[0].in_place  # the block's input: the shortcut's too


def test_residual_blocks_run_as_plans_of_their_own():
    """Each residual branch is a plan of its own (its batch norms folded, its conv, pool and ReLU fused):
    the same answers as the layers' own forward, and what predict returns is never a kept buffer."""
    model = residual_model()
    rng = np.random.default_rng(12)
    for n, batch_size in ((1, 1), (5, 2), (7, 512)):
        x1, x2 = (rng.standard_normal((n, 1, 12, 12)).astype(np.float32) for _ in range(2))
        first = model.predict(x1, batch_size=batch_size)
        kept = first.copy()
        second = model.predict(x2, batch_size=batch_size)
        np.testing.assert_allclose(first, _forward(model, x1, batch_size), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(second, _forward(model, x2, batch_size), rtol=1e-5, atol=1e-5)
        assert np.array_equal(first, kept) and not np.shares_memory(first, second)
    steps = model._inference.steps
    assert [type(s).__name__ for s in steps] == ["_Conv", "_Residual", "_Residual", "_Residual"]
    body, shortcut = steps[1].plans
    assert [type(s).__name__ for s in body.steps] == ["_Conv", "_Conv"] and body.steps[0].relu and body.steps[1].relu
    assert [type(s).__name__ for s in shortcut.steps] == ["_Conv"]  # its batch norm folded
    inner = steps[2].plans[0].steps
    assert [type(s).__name__ for s in inner] == ["_Residual"] and inner[0].relu  # the ReLU after a block, in its add
    assert [s.relu for s in steps[1:]] == [False, True, False]


def test_residual_plan_sees_layers_added_inside_a_block():
    model = residual_model()
    x = np.random.default_rng(14).standard_normal((3, 1, 12, 12)).astype(np.float32)
    before = model.predict(x)
    model.layers[4].body.add(L.ReLU())  # a layer with no parameters, in the last block's body
    model.layers[2].body.layers[0].body.layers.append(L.Tanh())  # in a block inside a block
    got = model.predict(x)
    np.testing.assert_allclose(got, _forward(model, x, 3), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, before)


def test_a_residual_subclass_runs_its_own_forward():
    class Doubled(Residual):
        def forward(self, x, training=False):
            return 2 * super().forward(x, training)

    model = fastcnn.Sequential([Doubled([L.Conv2D(1, 1, 3, padding=1, rng=0)])], input_shape=(1, 5, 5))
    x = np.random.default_rng(15).standard_normal((2, 1, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), _forward(model, x, 2), rtol=1e-6)
    assert [type(s).__name__ for s in model._inference.steps] == ["_Layer"]


def test_residual_plan_sees_a_new_backend_inside_a_block():
    model = residual_model()
    x = np.random.default_rng(13).standard_normal((3, 1, 12, 12)).astype(np.float32)
    model.predict(x)
    plan = model._inference
    model.layers[1].body.layers[0].backend = "numpy"
    np.testing.assert_allclose(model.predict(x), _forward(model, x, 3), rtol=1e-5, atol=1e-5)
    assert model._inference is not plan


def test_fold_against_float64_reference():
    conv, bn = L.Conv2D(2, 3, 3, rng=0), random_batch_norm(L.BatchNorm2D(3), 1)
    conv.params["bias"] = np.arange(3, dtype=np.float32)
    w, b = inference.fold_batch_norm(conv.params["weight"], conv.params["bias"], bn)
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 5))
    ref = bn.astype(np.float64).forward(conv.astype(np.float64).forward(x))
    got = fastcnn.functional.conv2d(x, w.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_fold_kernel_is_numpys_and_writes_into_given_arrays(monkeypatch):
    """The Numba fold (one pass, into given arrays) against the NumPy one, for a conv with and without
    bias and a dense layer; float64 to 1 ulp of float32, the given arrays returned."""
    rng = np.random.default_rng(16)
    for weight, bias, bn in [(rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5), L.BatchNorm2D(5)),
                             (rng.standard_normal((6, 2, 1, 1)), None, L.BatchNorm2D(6)),
                             (rng.standard_normal((7, 40)), rng.standard_normal(7), L.BatchNorm1D(7))]:
        weight = weight.astype(np.float32)
        bias = None if bias is None else bias.astype(np.float32)
        bn = random_batch_norm(bn, 17)
        out = (np.full_like(weight, np.nan), np.full(weight.shape[0], np.nan, np.float32))
        got = inference.fold_batch_norm(weight, bias, bn, out)
        assert got[0] is out[0] and got[1] is out[1]
        monkeypatch.setattr(backends.jit, "NUMBA_AVAILABLE", False)
        want = inference.fold_batch_norm(weight, bias, bn)
        monkeypatch.undo()
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-7, atol=0)


def test_fold_checks_its_arrays():
    conv, bn = L.Conv2D(2, 3, 3, rng=0), random_batch_norm(L.BatchNorm2D(3), 1)
    weight, bias = conv.params["weight"], conv.params["bias"]
    with pytest.raises(ValueError, match=r"out\[0\] must have shape \(3, 2, 3, 3\)"):
        inference.fold_batch_norm(weight, bias, bn, (np.empty((3, 2, 3), np.float32), np.empty(3, np.float32)))
    with pytest.raises(ValueError, match="out\\[1\\] must be a writable C-contiguous float32"):
        inference.fold_batch_norm(weight, bias, bn, (np.empty_like(weight), np.empty(6, np.float32)[::2]))
    bn.buffers["running_var"] = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        inference.fold_batch_norm(weight, bias, bn)


def test_each_thread_folds_into_arrays_of_its_own():
    conv, bn = L.Conv2D(2, 3, 3, rng=0), random_batch_norm(L.BatchNorm2D(3), 1)
    arrays = inference._folded(conv, bn)
    mine, other = arrays(), []
    thread = threading.Thread(target=lambda: other.append(arrays()))
    thread.start()
    thread.join()
    assert mine[0] is not other[0][0] and mine[1] is not other[0][1]
    assert np.array_equal(mine[0], other[0][0]) and np.array_equal(mine[1], other[0][1])
    assert arrays()[0] is mine[0]  # kept for the thread's next call


def test_read_only_weights_predict():
    """Read-only parameters (a memory-mapped file, say): the prepared convs copy them into a tap matrix
    instead of reading them as one."""
    model = fastcnn.Sequential([L.Conv2D(1, 8, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2D(2),
                                L.Conv2D(8, 8, 3, stride=2, padding=1, rng=1), L.ReLU(), L.Flatten(),
                                L.Dense(32, 3, rng=2)], input_shape=(1, 8, 8))
    for layer in model.layers:
        for array in layer.params.values():
            array.setflags(write=False)
    x = np.random.default_rng(19).standard_normal((3, 1, 8, 8)).astype(np.float32)
    for policy in ["numpy"] + (["numba"] if jit.NUMBA_AVAILABLE else []):
        with fastcnn.use_backend(policy):
            np.testing.assert_array_equal(model.predict(x), _forward(model, x, 3))


@pytest.mark.parametrize("policy", ["auto", "numpy"] + (["numba"] if jit.NUMBA_AVAILABLE else []))
def test_average_pools_and_same_shaped_folds_in_the_plan(policy):
    """Average pools (padding, ceil mode, without padded zeros, a divisor) and a global one as plan steps,
    and two conv + batch norm pairs of one shape (their folds kept apart): the layers' own forward."""
    model = fastcnn.Sequential([
        L.Conv2D(2, 4, 3, padding=1, rng=0), L.Tanh(),
        L.Conv2D(4, 4, 3, padding=1, rng=1), random_batch_norm(L.BatchNorm2D(4), 2), L.Tanh(),
        L.Conv2D(4, 4, 3, padding=1, rng=3), random_batch_norm(L.BatchNorm2D(4), 4), L.Tanh(),
        L.AvgPool2D(3, 2, padding=1, ceil_mode=True, count_include_pad=False), L.AvgPool2D(2, divisor_override=3),
        L.AvgPool2D(2, 1, padding=1), L.GlobalAvgPool2D(), L.Dense(4, 3, rng=4),
    ], input_shape=(2, 11, 11))
    x = np.random.default_rng(18).standard_normal((5, 2, 11, 11)).astype(np.float32)
    with fastcnn.use_backend(policy):
        for _ in range(2):  # the first call binds the steps, the second runs them bound
            np.testing.assert_allclose(model.predict(x, batch_size=3), _forward(model, x, 3), rtol=1e-5, atol=1e-5)
    assert [type(s).__name__ for s in model._inference.steps].count("_AvgPool") == 4


def test_predict_follows_training_edits_and_new_weights():
    model = bn_model()
    x = np.random.default_rng(3).random((8, 1, 8, 8), dtype=np.float32)
    y = np.arange(8) % 3
    before = model.predict(x)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, optimizer=fastcnn.SGD(0.5))
    after = model.predict(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _forward(model, x, 8), rtol=1e-5, atol=1e-5)
    model.layers[0].params["weight"] *= 2  # in place: the plan reads live arrays and folds per call
    np.testing.assert_allclose(model.predict(x), _forward(model, x, 8), rtol=1e-5, atol=1e-5)
    model.load_state_dict(bn_model().state_dict())
    np.testing.assert_allclose(model.predict(x), before, rtol=1e-6, atol=1e-6)
    model.astype(np.float64)
    assert model.predict(x).dtype == np.float64
    model.layers[-1] = L.Dense(8, 2, rng=7).astype(np.float64)
    assert model.predict(x).shape == (8, 2)


def test_parameters_the_fast_path_cannot_take_still_give_the_right_answer():
    model = models.lenet(seed=0)
    x = np.random.default_rng(4).random((3, 1, 28, 28), dtype=np.float32)
    expected = model.predict(x)
    model.layers[0].params["weight"] = np.asfortranarray(model.layers[0].params["weight"])
    model.layers[7].params["weight"] = np.asfortranarray(model.layers[7].params["weight"])
    assert np.array_equal(model.predict(x), expected)


def test_predict_proba():
    model = models.lenet(seed=0)
    x = np.random.default_rng(5).random((4, 1, 28, 28), dtype=np.float32)
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(p, fastcnn.functional.softmax(model.predict(x)), rtol=1e-6)
    ends_in_softmax = fastcnn.Sequential([L.Flatten(), L.Dense(784, 10, rng=0), L.Softmax()], input_shape=(1, 28, 28))
    assert np.array_equal(ends_in_softmax.predict_proba(x), ends_in_softmax.predict(x))


def test_evaluate_runs_the_plan():
    model = bn_model()
    x = np.random.default_rng(6).random((5, 1, 8, 8), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1])
    loss, acc = model.evaluate(x, y)
    ref = _forward(model, x, 5)
    assert loss == pytest.approx(fastcnn.CrossEntropyLoss()(ref, y), rel=1e-5)
    assert acc == pytest.approx(float((ref.argmax(1) == y).mean()))


@pytest.mark.parametrize("build", [lambda: models.lenet(seed=0), bn_model, residual_model])
def test_threads_share_one_model(build):
    """Four threads predict with one model at once (batch norms folded into each thread's own arrays)."""
    model = build()
    x = np.random.default_rng(7).random((4,) + model.input_shape, dtype=np.float32)
    expected = model.predict(x)
    results = [None] * 4

    def work(i):
        results[i] = [model.predict(x) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, expected) for rs in results for r in rs)


def test_bad_input_is_checked_once_per_call():
    model = models.lenet(seed=0)
    with pytest.raises(ValueError, match="cannot take"):
        model.predict(np.zeros((2, 1, 20, 28), np.float32))
    with pytest.raises(TypeError, match="floating point"):
        model.predict(np.zeros((2, 1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        model.predict(np.zeros((0, 1, 28, 28), np.float32))


def test_padded_inputs_are_reused_without_changing_answers():
    model = fastcnn.Sequential([L.Conv2D(2, 3, 3, padding=1, rng=0), L.ReLU(), L.AvgPool2D(3, stride=2, padding=1),
                                L.Conv2D(3, 2, 2, padding="same", rng=1)], input_shape=(2, 6, 7))
    rng = np.random.default_rng(8)
    for n in (3, 1, 3, 2, 3):  # shapes met again reuse their padded buffers; the answers stay right
        x = rng.standard_normal((n, 2, 6, 7)).astype(np.float32)
        assert np.array_equal(model.predict(x), _forward(model, x, n))


def _conv_pool_reference(x, w, b, dilation, pads, relu):
    y = ref.max_pool2d(ref.conv2d(x, w, b, pads=pads, dilation=dilation).astype(x.dtype), (2, 2), (2, 2), (0, 0))[0]
    return np.maximum(y, 0) if relu else y


_PREPARED = [
    ((1, 1, 12, 12, 8), (1, 1), 0, True, True),  # one sample: a serial launch at the default threshold
    ((9, 1, 7, 7, 3), (1, 1), 0, True, True),  # tiny planes, several samples per task: tasks with 5 and 4
    ((3, 1, 21, 21, 2), (1, 1), 0, True, False),  # a task per sample; the pool leaves the last row and column
    ((3, 2, 11, 9, 5), (1, 2), 0, True, False),  # odd planes, fewer output channels than a tile, dilation
    ((3, 3, 7, 8, 17), (1, 1), 0, False, False),  # no pool: the conv's own output, 17 rows (a tile and a bit)
    ((4, 3, 8, 8, 9), (1, 1), 1, True, True),  # "same" padding, read in with zeros: no padded copy
    ((3, 2, 7, 6, 5), (2, 1), (2, 0, 1, 3), False, False),  # padding on some sides only, dilation
    ((2, 2, 5, 5, 4), (1, 1), (0, 0, 2, 1), True, False),  # rows of padding only: whole planes as one run
    ((1, 3, 10, 10, 32), (1, 1), 1, True, True),  # one sample, its tasks 4 groups of output channels
    ((2, 4, 9, 9, 20), (1, 1), 1, False, True),  # 20 channels in 3 groups; the tap matrix padded to 24 rows
    ((1, 2, 8, 8, 3), (1, 1), 0, False, False),  # 3 channels, a group each
]
_PREPARED_STRIDED = [(*case, stride) for case in _PREPARED for stride in (2, 3) if case[1] == (1, 1) and not case[3]]


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, dilation, padding, pooled, relu, stride",
                         [(*case, 1) for case in _PREPARED] + _PREPARED_STRIDED)
def test_prepared_conv_is_the_same_serial_or_parallel(monkeypatch, dtype, shape, dilation, padding, pooled, relu,
                                                      stride):
    """The inference plan's one-launch conv, forced serial and forced parallel: the same outputs, bit for
    bit, as the op's kernel, and the reference's; its runs (in poisoned scratch, or its own) and the output
    array it is given do not leak between calls.
    Strided (by phases: no dilation, no pool) as well."""
    monkeypatch.setattr(jit, "num_threads", lambda: 2)  # the tasks as on two threads, whatever the machine has
    n, c, h, w, c_out = shape
    rng = np.random.default_rng(9)
    x, wt = rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((c_out, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    geo = conv_geometry(x.shape, wt.shape, stride, padding, dilation)
    pool = pool_geometry((n, c_out) + geo.out_hw, (2, 2), (2, 2), (0, 0), (1, 1), 0) if pooled else None
    assert conv_numba.PreparedConv.takes(x.shape, wt.shape, geo, pool)
    monkeypatch.setattr(conv_numba, "_kept_prepared", lambda *args: None)  # the op's two-pass kernel
    if pooled:
        op = conv_numba.conv2d_max_pool2d_forward(x, wt, b, geo, pool, relu)[0]
        want = _conv_pool_reference(x.astype(np.float64), wt, b, dilation, geo.padding, relu)
    else:
        op = conv_numba.conv2d_forward(x, wt, b, geo)
        want = ref.conv2d(x.astype(np.float64), wt, b, stride=(stride, stride), pads=geo.padding, dilation=dilation)
        op, want = (np.maximum(op, 0), np.maximum(want, 0)) if relu else (op, want)
    results = []
    for serial_below in (0, 1 << 60):  # every launch parallel, then every launch serial
        for own_runs in (0, 1 << 60):  # the runs in scratch (poisoned), then kept by the prepared conv
            monkeypatch.setattr(jit, "SERIAL_WORK", serial_below)
            monkeypatch.setattr(conv_numba, "_OWN_RUNS_BYTES", own_runs)
            prepared = conv_numba.PreparedConv(x.shape, wt.shape, dtype, geo, pool, relu)
            out = np.full(prepared.out_shape, np.nan, dtype)
            prepared(rng.standard_normal(x.shape).astype(dtype), wt * 3, b, out)  # other values in the runs and out
            _poison_scratch()
            got = prepared(x, wt, b, out)
            assert got is out
            results.append(got)
    for got in results:
        assert got.dtype == dtype
        assert np.array_equal(got, op)
        np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-12)


def _poison_scratch():
    """NaN in every scratch buffer of this thread (all bits set: a NaN in float32 and float64 alike): a
    kernel that reads a value it did not write fails."""
    for buf, *_ in getattr(scratch._local, "buffers", {}).values():  # (bytes, shape, dtype, view)
        buf.fill(0xFF)


def _refuse_two_passes(monkeypatch):
    """Make the op's two-pass conv kernel fail the test if it runs (the prepared conv must); returns
    the function that puts it back."""
    two_passes = conv_numba._conv_wide_into

    def refused(*args):
        raise AssertionError("the two-pass kernel ran where the prepared conv should have")

    monkeypatch.setattr(conv_numba, "_conv_wide_into", refused)
    return lambda: monkeypatch.setattr(conv_numba, "_conv_wide_into", two_passes)


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, padding, relu", [((3, 1, 12, 12, 5), 0, False), ((2, 3, 9, 41, 4), 1, True),
                                                  ((64, 1, 28, 28, 8), 0, True), ((9, 8, 13, 13, 16), 0, True)])
def test_training_conv_pool_by_tasks_is_the_two_pass_kernel(monkeypatch, dtype, shape, padding, relu):
    """Training's conv + 2x2 max-pool pools each task's wide output while it is in cache (a PreparedConv
    that keeps the argmax) where the prepared conv takes the shapes, else it correlates the whole batch
    and then pools it: the same outputs and argmax, bit for bit (NaN included), serial or parallel, its
    runs in scratch (poisoned) or its own."""
    monkeypatch.setattr(jit, "num_threads", lambda: 2)
    n, c, h, w, c_out = shape
    rng = np.random.default_rng(12)
    x, wt = rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((c_out, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    x[0, 0, 2, 3] = np.nan  # a NaN wins its windows, and its argmax says where
    geo = conv_geometry(x.shape, wt.shape, 1, padding, 1)
    pool = pool_geometry((n, c_out) + geo.out_hw, (2, 2), (2, 2), (0, 0), (1, 1), 0)
    restore_two_passes = _refuse_two_passes(monkeypatch)
    by_tasks = []
    for serial_below in (0, 1 << 60):  # every launch parallel, then every launch serial
        for own_runs in (0, 1 << 60):  # the runs in scratch (poisoned), then kept by the prepared conv
            monkeypatch.setattr(jit, "SERIAL_WORK", serial_below)
            monkeypatch.setattr(conv_numba, "_OWN_RUNS_BYTES", own_runs)
            conv_numba._kept_prepared.cache_clear()
            _poison_scratch()
            by_tasks.append(conv_numba.conv2d_max_pool2d_forward(x, wt, b, geo, pool, relu))
    restore_two_passes()
    conv_numba._kept_prepared.cache_clear()
    monkeypatch.setattr(conv_numba, "_kept_prepared", lambda *args: None)  # the op's two-pass kernel
    y, idx = conv_numba.conv2d_max_pool2d_forward(x, wt, b, geo, pool, relu)
    assert np.isnan(y).any()
    for got_y, got_idx in by_tasks:
        assert np.array_equal(got_y, y, equal_nan=True) and np.array_equal(got_idx, idx)


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, padding, dilation, relu", [
    ((3, 1, 12, 12, 5), 3, 0, 1, False), ((2, 3, 9, 41, 4), 3, 1, 1, True), ((64, 3, 16, 16, 16), 3, "same", 1, False),
    ((9, 8, 13, 11, 24), 3, (0, 2, 1, 0), 2, True),
    ((40, 4, 7, 7, 8), 2, "same", 1, True),  # small planes: several samples a task, the last cut short; padding on one side
    ((5, 2, 5, 6, 3), 3, 1, 1, False),  # fewer than 4 output channels: one row at a time
])
def test_training_conv_by_tasks_is_the_two_pass_kernel(monkeypatch, dtype, shape, kernel, padding, dilation, relu):
    """Training's stride-1 conv (through a ReLU with ``relu``) copies each task's wide output out while
    it is in cache (a kept PreparedConv) where the prepared conv takes the shapes, else it correlates the
    whole batch and then copies it out: the same output bit for bit (NaN and inf included), serial or
    parallel, runs in scratch (poisoned) or kept, as the reference's."""
    monkeypatch.setattr(jit, "num_threads", lambda: 2)
    n, c, h, w, c_out = shape
    rng = np.random.default_rng(13)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c, kernel, kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    x[0, 0, 2, 3], x[-1, -1, -1, -1] = np.nan, np.inf
    geo = conv_geometry(x.shape, wt.shape, 1, padding, dilation)
    forward = conv_numba.conv2d_relu_forward if relu else conv_numba.conv2d_forward
    restore_two_passes = _refuse_two_passes(monkeypatch)
    by_tasks = []
    for serial_below in (0, 1 << 60):  # every launch parallel, then every launch serial
        for own_runs in (0, 1 << 60):  # the runs in scratch, then kept by the prepared conv
            monkeypatch.setattr(jit, "SERIAL_WORK", serial_below)
            monkeypatch.setattr(conv_numba, "_OWN_RUNS_BYTES", own_runs)
            conv_numba._kept_prepared.cache_clear()
            forward(rng.standard_normal(x.shape).astype(dtype), wt * 3, b, geo)  # other values in the runs
            _poison_scratch()
            by_tasks.append(forward(x, wt, b, geo))
    restore_two_passes()
    conv_numba._kept_prepared.cache_clear()
    monkeypatch.setattr(conv_numba, "_kept_prepared", lambda *args: None)  # the op's two-pass kernel
    y = forward(x, wt, b, geo)
    assert np.isnan(y).any() and np.isinf(y).any()
    for got in by_tasks:
        assert np.array_equal(got, y, equal_nan=True)
    want = ref.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), stride=(1, 1),
                      pads=geo.padding, dilation=geo.dilation)
    want = np.where(want <= 0, 0, want) if relu else want  # NaN kept, as the ReLU keeps it
    finite = np.isfinite(want)
    np.testing.assert_allclose(y[finite], want[finite], rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-12)
    assert np.array_equal(np.isnan(y), np.isnan(want))
    assert np.array_equal(y[np.isinf(want)], want[np.isinf(want)])  # the infinities, with their signs


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("kernel, stride, padding", [
    ((1, 1), (2, 2), 1),  # a kernel smaller than the stride: phases no tap reads are left out
    ((2, 2), (3, 3), 1),
    ((7, 7), (2, 2), 3),  # padding wider than the stride
    ((3, 3), (3, 2), (1, 0)),  # different strides across and down
    ((3, 3), (2, 2), (0, 2, 1, 0)),  # padding on some sides only
    ((3, 5), (2, 1), (1, 2)),  # strided down only
])
def test_prepared_strided_convs_of_any_geometry(monkeypatch, kernel, stride, padding):
    """Strided convs prepared as their phases' stride-1 conv: the op's output bit for bit, and the
    reference's, serial and parallel, batch 1 (groups of output channels) and 3."""
    monkeypatch.setattr(jit, "num_threads", lambda: 2)
    rng = np.random.default_rng(20)
    wt = rng.standard_normal((10, 3) + kernel).astype(np.float32)  # (16 would run in conv_channels at batch 3)
    b = rng.standard_normal(10).astype(np.float32)
    for n in (1, 3):
        x = rng.standard_normal((n, 3, 11, 10)).astype(np.float32)
        geo = conv_geometry(x.shape, wt.shape, stride, padding, 1)
        assert conv_numba.PreparedConv.takes(x.shape, wt.shape, geo)
        op = conv_numba.conv2d_forward(x, wt, b, geo)
        np.testing.assert_allclose(op, ref.conv2d(x, wt, b, stride=stride, pads=geo.padding), rtol=1e-4, atol=1e-4)
        for serial_below in (0, 1 << 60):
            monkeypatch.setattr(jit, "SERIAL_WORK", serial_below)
            assert np.array_equal(conv_numba.PreparedConv(x.shape, wt.shape, np.float32, geo)(x, wt, b), op)


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
def test_prepared_conv_refuses_what_it_cannot_take():
    x_shape, w_shape = (2, 3, 9, 9), (4, 3, 3, 3)
    geo = conv_geometry(x_shape, w_shape, 2, 1, 2)  # strided and dilated
    assert not conv_numba.PreparedConv.takes(x_shape, w_shape, geo)
    with pytest.raises(ValueError, match="strided ones without dilation or pool"):
        conv_numba.PreparedConv(x_shape, w_shape, np.float32, geo)
    for stride in (1, 2):  # a 1x1 conv without padding: its own kernel, on the input or its subsample
        geo = conv_geometry(x_shape, (4, 3, 1, 1), stride, 0, 1)
        assert not conv_numba.PreparedConv.takes(x_shape, (4, 3, 1, 1), geo)


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("n, c_in, pooled", [(1, 12, False), (2, 20, False), (5, 3, False), (1, 13, True), (3, 6, True)])
def test_wide_input_gradient_by_tasks(monkeypatch, n, c_in, pooled):
    """The stride-1 input gradient in the wide layout (32x32 planes, which conv_channels leaves there),
    by tasks of samples and, for few samples, groups of input channels whose last one is padded (input
    channels not a multiple of a tile's rows), of a conv and of a conv whose output a 2x2 max-pool took:
    the reference's values (NumPy's backend for the pooled one), and the same bits on one thread as on two."""
    from fastcnn import functional as F
    from fastcnn.kernels import conv_channels
    monkeypatch.setattr(jit, "SERIAL_WORK", 0)
    rng = np.random.default_rng(n * c_in)
    x = rng.standard_normal((n, c_in, 32, 32))
    w = rng.standard_normal((8, c_in, 3, 3))
    geo = conv_geometry(x.shape, w.shape, 1, 1, 1)
    assert not conv_channels.takes(x.shape, w.shape, geo, "input_gradient")
    gy = rng.standard_normal((n, 8, 16, 16) if pooled else (n, 8, 32, 32))

    def gradient():
        if pooled:
            _, idx = F.conv2d_max_pool2d(x, w, padding=1, backend="numba")
            return F.conv2d_max_pool2d_backward(gy, idx, x, w, padding=1, backend="numba")[0]
        return F.conv2d_backward(gy, x, w, padding=1, backend="numba")[0]

    if pooled:
        _, idx = F.conv2d_max_pool2d(x, w, padding=1, backend="numpy")
        want = F.conv2d_max_pool2d_backward(gy, idx, x, w, padding=1, backend="numpy")[0]
    else:
        want = ref.conv2d_backward(gy, x, w, pads=geo.padding)[0]
    before = fastcnn.get_num_threads()
    try:
        got = {}
        for threads in (1, max(2, fastcnn.threads.max_threads())):
            fastcnn.set_num_threads(min(threads, fastcnn.threads.max_threads()))
            monkeypatch.setattr(jit, "num_threads", lambda threads=threads: threads)  # the groups two threads get
            got[threads] = gradient()
    finally:
        fastcnn.set_num_threads(before)
    first, second = got.values()
    np.testing.assert_allclose(first, want, rtol=1e-9, atol=1e-9)
    assert np.array_equal(first, second)


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("n, c_out, groups", [(1, 32, {64: 4, 32: 8}), (2, 20, {64: 3, 32: 5}), (1, 3, 3), (1, 256, 16),
                                             (4, 64, 4), (16, 32, 1)])
def test_prepared_conv_splits_a_small_batch_by_output_channels(monkeypatch, n, c_out, groups):
    """Fewer samples than two threads need tasks (8 each): the prepared conv's tasks are also cut into
    groups of output channels, whole tiles of 8 on AVX-512 and 4 on AVX2 (or single channels, for fewer
    than 4), the most that make 16 tasks; the output is the op's, bit for bit."""
    groups = groups[jit.VECTOR_BYTES] if isinstance(groups, dict) else groups
    monkeypatch.setattr(jit, "num_threads", lambda: 2)
    monkeypatch.setattr(jit, "SERIAL_WORK", 0)
    rng = np.random.default_rng(15)
    x, wt = rng.standard_normal((n, 3, 16, 16)).astype(np.float32), rng.standard_normal((c_out, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    geo = conv_geometry(x.shape, wt.shape, 1, 1, 1)
    prepared = conv_numba.PreparedConv(x.shape, wt.shape, np.float32, geo)
    assert prepared._groups == groups
    monkeypatch.setattr(conv_numba, "_kept_prepared", lambda *args: None)  # the op's two-pass kernel
    assert np.array_equal(prepared(x, wt, b), conv_numba.conv2d_forward(x, wt, b, geo))


@pytest.mark.parametrize("backend", ["numpy"] + (["numba"] if jit.NUMBA_AVAILABLE else []))
@pytest.mark.parametrize("n, n_in, n_out, dtype", [(1, 400, 128, np.float32), (3, 37, 13, np.float32),
                                                   (5, 64, 10, np.float32), (130, 400, 128, np.float32),
                                                   (131, 60, 50, np.float64)])
def test_linear_with_relu_serial_or_parallel(monkeypatch, backend, n, n_in, n_out, dtype):
    """``linear`` with the ReLU the plan fuses into it, a launch forced serial and forced parallel: the
    op's output through a ReLU (NaN kept), and the float64 formula. (The last two cases go by output
    tiles in Numba: whole tiles of rows, then the rest one row at a time; 48 outputs a tile in float32
    and 24 in float64 on AVX-512, half as many on AVX2.)"""
    kernel = backends.OPS["linear"].kernels[backend]
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal((n, n_in)).astype(dtype), rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    x[0, 0] = np.nan if n > 1 else x[0, 0]  # a NaN row stays NaN through the ReLU
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    for serial_below in (0, 1 << 60):
        monkeypatch.setattr(jit, "SERIAL_WORK", serial_below)
        plain = kernel(x, w, b)
        np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-4)
        assert np.array_equal(kernel(x, w, b, True), np.maximum(plain, 0), equal_nan=True)


@pytest.mark.parametrize("kept_from", [None, 0])
def test_returned_outputs_are_never_overwritten(monkeypatch, kept_from):
    """The plan keeps buffers per thread between calls; what predict returns is never one of them, for a
    model that ends in a Dense layer, in a fused conv, in a Flatten after one, in a conv and its ReLU
    (in place), in a global average pool, and in residual blocks (siblings, and one in another's body),
    with one batch or several (a short last one). With ``kept_from`` 0, every output the next step
    consumes is in a kept buffer, however small."""
    if kept_from is not None:
        monkeypatch.setattr(inference, "_KEPT_OUTPUT_BYTES", kept_from)
    ends_in_conv = fastcnn.Sequential([L.Conv2D(1, 4, 3, rng=0), L.ReLU(), L.MaxPool2D(2)], input_shape=(1, 10, 10))
    ends_in_flatten = fastcnn.Sequential([L.Conv2D(1, 4, 3, rng=0), L.MaxPool2D(2), L.Flatten()], input_shape=(1, 10, 10))
    ends_in_relu = fastcnn.Sequential([L.Conv2D(1, 4, 3, rng=0), L.Tanh(), L.Conv2D(4, 4, 3, groups=4, rng=1),
                                       L.ReLU()], input_shape=(1, 10, 10))
    ends_in_global_pool = fastcnn.Sequential([L.Conv2D(1, 4, 3, rng=0), L.ReLU(), L.GlobalAvgPool2D()],
                                             input_shape=(1, 10, 10))
    blocks = fastcnn.Sequential([
        L.Conv2D(1, 4, 3, padding=1, rng=0),
        Residual([L.ReLU(), L.Conv2D(4, 4, 3, padding=1, rng=1)]),
        Residual([Residual([L.Conv2D(4, 4, 1, rng=2), L.Tanh()]), L.ReLU()], [L.Conv2D(4, 4, 1, rng=3)]),
        Residual([L.Conv2D(4, 4, 3, padding=1, rng=4)]),
    ], input_shape=(1, 10, 10))
    rng = np.random.default_rng(11)
    exact = (models.lenet(seed=0), ends_in_conv, ends_in_flatten)  # the same kernels as forward's, under auto too
    for model in (*exact, ends_in_relu, ends_in_global_pool, blocks):
        for n, batch_size in ((1, 1), (5, 2), (3, 512)):
            x1, x2 = (rng.random((n,) + model.input_shape, dtype=np.float32) for _ in range(2))
            given = x1.copy()
            first = model.predict(x1, batch_size=batch_size)
            kept = first.copy()
            second = model.predict(x2, batch_size=batch_size)
            assert np.array_equal(first, kept) and np.array_equal(x1, given)
            assert not np.shares_memory(first, second)
            if model in exact:
                np.testing.assert_array_equal(second, _forward(model, x2, batch_size))
            else:  # auto may have measured another backend faster for a step than for the op
                np.testing.assert_allclose(second, _forward(model, x2, batch_size), rtol=1e-6, atol=1e-6)


def test_a_deep_copy_predicts_with_its_own_weights():
    """``copy.deepcopy`` of a model that has predicted (early stopping keeps such copies): the copy's
    plan is its own, so changing the original's weights afterwards does not change the copy's answers."""
    import copy
    model = bn_model()
    x = np.random.default_rng(23).standard_normal((4, 1, 8, 8)).astype(np.float32)
    before = model.predict(x)
    clone = copy.deepcopy(model)
    for layer in model.layers:
        for value in layer.params.values():
            value[...] = 0
    np.testing.assert_array_equal(clone.predict(x), before)
    assert not np.array_equal(model.predict(x), before)


@pytest.mark.parametrize("backend", ["numpy"] + (["numba"] if jit.NUMBA_AVAILABLE else []))
def test_kernels_write_into_the_output_they_are_given(backend):
    """The kernels the plan gives an output array (the conv ops, strided and dilated too, depthwise with
    and without its ReLU, average pool, global average pool, ReLU and tanh, these two in place as
    well): the same values as into a new array, written into that array, whatever it held."""
    from fastcnn import functional as F
    rng = np.random.default_rng(22)
    x = rng.standard_normal((3, 4, 11, 11)).astype(np.float32)
    w, wd, b = (rng.standard_normal(s).astype(np.float32) for s in ((6, 4, 3, 3), (4, 1, 3, 3), (6,)))
    cases = []
    for op, weight, stride, padding, dilation, groups in (("conv2d", w, 1, 1, 1, 1), ("conv2d", w, 2, 1, 1, 1),
                                                          ("conv2d", w, 2, 2, 2, 1), ("conv2d", w[:, :, :1, :1], 1, 0, 1, 1),
                                                          ("conv2d_relu", w, 1, 1, 1, 1), ("conv2d_relu", w, 2, 2, 2, 1),
                                                          ("depthwise_conv2d", wd, 1, 1, 1, 4),
                                                          ("depthwise_conv2d", wd, 2, 1, 1, 4),
                                                          ("depthwise_conv2d_relu", wd, 1, 1, 1, 4),
                                                          ("depthwise_conv2d_relu", wd, 2, 1, 2, 4)):
        geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
        cases.append((op, (x, weight, b[: weight.shape[0]], geo), (3, weight.shape[0]) + geo.out_hw))
    x_even = x[:, :, :, :10].copy()  # the depthwise kernels' stride-2 path by column pairs
    for op in ("depthwise_conv2d", "depthwise_conv2d_relu"):
        geo = conv_geometry(x_even.shape, wd.shape, 2, 1, 1, 4)
        cases.append((op, (x_even, wd, b[:4], geo), (3, 4) + geo.out_hw))
    pads, _, args = F.avg_pool_call(x.shape, np.float32, 3, 2, 1, count_include_pad=False)
    xp = np.pad(x, ((0, 0), (0, 0)) + pads)
    cases.append(("avg_pool2d", (xp, *args), (3, 4) + args[0].out_hw))
    cases += [("global_avg_pool2d", (x,), (3, 4)), ("relu", (x,), x.shape), ("tanh", (x,), x.shape)]
    for op, op_args, shape in cases:
        kernel = backends.OPS[op].kernels.get(backend, backends.OPS[op].kernels["numpy"])
        want = kernel(*op_args)
        out = np.full(shape, np.nan, np.float32)
        assert kernel(*op_args, out) is out, op
        np.testing.assert_array_equal(out, want, err_msg=op)
        if op in ("relu", "tanh"):
            y = x.copy()
            assert kernel(y, y) is y
            np.testing.assert_array_equal(y, want, err_msg=op)
