"""Optimizer steps against updates computed by hand."""
import math

import numpy as np
import pytest

import fastcnn
from fastcnn import optim


def _run(opt, grads, p0=1.0):
    p = np.array([p0])
    for g in grads:
        opt.step([("w", p, np.array([g]))])
    return p[0]


def test_sgd_plain_and_time_based_decay():
    assert _run(optim.SGD(0.1), [2.0]) == pytest.approx(1.0 - 0.2)
    # lr_t = 0.1 / (1 + 0.5 t): steps use 0.1, 0.0667, 0.05
    assert _run(optim.SGD(0.1, decay=0.5), [1.0, 1.0, 1.0]) == pytest.approx(1.0 - 0.1 - 0.1 / 1.5 - 0.1 / 2.0)


def test_sgd_momentum_and_nesterov_as_pytorch():
    # buf1 = g1; buf2 = 0.9*buf1 + g2; p -= lr*buf
    assert _run(optim.SGD(0.1, momentum=0.9), [1.0, 2.0]) == pytest.approx(1.0 - 0.1 * 1.0 - 0.1 * (0.9 + 2.0))
    # nesterov: update = g + mu * buf
    expected = 1.0 - 0.1 * (1.0 + 0.9 * 1.0) - 0.1 * (2.0 + 0.9 * 2.9)
    assert _run(optim.SGD(0.1, momentum=0.9, nesterov=True), [1.0, 2.0]) == pytest.approx(expected)


def test_weight_decay_adds_l2_gradient():
    assert _run(optim.SGD(0.1, weight_decay=0.5), [0.0], p0=2.0) == pytest.approx(2.0 - 0.1 * 0.5 * 2.0)


def test_adam_by_hand():
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    p, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate([0.5, -1.0, 2.0], start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    assert _run(optim.Adam(lr), [0.5, -1.0, 2.0]) == pytest.approx(p, rel=1e-12)


def test_schedules():
    step = optim.StepLR(2, gamma=0.5)
    assert [step(t, None) for t in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cos = optim.CosineLR()
    assert cos(0, 10) == pytest.approx(1) and cos(5, 10) == pytest.approx(0.5) and cos(10, 10) == pytest.approx(0)
    one = optim.OneCycleLR(pct_start=0.5, div_factor=10, final_div_factor=100)
    assert one(0, 100) == pytest.approx(0.1) and one(50, 100) == pytest.approx(1.0)
    assert one(100, 100) == pytest.approx(1 / 1000)
    opt = optim.SGD(1.0, schedule=optim.CosineLR())
    with pytest.raises(ValueError, match="needs the run's total steps"):
        opt.current_lr()
    opt.total_steps = 4
    assert _run(opt, [1.0, 1.0], p0=0.0) == pytest.approx(-(1.0 + 0.5 * (1 + math.cos(math.pi / 4))))


@pytest.mark.parametrize("make, pattern", [
    (lambda: optim.SGD(-1), "lr must be a finite number >= 0"),
    (lambda: optim.SGD(float("nan")), "lr must be a finite number >= 0"),
    (lambda: optim.SGD(0.1, momentum=1.5), r"momentum must be in \[0, 1\)"),
    (lambda: optim.SGD(0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda: optim.Adam(betas=(0.9, 1.0)), "betas must be two numbers"),
    (lambda: optim.StepLR(0), "step_size must be >= 1"),
])
def test_bad_hyperparameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_adam_updates_every_parameter_alike_whatever_its_size_layout_or_dtype(backend):
    """A big parameter (the parallel kernel), small ones (its serial twin), a non-contiguous one and two
    dtypes each follow the formula."""
    rng = np.random.default_rng(0)
    shapes = [(40000,), (3, 7), (5,), (2, 2, 3, 3)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params[1] = np.asfortranarray(params[1])
    params.append(rng.standard_normal(6))  # float64
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    lr, (b1, b2), eps = 0.01, (0.9, 0.999), 1e-8
    want = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(w) for w in want]
    v = [np.zeros_like(w) for w in want]
    opt = optim.Adam(lr)
    with fastcnn.use_backend(backend):
        for t in (1, 2):
            opt.step([(f"p{i}", p, g) for i, (p, g) in enumerate(zip(params, grads))])
            for i, g in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g.astype(np.float64) ** 2
                want[i] -= lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p, w, rtol=1e-5, atol=1e-6)
    assert params[1].flags.f_contiguous
