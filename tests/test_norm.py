"""Batch-norm ops (fastcnn.functional.batch_norm*) and the fused BatchNorm+ReLU step, per backend,
against the textbook formulas, float64 finite differences and PyTorch when importable."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import layers as L

from .reference import numeric_grad

SHAPES = [(4, 3, 5, 6), (2, 5, 1, 1), (7, 4), (1, 2, 3, 3)]


def _textbook(x, weight, bias, eps, relu):
    """The formulas BatchNorm used before it had kernels: batch statistics over every axis but 1."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    x_hat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    y = x_hat * weight.reshape(shape) + bias.reshape(shape)
    return (np.maximum(y, 0) if relu else y), mean, var, x_hat


def _textbook_backward(grad, x, weight, eps, relu_output):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    _, _, var, x_hat = _textbook(x, weight, np.zeros_like(weight), eps, False)
    if relu_output is not None:
        grad = np.where(relu_output > 0, grad, 0)
    count = grad.size // x.shape[1]
    g = grad * weight.reshape(shape)
    inv_std = 1 / np.sqrt(var.reshape(shape) + eps)
    gx = inv_std / count * (count * g - g.sum(axis=axes, keepdims=True) - x_hat * (g * x_hat).sum(axis=axes, keepdims=True))
    return gx, (grad * x_hat).sum(axis=axes), grad.sum(axis=axes)


def _inputs(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    c = shape[1]
    return x, rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_forward_and_backward_match_the_formulas(shape, relu, dtype, backend, rng):
    x, w, b = _inputs(rng, shape, dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y, mean, var = F.batch_norm(x, w, b, eps=1e-5, relu=relu, backend=backend)
    ref_y, ref_mean, ref_var, _ = _textbook(x.astype(np.float64), w, b, 1e-5, relu)
    assert y.dtype == mean.dtype == var.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(mean, ref_mean, **tol)
    np.testing.assert_allclose(var, ref_var, **tol)
    np.testing.assert_allclose(y, ref_y, **tol)
    grad = rng.standard_normal(shape).astype(dtype)
    gx, gw, gb = F.batch_norm_backward(grad, x, w, mean, var, eps=1e-5, relu_output=y if relu else None, backend=backend)
    ref = _textbook_backward(grad.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1e-5,
                             y if relu else None)
    for got, want in zip((gx, gw, gb), ref):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)


def test_batch_norm_inference_uses_the_given_statistics(backend, rng):
    x, w, b = _inputs(rng, (3, 4, 2, 5), np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.random(4).astype(np.float32) + 0.5
    y, m, v = F.batch_norm(x, w, b, mean, var, eps=1e-3, backend=backend)
    shape = (1, -1, 1, 1)
    want = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-3) * w.reshape(shape) + b.reshape(shape)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert m is mean and v is var
    scale, shift = F.batch_norm_scale_shift(w, b, mean, var, 1e-3)
    np.testing.assert_allclose(x * scale.reshape(shape) + shift.reshape(shape), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_gradients_match_finite_differences(relu, backend, rng):
    x, w, b = _inputs(rng, (3, 2, 3, 2), np.float64)
    x -= 3  # values on both sides of the ReLU's kink
    probe = rng.standard_normal(x.shape)

    def loss():
        return float((F.batch_norm(x, w, b, relu=relu, backend=backend)[0] * probe).sum())

    y, mean, var = F.batch_norm(x, w, b, relu=relu, backend=backend)
    if relu:
        assert (y == 0).any() and (y > 0).any()
    gx, gw, gb = F.batch_norm_backward(probe, x, w, mean, var, relu_output=y if relu else None, backend=backend)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gw, numeric_grad(loss, w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb, numeric_grad(loss, b), rtol=1e-5, atol=1e-7)


def test_constant_channel_normalises_to_the_bias_exactly(backend):
    x = np.full((4, 2, 3, 3), 7.1, np.float32)
    w, b = np.array([2.0, 3.0], np.float32), np.array([0.5, -0.25], np.float32)
    y, _, var = F.batch_norm(x, w, b, backend=backend)
    assert (var == 0).all()
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape(1, 2, 1, 1), x.shape))


def test_empty_batch_inference_and_gradient(backend):
    x = np.zeros((0, 3, 4, 4), np.float32)
    w, b, m, v = (np.ones(3, np.float32),) * 4
    y, _, _ = F.batch_norm(x, w, b, m, v, backend=backend)
    assert y.shape == x.shape
    gx, gw, gb = F.batch_norm_backward(x, x, w, m, v, backend=backend)
    assert gx.shape == x.shape and (gw == 0).all() and (gb == 0).all()


@pytest.mark.parametrize("bad, match", [
    (dict(weight=np.ones(4, np.float32)), "weight must hold one value per channel"),
    (dict(mean=np.zeros(3, np.float32)), "both mean and var"),
    (dict(x=np.ones((1, 3, 1, 1), np.float32)), "more than one value per channel"),
    (dict(x=np.ones(3, np.float32)), "at least 2 dimensions"),
])
def test_batch_norm_rejects_bad_arguments(bad, match):
    args = dict(x=np.ones((2, 3, 2, 2), np.float32), weight=np.ones(3, np.float32), bias=np.zeros(3, np.float32))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        F.batch_norm(**args)


def test_batch_norm_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="dtype"):
        F.batch_norm(np.ones((2, 3), np.float32), np.ones(3), np.zeros(3))


def _bn_relu_model(seed, dtype=np.float32):
    fastcnn.seed(seed)
    return fastcnn.Sequential([L.Conv2D(2, 3, 3, padding=1), L.BatchNorm2D(3), L.ReLU(), L.Flatten(),
                               L.Dense(3 * 5 * 5, 4, bias=False), L.BatchNorm1D(4), L.ReLU(), L.Dense(4, 3)],
                              input_shape=(2, 5, 5)).astype(dtype)


def test_sequential_fuses_batch_norm_and_relu_with_the_same_results(backend, rng):
    fused, plain = _bn_relu_model(3), _bn_relu_model(3)
    steps = fused._run_order()
    assert [type(s).__name__ for s in steps].count("BatchNormReLU") == 2
    x = rng.standard_normal((6, 2, 5, 5)).astype(np.float32)
    grad = rng.standard_normal((6, 3)).astype(np.float32)
    with fastcnn.use_backend(backend):
        out = fused.forward(x, training=True)
        fused.backward(grad)
        h = x
        for layer in plain.layers:  # one by one, no fused steps
            h = layer.forward(h, training=True)
        g = grad
        for layer in reversed(plain.layers):
            g = layer.backward(g)
    np.testing.assert_allclose(out, h, rtol=1e-6, atol=1e-6)
    for (name, _, ga), (_, _, gb) in zip(fused.named_parameters(), plain.named_parameters()):
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-6, err_msg=name)
    for key, value in fused.state_dict().items():
        np.testing.assert_allclose(value, plain.state_dict()[key], rtol=1e-6, err_msg=key)


def test_batch_norm_relu_matches_pytorch_in_training_and_eval(rng):
    torch = pytest.importorskip("torch")
    from bench import torch_peer

    model = _bn_relu_model(5)
    net = torch_peer.mirror(model)
    x = rng.standard_normal((8, 2, 5, 5)).astype(np.float32)
    out = model.forward(x, training=True)
    tout = net.train()(torch.from_numpy(x))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    model.backward(np.ones_like(out))
    tout.sum().backward()
    ours = {name: g for name, _, g in model.named_parameters()}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(ours[name], p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), net.eval()(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
