"""3x3 stride-1 convs by Winograd's F(2x2, 3x3) (fastcnn/kernels/winograd.py): the forward pass and the
input and weight gradients against float64 references written from the definitions (sums of shifted
products, and their adjoints), for any padding, plane size and channel count, through a ReLU, in float32 and float64;
the same bits on any thread count; and which convs the Numba backend sends there."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn._checks import conv_geometry

pytestmark = pytest.mark.skipif("numba" not in F.dispatch.available_backends(), reason="Numba not installed")

TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-11, atol=1e-11)}

CASES = pytest.mark.parametrize("n, c_in, c_out, hw, padding", [
    (4, 32, 32, (8, 8), 1),              # whole vectors of channels, one block
    (4, 33, 70, (9, 11), 1),             # channels past whole vectors; odd output: tiles cut by its edge
    (5, 40, 36, (7, 6), 0),              # no padding: 5x4 output
    (4, 48, 40, (6, 10), 2),             # as much padding as the kernel reaches on each side
    (4, 32, 36, (5, 4), 3),              # more (no input gradient here: it is a conv of the output gradient)
    (4, 32, 33, (12, 9), (1, 0, 2, 1)),  # (left, right, top, bottom) padding
    (4, 35, 130, (4, 4), 1),             # three blocks of output channels, the last nearly empty
    (4, 32, 32, (1, 1), 1),              # a 1x1 output: one tile, three quarters of it past the edge
])


def _case(rng, n, c_in, c_out, hw, padding, dtype):
    x = rng.standard_normal((n, c_in) + hw).astype(dtype)
    w = rng.standard_normal((c_out, c_in, 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b, conv_geometry(x.shape, w.shape, 1, padding, 1)


def _padded(a, geo):
    (top, bottom), (left, right) = geo.padding
    return np.pad(a.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))


def _reference_forward(x, w, b, geo):
    """``y[s, k, r, q] = b[k] + sum(w[k, c, i, j] * xp[s, c, r + i, q + j])``, in float64."""
    xp, (oh, ow) = _padded(x, geo), geo.out_hw
    y = np.zeros((x.shape[0], w.shape[0], oh, ow)) + b.astype(np.float64)[:, None, None]
    for i in range(3):
        for j in range(3):
            y += np.einsum("kc,scrq->skrq", w[:, :, i, j].astype(np.float64), xp[:, :, i : i + oh, j : j + ow])
    return y


def _reference_grad_input(gy, w, geo):
    """The adjoint of :func:`_reference_forward` in ``x``: each output's gradient spread back to the inputs it read."""
    (top, _), (left, _) = geo.padding
    (h, wd), (oh, ow) = geo.input_hw, geo.out_hw
    gxp = np.zeros((gy.shape[0], w.shape[1]) + geo.padded_hw)
    for i in range(3):
        for j in range(3):
            gxp[:, :, i : i + oh, j : j + ow] += np.einsum("kc,skrq->scrq", w[:, :, i, j].astype(np.float64), gy)
    return gxp[:, :, top : top + h, left : left + wd]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@CASES
def test_winograd_forward_matches_the_reference(n, c_in, c_out, hw, padding, relu, dtype):
    from fastcnn.kernels import winograd
    x, w, b, geo = _case(np.random.default_rng(c_out), n, c_in, c_out, hw, padding, dtype)
    want = _reference_forward(x, w, b, geo)
    y = np.full((n, c_out) + geo.out_hw, np.nan, dtype)  # every value must be written
    assert winograd.forward(x, w, b, geo, relu, y) is y
    np.testing.assert_allclose(y, np.maximum(want, 0) if relu else want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gated", [False, True])
@CASES
def test_winograd_input_gradient_matches_the_reference(n, c_in, c_out, hw, padding, gated, dtype):
    """Through the ReLU whose output is ``gate``: the gradient where the gate is positive."""
    from fastcnn.kernels import conv_channels, winograd
    rng = np.random.default_rng(c_in)
    x, w, _, geo = _case(rng, n, c_in, c_out, hw, padding, dtype)
    if conv_channels.transposed_padding(geo) is None:  # more padding than the kernel reaches
        assert padding == 3 and not winograd.takes(x.shape, w.shape, geo, "input_gradient")
        return
    gy = rng.standard_normal((n, c_out) + geo.out_hw).astype(dtype)
    gate = np.maximum(rng.standard_normal(gy.shape), 0).astype(dtype) if gated else None
    gx = winograd.grad_input(gy, gate, w, geo)
    assert gx.shape == x.shape and gx.dtype == dtype
    np.testing.assert_allclose(gx, _reference_grad_input(gy * (gate > 0) if gated else gy, w, geo), **TOL[dtype])


def test_winograd_conv_is_the_same_bits_on_any_thread_count():
    """A task's samples are computed alike whichever thread runs it, and the serial twin alike."""
    from fastcnn.kernels import winograd
    x, w, b, geo = _case(np.random.default_rng(5), 6, 40, 72, (10, 10), 1, np.float32)
    before = fastcnn.get_num_threads()
    got = []
    try:
        for threads in (1, fastcnn.threads.max_threads()):
            fastcnn.set_num_threads(threads)
            got.append(winograd.forward(x, w, b, geo, False, np.empty((6, 72) + geo.out_hw, np.float32)))
    finally:
        fastcnn.set_num_threads(before)
    np.testing.assert_array_equal(got[0], got[1])


@pytest.fixture
def winograd_calls(monkeypatch):
    """Record the Winograd kernels the Numba backend runs."""
    from fastcnn.kernels import winograd
    calls = []
    for name in ("forward", "grad_input", "grad_weight"):
        real = getattr(winograd, name)
        monkeypatch.setattr(winograd, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    return calls


def test_the_numba_backend_runs_3x3_stride_1_convs_of_32_channels_and_more_here(winograd_calls):
    """Forward pass and both gradients, plain, with a ReLU and with a max-pool after the conv, against
    the NumPy backend; a conv of 16 channels, a strided or a dilated one, and a batch smaller than
    the threads want, stay with the other kernels."""
    from fastcnn.kernels import winograd
    rng = np.random.default_rng(0)
    n = winograd._TASKS_PER_THREAD * fastcnn.get_num_threads()
    x = rng.standard_normal((n, 32, 12, 12)).astype(np.float32)
    w = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    results = {}
    for backend in ("numba", "numpy"):
        y = F.conv2d(x, w, b, padding=1, backend=backend)
        yr = F.conv2d_relu(x, w, b, padding=1, backend=backend)
        grads = F.conv2d_backward(np.ones_like(y), x, w, padding=1, backend=backend)
        grads_relu = F.conv2d_relu_backward(np.ones_like(yr), yr, x, w, padding=1, backend=backend)
        yp, argmax = F.conv2d_max_pool2d(x, w, b, padding=1, relu=True, backend=backend)
        grads_pooled = F.conv2d_max_pool2d_backward(np.ones_like(yp), argmax, x, w, padding=1, relu_output=yp,
                                                    backend=backend)
        results[backend] = (y, yr, yp, *grads, *grads_relu, *grads_pooled)
    assert winograd_calls.count("grad_input") == winograd_calls.count("grad_weight") == 3
    assert winograd_calls.count("forward") == 3 + 3  # an input gradient is a forward pass of the output gradient
    for got, want in zip(results["numba"], results["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    winograd_calls.clear()
    F.conv2d(x[:, :16], w[:16, :16], padding=1, backend="numba")
    F.conv2d(x, w, stride=2, padding=1, backend="numba")
    F.conv2d(x, w, dilation=2, padding=2, backend="numba")
    F.conv2d(x[:1], w, padding=1, backend="numba")
    assert winograd_calls == []


def _reference_grad_weight(gy, x, geo):
    """``gw[k, c, i, j] = sum(gy[s, k, r, q] * xp[s, c, r + i, q + j])`` and ``gb[k] = gy[:, k].sum()``, in float64."""
    xp, (oh, ow) = _padded(x, geo), geo.out_hw
    gw = np.empty((gy.shape[1], x.shape[1], 3, 3))
    for i in range(3):
        for j in range(3):
            gw[:, :, i, j] = np.einsum("skrq,scrq->kc", gy.astype(np.float64), xp[:, :, i : i + oh, j : j + ow])
    return gw, gy.astype(np.float64).sum(axis=(0, 2, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gated", [False, True])
@CASES
def test_winograd_weight_gradient_matches_the_reference(n, c_in, c_out, hw, padding, gated, dtype):
    """Through the ReLU whose output is ``gate``: the gradient where the gate is positive."""
    from fastcnn.kernels import winograd
    rng = np.random.default_rng(c_in + c_out)
    x, w, _, geo = _case(rng, n, c_in, c_out, hw, padding, dtype)
    gy = rng.standard_normal((n, c_out) + geo.out_hw).astype(dtype)
    gate = np.maximum(rng.standard_normal(gy.shape), 0).astype(dtype) if gated else None
    gw, gb = winograd.grad_weight(gy, gate, x, geo)
    assert gw.shape == w.shape and gw.dtype == gb.dtype == dtype
    want_w, want_b = _reference_grad_weight(gy * (gate > 0) if gated else gy, x, geo)
    scale = np.sqrt(n * geo.out_hw[0] * geo.out_hw[1])  # the sums' terms are many: their rounding grows so
    np.testing.assert_allclose(gw, want_w, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    np.testing.assert_allclose(gb, want_b, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


def test_winograd_weight_gradient_is_the_same_bits_on_any_thread_count():
    """Its shares of the samples are fixed by the batch, not by the threads that run them."""
    from fastcnn.kernels import winograd
    rng = np.random.default_rng(6)
    x, w, _, geo = _case(rng, 21, 40, 72, (10, 10), 1, np.float32)
    gy = rng.standard_normal((21, 72) + geo.out_hw).astype(np.float32)
    before = fastcnn.get_num_threads()
    got = []
    try:
        for threads in (1, fastcnn.threads.max_threads()):
            fastcnn.set_num_threads(threads)
            got.append(winograd.grad_weight(gy, None, x, geo))
    finally:
        fastcnn.set_num_threads(before)
    for one, many in zip(*got):
        np.testing.assert_array_equal(one, many)
