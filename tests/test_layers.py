"""Every layer and loss against central finite differences in float64, plus layer behaviour."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import layers as L
from fastcnn import losses

from .reference import numeric_grad


def _check_layer_gradients(layer, x, rng, reseed=None, rtol=1e-5, atol=1e-7):
    layer.astype(np.float64)
    out = layer.forward(x, training=True)
    g = rng.standard_normal(out.shape)

    def loss():
        if reseed:
            reseed()
        return float((layer.forward(x, training=True) * g).sum())

    if reseed:
        reseed()
    layer.forward(x, training=True)
    gx = layer.backward(g)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=rtol, atol=atol)
    for name, p in layer.params.items():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, p), rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("make, shape", [
    (lambda: L.Conv2D(2, 3, 3, stride=2, padding=1, rng=0), (2, 2, 7, 6)),
    (lambda: L.Conv2D(2, 2, (2, 3), padding="same", dilation=2, bias=False, rng=0), (2, 2, 6, 6)),
    (lambda: L.MaxPool2D(2), (2, 3, 6, 6)),
    (lambda: L.MaxPool2D(3, stride=2, padding=1), (2, 2, 7, 7)),
    (lambda: L.AvgPool2D(3, stride=2, padding=1), (2, 2, 7, 7)),
    (lambda: L.Dense(5, 4, rng=0), (3, 5)),
    (lambda: L.Dense(5, 4, bias=False, init="glorot", rng=0), (3, 5)),
    (lambda: L.Flatten(), (2, 3, 2, 2)),
    (lambda: L.ReLU(), (4, 5)),
    (lambda: L.Tanh(), (4, 5)),
    (lambda: L.Sigmoid(), (4, 5)),
    (lambda: L.Softmax(), (4, 5)),
    (lambda: L.BatchNorm2D(3), (4, 3, 3, 2)),
    (lambda: L.BatchNorm1D(5), (6, 5)),
])
def test_layer_gradients_match_finite_differences(make, shape, backend, rng):
    layer = make()
    if hasattr(layer, "backend"):
        layer.backend = backend
    x = rng.standard_normal(shape)
    if isinstance(layer, L.ReLU):
        x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    if isinstance(layer, (L.BatchNorm1D, L.BatchNorm2D)):
        layer.params["weight"] = rng.standard_normal(layer.params["weight"].shape)
        layer.params["bias"] = rng.standard_normal(layer.params["bias"].shape)
    _check_layer_gradients(layer, x, rng)


def test_dropout_gradient_and_scaling(rng):
    layer = L.Dropout(0.4)

    def reseed():
        layer.rng = np.random.default_rng(7)

    _check_layer_gradients(layer, rng.standard_normal((50, 40)), rng, reseed=reseed)
    x = np.ones((200, 500), np.float32)
    y = layer.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.6) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.6, rtol=1e-6)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


@pytest.mark.parametrize("loss, target", [
    (losses.CrossEntropyLoss(), lambda r: r.integers(0, 5, 6)),
    (losses.CrossEntropyLoss(), lambda r: np.eye(5)[r.integers(0, 5, 6)]),
    (losses.CrossEntropyLoss(), lambda r: r.dirichlet(np.ones(5), 6)),
    (losses.MSELoss(), lambda r: r.standard_normal((6, 5))),
    (losses.BCELoss(), lambda r: r.uniform(0, 1, (6, 5))),
])
def test_loss_gradients_match_finite_differences(loss, target, rng):
    t = target(rng)
    pred = rng.uniform(0.05, 0.95, (6, 5)) if isinstance(loss, losses.BCELoss) else rng.standard_normal((6, 5)) * 3
    loss(pred, t)
    grad = loss.backward()
    np.testing.assert_allclose(grad, numeric_grad(lambda: loss(pred, t), pred), rtol=1e-6, atol=1e-9)


def test_cross_entropy_is_stable_for_huge_and_equal_logits():
    ce = losses.CrossEntropyLoss()
    huge = np.array([[1e30, -1e30, 0.0], [3e38, 3e38, 3e38]], np.float32)
    value = ce(huge, np.array([0, 2]))
    assert np.isfinite(value) and abs(value - np.log(3) / 2) < 1e-6
    assert np.isfinite(ce.backward()).all()
    np.testing.assert_allclose(ce(np.zeros((4, 10)), np.arange(4)), np.log(10), rtol=1e-12)
    np.testing.assert_allclose(F.softmax(np.array([[1e4, 0.0]])), [[1.0, 0.0]])
    assert F.sigmoid(np.array([-1e4, 1e4], np.float32)).tolist() == [0.0, 1.0]


def test_cross_entropy_matches_naive_formula(rng):
    z = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(losses.CrossEntropyLoss()(z, y), -np.log(p[np.arange(5), y]).mean(), rtol=1e-12)


@pytest.mark.parametrize("target, error, pattern", [
    (np.array([0, 1, 5]), ValueError, r"labels must be in \[0, 5\) for 5 outputs, got min 0, max 5"),
    (np.array([0, -1, 2]), ValueError, r"labels must be in \[0, 5\)"),
    (np.array([0, 1]), ValueError, r"labels must hold one class label per row of the logits \(3\), got shape \(2,\)"),
    (np.array([0.0, 1.0, 2.0]), TypeError, r"class labels must be integers"),
    (np.zeros((3, 4)), ValueError, r"one-hot targets must be a float array of shape \(3, 5\)"),
])
def test_cross_entropy_rejects_bad_labels(target, error, pattern):
    with pytest.raises(error, match=pattern):
        losses.CrossEntropyLoss()(np.zeros((3, 5)), target)


def test_batchnorm_zero_variance_batch_gives_no_nan():
    bn = L.BatchNorm2D(2)
    y = bn.forward(np.full((4, 2, 3, 3), 7.0, np.float32), training=True)
    assert np.isfinite(y).all() and np.allclose(y, 0)
    assert np.isfinite(bn.backward(np.ones_like(y))).all()


def test_batchnorm_running_statistics_match_pytorch_convention(rng):
    bn = L.BatchNorm1D(3, momentum=0.1)
    x = rng.standard_normal((8, 3)).astype(np.float32) * 2 + 1
    bn.forward(x, training=True)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-5)
    y = bn.forward(x, training=False)
    np.testing.assert_allclose(y, (x - bn.buffers["running_mean"]) / np.sqrt(bn.buffers["running_var"] + 1e-5), rtol=1e-5)


def test_initialisation_is_seedable_and_scaled():
    a = L.Conv2D(16, 32, 3, rng=5).params["weight"]
    b = L.Conv2D(16, 32, 3, rng=5).params["weight"]
    np.testing.assert_array_equal(a, b)
    assert abs(a.std() - np.sqrt(2 / (16 * 9))) < 0.01  # He
    g = L.Dense(300, 200, init="glorot", rng=1).params["weight"]
    assert np.abs(g).max() <= np.sqrt(6 / 500)
    fastcnn.seed(3)
    c = L.Dense(4, 4).params["weight"]
    fastcnn.seed(3)
    np.testing.assert_array_equal(c, L.Dense(4, 4).params["weight"])


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="out_channels must be a positive int, got 0"):
        L.Conv2D(1, 0, 3)
    with pytest.raises(ValueError, match="init must be 'he' or 'glorot'"):
        L.Dense(2, 2, init="zeros")
    with pytest.raises(ValueError, match=r"Dropout p must be in \[0, 1\), got 1.0"):
        L.Dropout(1.0)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        L.Dense(2, 2).backward(np.zeros((1, 2)))


def test_model_backward_without_input_grad_gives_the_same_parameter_grads(rng):
    Conv2D, Dense, Flatten, ReLU = L.Conv2D, L.Dense, L.Flatten, L.ReLU
    model = fastcnn.Sequential([Flatten(), Dense(12, 5, rng=1), ReLU(), Dense(5, 3, rng=2)], input_shape=(1, 3, 4))
    conv_model = fastcnn.Sequential([Conv2D(1, 2, 3, rng=3), ReLU(), Flatten(), Dense(8, 3, rng=4)], input_shape=(1, 4, 4))
    for m in (model, conv_model):
        x = rng.standard_normal((6,) + m.input_shape).astype(np.float32)
        gy = rng.standard_normal((6, 3)).astype(np.float32)
        m.forward(x, training=True)
        gx = m.backward(gy)
        assert gx.shape == x.shape
        full = {name: g.copy() for name, _, g in m.named_parameters()}
        m.forward(x, training=True)
        assert m.backward(gy, input_grad=False) is None
        for name, _, g in m.named_parameters():
            np.testing.assert_array_equal(g, full[name])
