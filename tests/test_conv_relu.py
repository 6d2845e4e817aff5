"""The fused conv + ReLU op (``conv2d_relu``, ``conv2d_relu_backward``) and the ``ConvReLU`` training
step: every backend against the naive loops, against the separate ops bit for bit, NaN, the run order
and bad arguments."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import layers as L

from . import reference as ref
from .conftest import BACKENDS

CASES = [  # x shape, weight shape, stride, padding, dilation: stride 1, by phases, the strided loop, "same", 1x1
    ((3, 4, 9, 9), (5, 4, 3, 3), 1, 1, 1),
    ((2, 3, 11, 10), (8, 3, 3, 3), 2, 1, 1),
    ((2, 3, 11, 10), (8, 3, 3, 3), 2, 1, 2),
    ((2, 3, 12, 12), (9, 3, 5, 5), 1, "same", 2),
    ((2, 16, 7, 7), (8, 16, 1, 1), 1, 0, 1),
    ((3, 5, 4, 6), (7, 5, 1, 1), 1, 0, 1),  # an odd batch: NumPy's 1x1 products deal samples to the threads
]


def _case(x_shape, w_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(w_shape[0]).astype(dtype))


def _pads(x_shape, w_shape, stride, padding, dilation):
    return fastcnn._checks.conv_geometry(x_shape, w_shape, stride, padding, dilation).padding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", CASES)
def test_conv_relu_against_the_loops(backend, dtype, x_shape, w_shape, stride, padding, dilation):
    x, w, b = _case(x_shape, w_shape, dtype)
    pads = _pads(x_shape, w_shape, stride, padding, dilation)
    conv = dict(stride=(stride, stride), pads=pads, dilation=(dilation, dilation))
    want = np.maximum(ref.conv2d(x, w, b, **conv), 0)
    y = F.conv2d_relu(x, w, b, stride, padding, dilation, backend=backend)
    assert y.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx, gw, gb = F.conv2d_relu_backward(gy, y, x, w, stride, padding, dilation, backend=backend)
    references = ref.conv2d_backward(np.where(want > 0, gy, 0), x, w, **conv)
    for got, expected in zip((gx, gw, gb), references):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", CASES)
def test_conv_relu_is_the_separate_ops_bit_for_bit(backend, x_shape, w_shape, stride, padding, dilation):
    """The fused op gives the bits of conv2d, relu and their backward ops on the same backend, with
    NaN kept forward and stopped by the gate backward (as relu_backward)."""
    x, w, b = _case(x_shape, w_shape, np.float32, seed=2)
    x[0, 0, 3, 3] = np.nan
    conv = (stride, padding, dilation)
    y = F.conv2d_relu(x, w, b, *conv, backend=backend)
    want = F.relu(F.conv2d(x, w, b, *conv, backend=backend), backend=backend)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(y, want)
    gy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    gy[0][y[0] <= 0] = np.nan  # stopped by the gate, as relu_backward stops it
    got = F.conv2d_relu_backward(gy, y, x, w, *conv, backend=backend)
    expected = F.conv2d_backward(F.relu_backward(gy, want, backend=backend), x, w, *conv, backend=backend)
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)
    gx, gw, gb = F.conv2d_relu_backward(gy, y, x, w, *conv, input_grad=False, backend=backend)
    assert gx is None
    np.testing.assert_array_equal(gw, expected[1])


GROUPED = [  # x shape, weight shape, stride, padding, dilation, groups: the depthwise kernels' three paths
    # (same width at stride 1, 3x3 and 5x5; stride 2 by column pairs; the others by phases), a channel
    # multiplier, more planes than tasks, and a grouped conv that is not depthwise
    ((2, 3, 9, 11), (6, 1, 3, 3), 1, 1, 1, 3),
    ((40, 3, 6, 7), (3, 1, 3, 3), 1, "same", 1, 3),
    ((3, 2, 8, 10), (2, 1, 5, 5), 1, "same", 1, 2),
    ((2, 4, 10, 8), (4, 1, 3, 3), 2, 1, 1, 4),
    ((2, 3, 9, 9), (3, 1, 3, 3), 2, 1, 2, 3),
    ((2, 4, 7, 7), (6, 2, 3, 3), 1, 1, 1, 2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", GROUPED)
def test_grouped_conv_relu_and_its_backward_against_the_loops_and_the_separate_ops(backend, dtype, x_shape, w_shape,
                                                                                   stride, padding, dilation, groups):
    x, w, b = _case(x_shape, w_shape, dtype, seed=4)
    pads = fastcnn._checks.conv_geometry(x_shape, w_shape, stride, padding, dilation, groups).padding
    want = np.maximum(ref.conv2d(x, w, b, (stride, stride), pads, (dilation, dilation), groups), 0)
    conv = (stride, padding, dilation, groups)
    y = F.conv2d_relu(x, w, b, *conv, backend=backend)
    assert y.dtype == dtype and y.shape == want.shape
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    gy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    references = ref.conv2d_backward(np.where(want > 0, gy, 0), x, w, (stride, stride), pads, (dilation, dilation),
                                     groups)
    for got, expected in zip(F.conv2d_relu_backward(gy, y, x, w, *conv, backend=backend), references):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())
    x[0, 0, 1, 1] = np.nan  # kept by the ReLU, as relu keeps it
    y = F.conv2d_relu(x, w, b, *conv, backend=backend)
    separate = F.relu(F.conv2d(x, w, b, *conv, backend=backend), backend=backend)
    assert np.isnan(separate).any()
    np.testing.assert_array_equal(y, separate)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_two_gradients_gate_and_unpool_once(backend, monkeypatch):
    """Where a backend gates the output gradient (or unpools it) as a separate pass, the two gradients of
    one backward call share that pass; a new call does it again."""
    from fastcnn import backends  # its Numba modules are None without Numba

    calls = []

    def counted(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args: calls.append(name) or real(*args))

    for module in (backends.elementwise_numpy, backends.elementwise_numba):
        if module is not None:
            counted(module, "relu_backward")
    for module in (backends.pool_numpy, backends.pool_numba):
        if module is not None:
            counted(module, "max_pool2d_backward")
    x, w, b = _case((2, 3, 11, 10), (8, 3, 3, 3), np.float32)
    conv = (2, 1, 2)  # strided and dilated: gated as a separate pass on both backends
    y = F.conv2d_relu(x, w, b, *conv, backend=backend)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    want = F.conv2d_backward(np.where(y > 0, gy, 0), x, w, *conv, backend=backend)
    for _ in range(2):
        calls.clear()
        got = F.conv2d_relu_backward(gy, y, x, w, *conv, backend=backend)
        assert calls == ["relu_backward"]
        for a, e in zip(got, want):
            np.testing.assert_array_equal(a, e)
    yp, idx = F.conv2d_max_pool2d(x, w, b, padding=1, dilation=2, relu=True, backend=backend)
    gp = np.random.default_rng(2).standard_normal(yp.shape).astype(np.float32)
    calls.clear()
    F.conv2d_max_pool2d_backward(gp, idx, x, w, padding=1, dilation=2, relu_output=yp, backend=backend)
    assert calls.count("relu_backward") == calls.count("max_pool2d_backward") == (backend == "numpy")


def test_conv_relu_checks_its_arguments():
    x, w, b = _case((2, 3, 6, 6), (4, 3, 3, 3), np.float32)
    y = F.conv2d_relu(x, w, b)
    with pytest.raises(ValueError, match=r"relu_output has shape \(2, 4, 3, 3\) but the forward output has shape "
                                         r"\(2, 4, 4, 4\)"):
        F.conv2d_relu_backward(y, y[:, :, :3, :3], x, w)
    with pytest.raises(TypeError, match="relu_output"):
        F.conv2d_relu_backward(y, y.astype(np.float64), x, w)
    with pytest.raises(ValueError, match="grad_y"):
        F.conv2d_relu_backward(y[:1], y, x, w)
    with pytest.raises(ValueError, match="bias"):
        F.conv2d_relu(x, w, b[:2])
    gx, gw, gb = F.conv2d_relu_backward(y[:0], y[:0], x[:0], w)
    assert gx.shape == (0, 3, 6, 6) and not gw.any() and not gb.any()
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_relu(x, w, b, groups=2)  # 3 input channels in 2 groups
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_relu_backward(y, y, x, w, groups=2)


def test_a_conv_and_the_relu_after_it_run_as_one_step():
    model = fastcnn.Sequential([
        L.Conv2D(2, 4, 3, padding=1, rng=0), L.ReLU(),                     # fused
        L.Conv2D(4, 4, 3, padding=1, groups=2, rng=1), L.ReLU(),           # grouped: not fused
        L.Conv2D(4, 4, 3, padding=1, padding_mode="reflect", rng=2), L.ReLU(),  # padding mode: not fused
        L.Conv2D(4, 4, 3, rng=3), L.ReLU(), L.MaxPool2D(2),                # the pool's op takes the ReLU
        L.Flatten(), L.Dense(4 * 2 * 2, 3, rng=4),
    ], input_shape=(2, 6, 6))
    assert [type(s).__name__ for s in model._run_order()] == [
        "ConvReLU", "Conv2D", "ReLU", "Conv2D", "ReLU", "ConvMaxPool", "Flatten", "Dense"]


class _Unfused(L.ReLU):
    """A ReLU the run order does not fuse (its type is not ReLU): the layers one by one, the reference."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_with_conv_relu_steps_is_the_layers_one_by_one(backend):
    """A training step with ConvReLU steps gives the layers' own gradients bit for bit, and predict the same."""
    def build(relu):
        return fastcnn.Sequential([
            L.Conv2D(3, 8, 3, padding="same", rng=0), relu(),
            L.Conv2D(8, 8, 3, stride=2, padding=1, rng=1), relu(),
            L.Conv2D(8, 4, 1, rng=2), relu(),
            L.Flatten(), L.Dense(4 * 4 * 4, 5, rng=3),
        ], input_shape=(3, 8, 8))

    fused, plain = build(L.ReLU), build(_Unfused)
    assert [type(s).__name__ for s in fused._run_order()].count("ConvReLU") == 3
    x = np.random.default_rng(4).standard_normal((6, 3, 8, 8)).astype(np.float32)
    labels = np.arange(6) % 5
    grads = []
    with fastcnn.use_backend(backend):
        for model in (fused, plain):
            loss = fastcnn.CrossEntropyLoss()
            loss(model.forward(x, training=True), labels)
            model.backward(loss.backward())
            grads.append([g.copy() for _, _, g in model.named_parameters()])
        np.testing.assert_array_equal(fused.predict(x), plain.predict(x))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_predict_runs_a_conv_relu_step_the_fast_path_cannot_take():
    """A ConvReLU whose weight the plan's fast path does not take (Fortran order) runs its layers: the
    layers' own answer."""
    model = fastcnn.Sequential([L.Conv2D(2, 4, 3, padding=1, rng=0), L.ReLU(), L.Flatten(), L.Dense(4 * 5 * 5, 3, rng=1)],
                               input_shape=(2, 5, 5))
    conv = model.layers[0]
    conv.params["weight"] = np.asfortranarray(conv.params["weight"])
    x = np.random.default_rng(5).standard_normal((3, 2, 5, 5)).astype(np.float32)
    want = model.layers[3].forward(model.layers[2].forward(model.layers[1].forward(conv.forward(x))))
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-6, atol=1e-6)
    steps = model._inference.steps
    assert [type(s).__name__ for s in steps][:2] == ["_Layer", "_Activation"]
    assert not steps[1].in_place  # the layer's output might be its input: the caller's
