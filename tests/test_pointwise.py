"""The dispatched activations (tanh, sigmoid, softmax) and losses (soft-target cross-entropy, MSE,
binary cross-entropy): values against SciPy and plain formulas, gradients against float64 finite
differences, dtypes kept, empty inputs, and bad arguments refused with their names."""
import math

import numpy as np
import pytest
import scipy.special

import fastcnn.functional as F

from .conftest import BACKENDS
from .reference import numeric_grad

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_match_independent_formulas(rng, dtype):
    x = (rng.standard_normal((3, 4, 5)) * 4).astype(dtype)
    x[0, 0, :2] = [-1e4, 1e4]  # no overflow at the extremes
    tol = dict(rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-7)
    for got, want in ((F.tanh(x), np.vectorize(math.tanh)(x.astype(np.float64))),
                      (F.sigmoid(x), scipy.special.expit(x.astype(np.float64))),
                      (F.softmax(x), scipy.special.softmax(x.astype(np.float64), axis=-1))):
        assert got.dtype == dtype and got.shape == x.shape
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softmax"])
def test_activation_gradients_match_finite_differences(rng, name, backend):
    forward, backward = getattr(F, name), getattr(F, name + "_backward")
    x = rng.standard_normal((2, 3, 4))
    weights = rng.standard_normal(x.shape)  # the loss sum(weights * f(x)) has d/dy = weights
    expected = numeric_grad(lambda: float((weights * forward(x)).sum()), x)
    np.testing.assert_allclose(backward(weights, forward(x), backend=backend), expected, rtol=1e-6, atol=1e-8)
    y32, w32 = forward(x.astype(np.float32)), weights.astype(np.float32)
    got = backward(w32, y32, backend=backend)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, backward(weights, forward(x), backend=backend), rtol=2e-5, atol=1e-6)


def _one_hot_rows(rng, n, k):
    target = rng.random((n, k))
    return target / target.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_match_plain_formulas_and_finite_differences(rng, dtype):
    logits = rng.standard_normal((5, 4))
    probs = _one_hot_rows(rng, 5, 4)
    pred01 = rng.uniform(0.05, 0.95, (5, 4))
    binary = rng.integers(0, 2, (5, 4)).astype(np.float64)
    log_softmax = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    cases = [
        (lambda p, t: F.soft_cross_entropy(p, t), logits, probs, -(probs * log_softmax).sum() / 5),
        (lambda p, t: F.mse_loss(p, t), logits, probs, ((logits - probs) ** 2).mean()),
        (lambda p, t: F.binary_cross_entropy(p, t), pred01, binary,
         -(binary * np.log(pred01) + (1 - binary) * np.log(1 - pred01)).mean()),
    ]
    for loss, pred, target, want in cases:
        value, grad = loss(pred.astype(dtype), target.astype(dtype))
        assert isinstance(value, float) and grad.dtype == dtype
        np.testing.assert_allclose(value, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
        if dtype == np.float64:
            expected = numeric_grad(lambda: loss(pred, target)[0], pred)
            np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


def test_empty_inputs_give_zero_loss_and_empty_gradients():
    for loss in (F.soft_cross_entropy, F.mse_loss, F.binary_cross_entropy):
        value, grad = loss(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
        assert value == 0.0 and grad.shape == (0, 3) and grad.dtype == np.float32
    for name in ("tanh", "sigmoid", "softmax"):
        y = getattr(F, name)(np.zeros((0, 3), np.float32))
        assert y.shape == (0, 3)
        assert getattr(F, name + "_backward")(y, y).shape == (0, 3)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        F.tanh(np.arange(3))
    with pytest.raises(ValueError, match=r"grad_y has shape \(2,\) but the forward output has shape \(3,\)"):
        F.sigmoid_backward(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(2, 3\), got \(2,\)"):
        F.mse_loss(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\]"):
        F.binary_cross_entropy(np.full((2, 2), 0.5), np.full((2, 2), 2.0))
    with pytest.raises(ValueError, match="eps must be a number in"):
        F.binary_cross_entropy(np.full((2, 2), 0.5), np.ones((2, 2)), eps=0.0)
    with pytest.raises(ValueError, match=r"logits must be 2-D"):
        F.soft_cross_entropy(np.zeros(3), np.zeros(3))
