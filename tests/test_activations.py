"""LeakyReLU, SiLU and GELU: every backend against per-element float64 formulas, finite differences,
PyTorch when importable, empty inputs and bad arguments."""
import math

import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn import layers as L

from .conftest import BACKENDS
from .reference import numeric_grad

try:
    import torch
except ImportError:
    torch = None


def _phi(v):
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def _gelu_tanh(v):
    return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


# (op, keyword arguments, the function per element in float64)
CASES = [
    ("leaky_relu", {}, lambda v: v if v > 0 else 0.01 * v),
    ("leaky_relu", {"negative_slope": -0.3}, lambda v: v if v > 0 else -0.3 * v),
    ("silu", {}, lambda v: v / (1 + math.exp(-v)) if v > -700 else 0.0),
    ("gelu", {}, lambda v: v * _phi(v)),
    ("gelu", {"approximate": "tanh"}, _gelu_tanh),
]
IDS = ["leaky", "leaky-neg", "silu", "gelu", "gelu-tanh"]
# float32: an absolute error of a few ulps of the terms (|x| up to ~15), as 1 + tanh(z) cancels for z << 0
TOL = {np.float32: dict(rtol=2e-6, atol=4e-6), np.float64: dict(rtol=1e-13, atol=1e-15)}


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 5)) * 4
    x.flat[:6] = [0.0, -0.0, 60.0, -60.0, 1e-8, -1e-8]  # kinks, saturation and tiny values
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, kwargs, formula", CASES, ids=IDS)
def test_activation_matches_formula_and_finite_differences(op, kwargs, formula, dtype, backend):
    x = _inputs(dtype)
    expected = np.vectorize(formula)(x.astype(np.float64))
    y = getattr(F, op)(x, **kwargs, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, expected, **TOL[dtype])
    x64 = np.random.default_rng(1).standard_normal((2, 7)) * 3
    gy = np.random.default_rng(2).standard_normal(x64.shape)
    gx = getattr(F, op + "_backward")(gy, x64, **kwargs, backend=backend)
    numeric = numeric_grad(lambda: float((np.vectorize(formula)(x64) * gy).sum()), x64)
    np.testing.assert_allclose(gx, numeric, rtol=1e-6, atol=1e-8)
    g = getattr(F, op + "_backward")(np.ones_like(x), x, **kwargs, backend=backend)
    assert g.dtype == dtype and np.isfinite(g).all()


@pytest.mark.parametrize("op, kwargs, formula", CASES, ids=IDS)
def test_activation_backends_agree_and_take_empty_batches(op, kwargs, formula):
    x = _inputs(np.float32, seed=3)
    ys = [getattr(F, op)(x, **kwargs, backend=b) for b in BACKENDS]
    gs = [getattr(F, op + "_backward")(x, x, **kwargs, backend=b) for b in BACKENDS]
    for y, g in zip(ys[1:], gs[1:]):
        np.testing.assert_allclose(y, ys[0], **TOL[np.float32])
        np.testing.assert_allclose(g, gs[0], **TOL[np.float32])
    empty = np.zeros((0, 3, 2, 2), np.float32)
    for b in BACKENDS:
        assert getattr(F, op)(empty, **kwargs, backend=b).shape == empty.shape
        assert getattr(F, op + "_backward")(empty, empty, **kwargs, backend=b).shape == empty.shape


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("op, kwargs, formula", CASES, ids=IDS)
def test_activation_matches_pytorch(op, kwargs, formula, backend):
    x = _inputs(np.float64, seed=4)
    gy = np.random.default_rng(5).standard_normal(x.shape)
    xt = torch.from_numpy(x).requires_grad_()
    yt = getattr(torch.nn.functional, op)(xt, **kwargs)
    yt.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(getattr(F, op)(x, **kwargs, backend=backend), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(getattr(F, op + "_backward")(gy, x, **kwargs, backend=backend), xt.grad.numpy(),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [lambda: L.LeakyReLU(0.2), lambda: L.SiLU(), lambda: L.GELU(),
                                  lambda: L.GELU("tanh")])
def test_activation_layers_gradients_and_round_trip(make, tmp_path):
    layer = make()
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4))
    g = np.random.default_rng(7).standard_normal(x.shape)
    layer.forward(x, training=True)
    gx = layer.backward(g)
    np.testing.assert_allclose(gx, numeric_grad(lambda: float((layer.forward(x) * g).sum()), x), rtol=1e-6, atol=1e-8)
    model = fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(4, 3, rng=0), make(), fastcnn.Dense(3, 2, rng=1)],
                               input_shape=(1, 2, 2))
    model.save(tmp_path / "m.npz")
    loaded = fastcnn.load_model(tmp_path / "m.npz")
    assert repr(loaded.layers[2]) == repr(model.layers[2])
    xs = np.random.default_rng(8).standard_normal((5, 1, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(xs), model.predict(xs))


def test_activation_bad_arguments():
    x = np.zeros((2, 2), np.float32)
    for bad in ("0.1", float("nan"), True, None):
        with pytest.raises(ValueError, match="negative_slope"):
            F.leaky_relu(x, bad)
        with pytest.raises(ValueError, match="negative_slope"):
            L.LeakyReLU(bad)
    for bad in ("erf", None, "TANH"):
        with pytest.raises(ValueError, match="approximate"):
            F.gelu(x, bad)
        with pytest.raises(ValueError, match="approximate"):
            L.GELU(bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.silu(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="grad_y"):
        F.silu_backward(np.zeros(3, np.float32), x)


def test_float32_erf_rational_is_within_about_half_an_ulp_of_one():
    from fastcnn.kernels._erf import ERF_CLAMP, erf_rational

    x = np.linspace(-7, 7, 100001)
    c = np.clip(x, -ERF_CLAMP, ERF_CLAMP)
    assert np.abs(erf_rational(c, c * c) - np.vectorize(math.erf)(x)).max() < 7e-8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_matches_math_tanh(dtype, backend):
    """tanh on a dense grid, tiny values of both signs, saturation, infinities and NaN: ``math.tanh``'s
    values to 4e-7 in float32 (Numba's rational function, 3.4e-7 in float32 arithmetic) and to rounding
    in float64, never past +-1."""
    x = np.concatenate([np.linspace(-20, 20, 40001), np.geomspace(1e-30, 1, 2001), -np.geomspace(1e-30, 1, 2001),
                        [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
    want = np.array([math.tanh(v) for v in x.astype(np.float64)])
    got = F.tanh(x.reshape(2, 1, 2, -1), backend=backend).reshape(-1)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, **(dict(rtol=4e-7, atol=4e-7) if dtype == np.float32 else
                                             dict(rtol=1e-15, atol=1e-300)))
    assert np.isnan(got[-1]) and np.all(np.abs(got[:-1]) <= 1)
    tiny = (np.abs(x) < 1e-3) & (x != 0)
    np.testing.assert_allclose(got[tiny], want[tiny], rtol=4e-7 if dtype == np.float32 else 1e-15, atol=0)
