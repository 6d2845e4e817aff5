"""Every functional op, on every backend, against the naive references, SciPy and finite differences."""
import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
import fastcnn.functional as F

from . import reference as ref
from .conftest import BACKENDS

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 9))
    return dict(
        n=draw(st.integers(1, 3)),
        c_in=draw(st.integers(1, 3)),
        c_out=draw(st.integers(1, 4)),
        h=h,
        w=w,
        kernel=(kh, kw),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(ph, pw),
        dilation=(dh, dw),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        seed=draw(st.integers(0, 2**31)),
    )


def _conv_arrays(case):
    rng = np.random.default_rng(case["seed"])
    d = case["dtype"]
    x = rng.standard_normal((case["n"], case["c_in"], case["h"], case["w"])).astype(d)
    wt = rng.standard_normal((case["c_out"], case["c_in"]) + case["kernel"]).astype(d)
    b = rng.standard_normal(case["c_out"]).astype(d)
    return x, wt, b


@SETTINGS
@given(case=conv_cases())
def test_conv2d_matches_reference_on_every_backend(case):
    x, wt, b = _conv_arrays(case)
    pads = tuple((p, p) for p in case["padding"])
    expected = ref.conv2d(x, wt, b, case["stride"], pads, case["dilation"])
    gy = np.random.default_rng(case["seed"] + 1).standard_normal(expected.shape).astype(case["dtype"])
    exp_grads = ref.conv2d_backward(gy, x, wt, case["stride"], pads, case["dilation"])
    params = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"])
    for backend in BACKENDS:
        y = F.conv2d(x, wt, b, backend=backend, **params)
        assert y.dtype == case["dtype"] and y.shape == expected.shape
        np.testing.assert_allclose(y, expected, **TOL[case["dtype"]])
        grads = F.conv2d_backward(gy, x, wt, backend=backend, **params)
        for got, want in zip(grads, exp_grads):
            assert got.dtype == case["dtype"] and got.shape == want.shape
            np.testing.assert_allclose(got, want, **TOL[case["dtype"]])


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4), (1, 1)])
def test_conv2d_string_padding(backend, rng, padding, kernel):
    x = rng.standard_normal((2, 2, 7, 8))
    wt = rng.standard_normal((3, 2) + kernel)
    y = F.conv2d(x, wt, padding=padding, dilation=(1, 2), backend=backend)
    span = (kernel[0] - 1, 2 * (kernel[1] - 1))
    if padding == "same":
        assert y.shape[2:] == x.shape[2:]
        pads = tuple((s // 2, s - s // 2) for s in span)  # PyTorch puts the odd extra at the end
    else:
        pads = ((0, 0), (0, 0))
    np.testing.assert_allclose(y, ref.conv2d(x, wt, None, (1, 1), pads, (1, 2)), rtol=1e-12)
    gy = rng.standard_normal(y.shape)
    for got, want in zip(F.conv2d_backward(gy, x, wt, padding=padding, dilation=(1, 2), backend=backend),
                         ref.conv2d_backward(gy, x, wt, (1, 1), pads, (1, 2))):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_conv2d_matches_scipy_correlate(backend, rng):
    x = rng.standard_normal((3, 4, 12, 10))
    wt = rng.standard_normal((5, 4, 3, 2))
    y = F.conv2d(x, wt, backend=backend)
    for s in range(3):
        for o in range(5):
            want = scipy.signal.correlate(x[s], wt[o], mode="valid")[0]
            np.testing.assert_allclose(y[s, o], want, rtol=1e-10, atol=1e-12)


def test_conv2d_gradients_match_finite_differences(backend, rng):
    x = rng.standard_normal((2, 2, 6, 5))
    wt = rng.standard_normal((3, 2, 3, 2))
    b = rng.standard_normal(3)
    params = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    gy = rng.standard_normal(F.conv2d(x, wt, b, **params).shape)

    def loss():
        return float((F.conv2d(x, wt, b, backend=backend, **params) * gy).sum())

    gx, gw, gb = F.conv2d_backward(gy, x, wt, backend=backend, **params)
    np.testing.assert_allclose(gx, ref.numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gw, ref.numeric_grad(loss, wt), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, ref.numeric_grad(loss, b), rtol=1e-6, atol=1e-8)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    return dict(
        shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(max(1, kh - 2 * ph), 9)),
               draw(st.integers(max(1, kw - 2 * pw), 9))),
        kernel=(kh, kw),
        stride=stride,
        padding=(ph, pw),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        # Few distinct values, many zeros: ties everywhere, as after a ReLU.
        ties=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31)),
    )


def _pool_input(case):
    rng = np.random.default_rng(case["seed"])
    if case["ties"]:
        return np.maximum(rng.integers(-2, 3, case["shape"]), 0).astype(case["dtype"])
    return rng.standard_normal(case["shape"]).astype(case["dtype"])


def _scatter_reference(gy, idx, shape):
    want = np.zeros(shape)
    for s in range(shape[0]):
        for c in range(shape[1]):
            np.add.at(want[s, c].reshape(-1), idx[s, c].ravel(), gy[s, c].ravel().astype(np.float64))
    return want


@SETTINGS
@given(case=pool_cases())
def test_max_pool2d_matches_reference_with_ties(case):
    x = _pool_input(case)
    stride = case["stride"] or case["kernel"]
    want_y, want_idx = ref.max_pool2d(x, case["kernel"], stride, case["padding"])
    gy = np.random.default_rng(case["seed"]).standard_normal(want_y.shape).astype(case["dtype"])
    want_gx = _scatter_reference(gy, want_idx, x.shape)
    for backend in BACKENDS:
        y, idx = F.max_pool2d(x, case["kernel"], case["stride"], case["padding"], backend=backend)
        assert y.dtype == x.dtype and idx.dtype == np.int64
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(idx, want_idx)
        gx = F.max_pool2d_backward(gy, idx, x.shape, backend=backend)
        assert gx.dtype == x.dtype
        np.testing.assert_allclose(gx, want_gx, **TOL[case["dtype"]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [71, 32, 9])
def test_max_pool2d_2x2_on_wide_rows_with_nans_and_any_indices(backend, dtype, width, rng):
    # 35 windows a row (odd height and width): several vectors of windows and a part vector; 16: whole
    # vectors only; 4: a part vector only.
    x = np.maximum(rng.integers(-2, 3, (2, 3, 9, width)), 0).astype(dtype)
    x[0, 1, 2, 5] = x[0, 1, 3, 4] = x[1, 2, 8, 7] = np.nan
    want_y, want_idx = ref.max_pool2d(x, (2, 2), (2, 2), (0, 0))
    y, idx = F.max_pool2d(x, 2, backend=backend)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    gy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(F.max_pool2d_backward(gy, idx, x.shape, backend=backend),
                               _scatter_reference(gy, idx, x.shape), **TOL[dtype])
    # Indices outside their 2x2 block, repeated ones among them: every gradient still lands, and sums.
    any_idx = rng.integers(0, 9 * width, y.shape)
    any_idx[1, 0, 0, :3] = 5
    np.testing.assert_allclose(F.max_pool2d_backward(gy, any_idx, x.shape, backend=backend),
                               _scatter_reference(gy, any_idx, x.shape), **TOL[dtype])


@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)), ((2, 3), (2, 2), (1, 1)),
                                                     ((3, 2), (2, 2), (0, 0)), ((2, 2), (1, 2), (1, 1)),
                                                     ((2, 2), (2, 1), (0, 0)), ((2, 2), (2, 3), (0, 0)),
                                                     ((7, 9), (7, 9), (0, 0))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool2d_window_shapes_both_backends(kernel, stride, padding, dtype):
    """The windows the Numba kernels treat apart (2 rows; 2 columns with stride 2) and their neighbours,
    on planes with a width that the windows do not cover (a column or more past the last window):
    the reference's values, and a gradient that is the pool's transpose."""
    rng = np.random.default_rng(sum(kernel) + sum(stride))
    x = rng.standard_normal((3, 5, 9, 11)).astype(dtype)
    want = ref.avg_pool2d(x, kernel, stride, padding)
    gy = rng.standard_normal(want.shape).astype(dtype)
    for backend in BACKENDS:
        y = F.avg_pool2d(x, kernel, stride, padding, backend=backend)
        np.testing.assert_allclose(y, want, **TOL[dtype])
        gx = F.avg_pool2d_backward(gy, x.shape, kernel, stride, padding, backend=backend)
        np.testing.assert_allclose((gx.astype(np.float64) * x).sum(), (gy.astype(np.float64) * want).sum(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("n, shape, kernel, padding, options", [(64, (8, 8), (8, 8), (0, 0), {}),  # parallel kernels
                                                               (3, (5, 7), (7, 9), (1, 1), dict(count_include_pad=False)),
                                                               (3, (5, 7), (7, 9), (1, 1), {}),
                                                               (3, (7, 7), (7, 7), (0, 0), dict(ceil_mode=True)),
                                                               (3, (6, 6), (6, 6), (0, 0), dict(divisor_override=5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool2d_of_the_whole_plane(n, shape, kernel, padding, options, dtype, monkeypatch):
    """One window that is the whole (padded) plane, which the Numba kernels sum as a global pool does
    (the windows' kernels are not called): the reference's values whatever the divisor, and a gradient
    that is the pool's transpose."""
    from fastcnn.kernels import pool_numba

    def refused(*args):
        raise AssertionError("a whole-plane window went to the windows' kernel")

    monkeypatch.setattr(pool_numba, "_avg_pool", refused)
    monkeypatch.setattr(pool_numba, "_avg_unpool", refused)
    rng = np.random.default_rng(sum(shape) + len(options))
    x = rng.standard_normal((n, 4) + shape).astype(dtype)
    want = ref.avg_pool2d(x, kernel, kernel, padding, **options)
    assert want.shape == (n, 4, 1, 1)
    gy = rng.standard_normal(want.shape).astype(dtype)
    for backend in BACKENDS:
        np.testing.assert_allclose(F.avg_pool2d(x, kernel, kernel, padding, **options, backend=backend), want,
                                   **TOL[dtype])
        gx = F.avg_pool2d_backward(gy, x.shape, kernel, kernel, padding, **options, backend=backend)
        np.testing.assert_allclose((gx.astype(np.float64) * x).sum(), (gy.astype(np.float64) * want).sum(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)


@SETTINGS
@given(case=pool_cases())
def test_avg_pool2d_matches_reference(case):
    x = _pool_input(case)
    stride = case["stride"] or case["kernel"]
    want = ref.avg_pool2d(x, case["kernel"], stride, case["padding"])
    gy = np.random.default_rng(case["seed"]).standard_normal(want.shape).astype(case["dtype"])
    for backend in BACKENDS:
        y = F.avg_pool2d(x, case["kernel"], case["stride"], case["padding"], backend=backend)
        assert y.dtype == x.dtype
        np.testing.assert_allclose(y, want, **TOL[case["dtype"]])
        gx = F.avg_pool2d_backward(gy, x.shape, case["kernel"], case["stride"], case["padding"], backend=backend)
        assert gx.dtype == x.dtype and gx.shape == x.shape
        # The gradient of a linear map is its transpose: <gy, A x> == <A^T gy, x>.
        np.testing.assert_allclose((gx.astype(np.float64) * x).sum(), (gy.astype(np.float64) * want).sum(),
                                   rtol=1e-4 if case["dtype"] == np.float32 else 1e-10, atol=1e-4)


def test_pool_gradients_match_finite_differences(backend, rng):
    x = rng.standard_normal((2, 2, 7, 6))  # distinct values: max-pool is differentiable here
    gy_max = rng.standard_normal(F.max_pool2d(x, 3, 2, 1)[0].shape)
    gy_avg = rng.standard_normal(F.avg_pool2d(x, 3, 2, 1).shape)

    def max_loss():
        return float((F.max_pool2d(x, 3, 2, 1, backend=backend)[0] * gy_max).sum())

    def avg_loss():
        return float((F.avg_pool2d(x, 3, 2, 1, backend=backend) * gy_avg).sum())

    _, idx = F.max_pool2d(x, 3, 2, 1, backend=backend)
    np.testing.assert_allclose(F.max_pool2d_backward(gy_max, idx, x.shape, backend=backend),
                               ref.numeric_grad(max_loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(F.avg_pool2d_backward(gy_avg, x.shape, 3, 2, 1, backend=backend),
                               ref.numeric_grad(avg_loss, x), rtol=1e-6, atol=1e-8)


def test_max_pool2d_all_equal_window_picks_first_element(backend):
    x = np.zeros((1, 1, 4, 4), np.float32)
    _, idx = F.max_pool2d(x, 2, backend=backend)
    np.testing.assert_array_equal(idx[0, 0], [[0, 2], [8, 10]])


def test_max_pool2d_never_picks_padding_even_for_minus_inf(backend):
    x = np.full((1, 1, 3, 3), -np.inf, np.float32)
    y, idx = F.max_pool2d(x, 3, 2, 1, backend=backend)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])


def test_nan_in_nan_out(backend, rng):
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 1, 0] = np.nan
    y, idx = F.max_pool2d(x, 2, backend=backend)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 5  # the last NaN in row-major order, as PyTorch
    assert not np.isnan(y[0, 0, 1:, :]).any()
    conv = F.conv2d(x, np.ones((1, 1, 2, 2), np.float32), backend=backend)
    assert np.isnan(conv[0, 0, :2, :2]).all() and not np.isnan(conv[0, 0, 2:, 2:]).any()
    assert np.isnan(F.avg_pool2d(x, 2, backend=backend)[0, 0, 0, 0])


def test_non_contiguous_inputs_work(backend, rng):
    x = rng.standard_normal((3, 8, 9, 2)).transpose(0, 3, 1, 2)  # (3, 2, 8, 9), not C-contiguous
    wt = rng.standard_normal((2, 3, 3, 4)).transpose(0, 3, 2, 1)[:, ::2]  # (2, 2, 3, 3) strided
    assert not x.flags.c_contiguous and not wt.flags.c_contiguous
    np.testing.assert_allclose(F.conv2d(x, wt, backend=backend), ref.conv2d(x, wt), rtol=1e-10)
    y, _ = F.max_pool2d(x[:, :, ::2], 2, backend=backend)
    np.testing.assert_array_equal(y, ref.max_pool2d(x[:, :, ::2], (2, 2), (2, 2), (0, 0))[0])


def test_empty_batch(backend):
    x = np.zeros((0, 2, 5, 5), np.float32)
    wt = np.zeros((3, 2, 3, 3), np.float32)
    assert F.conv2d(x, wt, backend=backend).shape == (0, 3, 3, 3)
    y, idx = F.max_pool2d(x, 2, backend=backend)
    assert y.shape == idx.shape == (0, 2, 2, 2)
    assert F.max_pool2d_backward(y, idx, x.shape, backend=backend).shape == x.shape


def test_backends_agree_on_mnist_shapes(rng):
    if len(BACKENDS) < 2:
        pytest.skip("needs both backends")
    x = rng.standard_normal((8, 8, 13, 13)).astype(np.float32)
    wt = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    ys = [F.conv2d(x, wt, backend=b) for b in BACKENDS]
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-4, atol=1e-4)
    relu = np.maximum(ys[0], 0)
    (y0, i0), (y1, i1) = (F.max_pool2d(relu, 2, backend=b) for b in BACKENDS)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(y0, y1)


def test_numba_kernels_are_deterministic(rng):
    if "numba" not in BACKENDS:
        pytest.skip("numba not installed")
    x = rng.standard_normal((16, 4, 12, 12)).astype(np.float32)
    wt = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((16, 8, 10, 10)).astype(np.float32)
    first = F.conv2d_backward(gy, x, wt, backend="numba")
    for _ in range(3):
        for a, b in zip(first, F.conv2d_backward(gy, x, wt, backend="numba")):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("stride", [1, 2])
def test_numba_serial_twins_match_the_parallel_kernels(rng, monkeypatch, stride):
    """Small calls run a serial compile of the same kernel: the results must be the same bits."""
    if "numba" not in BACKENDS:
        pytest.skip("numba not installed")
    from fastcnn.kernels import jit

    x = rng.standard_normal((6, 3, 11, 11)).astype(np.float32)
    wt = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    z, labels = rng.standard_normal((40, 7)).astype(np.float32), rng.integers(0, 7, 40)

    def run():
        y = F.conv2d(x, wt, stride=stride, backend="numba")
        pooled, idx = F.max_pool2d(y, 2, backend="numba")
        return [y, *F.conv2d_backward(np.ones_like(y), x, wt, stride=stride, backend="numba"), pooled,
                F.max_pool2d_backward(pooled, idx, y.shape, backend="numba"),
                *F.softmax_cross_entropy(z, labels, backend="numba")[:2], F.relu(y, backend="numba"),
                F.relu_backward(x, x, backend="numba"), F.dropout(x, 0.5, seed=3, backend="numba")]

    results = {}
    for work in (0, 1 << 40):  # every kernel parallel, then every kernel serial
        monkeypatch.setattr(jit, "SERIAL_WORK", work)
        results[work] = run()
    for a, b in zip(*results.values()):
        np.testing.assert_array_equal(a, b)
    assert jit._serial_twins  # the serial run did use twins


def test_one_thread_runs_the_serial_twin_of_a_large_kernel():
    if "numba" not in BACKENDS:
        pytest.skip("numba not installed")
    from fastcnn.kernels import elementwise_numba, jit

    kernel, before = elementwise_numba._relu_forward, fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        twin = jit.sized(kernel, 1 << 40)
        if jit.max_threads() > 1:
            fastcnn.set_num_threads(2)
            assert jit.sized(kernel, 1 << 40) is kernel
    finally:
        fastcnn.set_num_threads(before)
    assert twin is not kernel and twin is jit.sized(kernel, 0)


def _dilate(k, dh, dw):
    out = np.zeros(((k.shape[0] - 1) * dh + 1, (k.shape[1] - 1) * dw + 1))
    out[::dh, ::dw] = k
    return out


@pytest.mark.parametrize("kernel, dilation, padding", [
    ((3, 3), (1, 1), 1),  # "same": one zero row and column shared by neighbouring samples and rows
    ((3, 3), (1, 1), (2, 0, 1, 0)),  # (left, right, top, bottom) on some sides only
    ((1, 1), (1, 1), 2),  # padding past the kernel's reach: the output is larger than the input
    ((3, 2), (2, 1), (0, 3, 2, 1)),  # dilation, and more padding on one side than the kernel reaches
    ((5, 5), (1, 1), 2),
])
@pytest.mark.parametrize("n, h, w, dtype", [(3, 6, 7, np.float64), (1, 2, 5, np.float32)])
def test_conv2d_stride_1_padding_layouts(backend, rng, kernel, dilation, padding, n, h, w, dtype):
    """The stride-1 Numba kernels store no padding: planes share their zero rows and columns (see
    conv_numba._wide_planes). Every padding shape, forward and both gradients, against the reference;
    one sample of two rows in float32 too (another tile width, so other tails)."""
    x = rng.standard_normal((n, 2, h, w)).astype(dtype)
    wt = rng.standard_normal((9, 2) + kernel).astype(dtype)
    b = rng.standard_normal(9).astype(dtype)
    pads = ((padding,) * 2,) * 2 if isinstance(padding, int) else (padding[2:], padding[:2])
    want = ref.conv2d(x, wt, b, (1, 1), pads, dilation)
    np.testing.assert_allclose(F.conv2d(x, wt, b, padding=padding, dilation=dilation, backend=backend), want,
                               **TOL[dtype])
    gy = rng.standard_normal(want.shape).astype(dtype)
    got = F.conv2d_backward(gy, x, wt, padding=padding, dilation=dilation, backend=backend)
    wants = ref.conv2d_backward(gy, x, wt, (1, 1), pads, dilation)
    for name, a, want_grad in zip(("grad_x", "grad_weight", "grad_bias"), got, wants):
        np.testing.assert_allclose(a, want_grad, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("n, c_in, c_out, hw, dilation, kernel", [(4, 3, 5, (33, 30), (1, 2), (3, 3)),
                                                                 (64, 1, 8, (28, 28), (1, 1), (3, 3)),
                                                                 (3, 2, 6, (40, 41), (1, 1), (5, 7)),
                                                                 (2, 40, 3, (9, 9), (1, 1), (3, 3)),
                                                                 (2, 3, 138, (6, 5), (1, 1), (3, 3))])
def test_conv2d_on_inputs_larger_than_a_kernel_block(backend, rng, n, c_in, c_out, hw, dilation, kernel):
    """Big enough that the Numba kernels' flat runs span several cache blocks and samples; SciPy reference.
    The cases also cover how the Numba kernels split their work: output channels that are not whole
    register tiles, 35 taps that are not whole weight-gradient tiles, a weight gradient split by
    blocks (64 samples of one channel), by input channels (40 of them) and by bands of output-channel
    tiles (138 channels: 35 tiles in bands of 3, the last band 2 tiles, the last tile 2 channels)."""
    x = rng.standard_normal((n, c_in) + hw)
    wt = rng.standard_normal((c_out, c_in) + kernel)
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    kernels = [[_dilate(wt[o, ci], dh, dw) for ci in range(c_in)] for o in range(c_out)]
    want = np.array([[sum(scipy.signal.correlate(xp[s, ci], kernels[o][ci], mode="valid") for ci in range(c_in))
                      for o in range(c_out)] for s in range(n)])
    y = F.conv2d(x, wt, padding=1, dilation=dilation, backend=backend)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = F.conv2d_backward(gy, x, wt, padding=1, dilation=dilation, backend=backend)
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)), rtol=1e-10)
    want_gw = np.array([[sum(scipy.signal.correlate(xp[s, ci], gy[s, o], mode="valid") for s in range(n))[::dh, ::dw]
                         for ci in range(c_in)] for o in range(c_out)])
    want_gxp = np.array([[sum(scipy.signal.convolve(gy[s, o], kernels[o][ci], mode="full") for o in range(c_out))
                          for ci in range(c_in)] for s in range(n)])
    np.testing.assert_allclose(gw, want_gw, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gx, want_gxp[:, :, 1:-1, 1:-1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("conv, pool, shape", [
    (dict(), dict(), (3, 1, 12, 12, 5)),  # the fused path: stride-1 conv, 2x2 pool ...
    (dict(padding=1, dilation=(1, 2)), dict(), (2, 3, 9, 41, 4)),  # ... odd output sizes, 19 windows a row
    (dict(stride=2), dict(), (2, 2, 11, 11, 3)),  # a strided conv, then the pool
    (dict(), dict(pool_size=3, pool_stride=2, pool_padding=1), (2, 2, 9, 9, 3)),  # another pool
    (dict(), dict(pool_size=3, pool_stride=2), (2, 2, 11, 11, 3)),  # its windows leave the 2x2 blocks
])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_max_pool2d_matches_the_reference_conv_then_pool(backend, rng, dtype, conv, pool, shape, relu):
    n, c, h, w, c_out = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    x[0, 0, :3, :3] = 0.0  # equal outputs in a window: ties go to the first
    wt[0] = 0.0
    geo = dict(stride=conv.get("stride", 1), padding=conv.get("padding", 0), dilation=conv.get("dilation", 1))
    pad = geo["padding"]
    dilation = geo["dilation"] if isinstance(geo["dilation"], tuple) else (geo["dilation"],) * 2
    conv_out = ref.conv2d(x, wt, b, (geo["stride"],) * 2, ((pad, pad), (pad, pad)), dilation)
    pool_args = [(pool.get(k, default),) * 2 for k, default in (("pool_size", 2), ("pool_stride", 2), ("pool_padding", 0))]
    want_y, want_idx = ref.max_pool2d(conv_out.astype(dtype), *pool_args)
    if relu:
        want_y = np.maximum(want_y, 0)
    y, idx = F.conv2d_max_pool2d(x, wt, b, **geo, **pool, relu=relu, backend=backend)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_allclose(y, want_y, **TOL[dtype])
    np.testing.assert_array_equal(idx, want_idx)
    gy = rng.standard_normal(y.shape).astype(dtype)
    passed = np.where(want_y > 0, gy, 0) if relu else gy
    want = ref.conv2d_backward(_scatter_reference(passed, idx, conv_out.shape), x, wt, (geo["stride"],) * 2,
                               ((pad, pad), (pad, pad)), dilation)
    relu_output = y if relu else None
    got = F.conv2d_max_pool2d_backward(gy, idx, x, wt, **geo, relu_output=relu_output, backend=backend)
    for name, a, b in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=name)
    no_gx = F.conv2d_max_pool2d_backward(gy, idx, x, wt, **geo, relu_output=relu_output, input_grad=False, backend=backend)
    assert no_gx[0] is None


def test_conv2d_max_pool2d_backward_rejects_bad_indices(backend, rng):
    x, wt = rng.standard_normal((2, 1, 6, 6)), rng.standard_normal((3, 1, 3, 3))
    y, idx = F.conv2d_max_pool2d(x, wt, backend=backend)
    with pytest.raises(ValueError, match=r"argmax holds indices outside \[0, 16\) for the conv output \(2, 3, 4, 4\)"):
        F.conv2d_max_pool2d_backward(y, idx + 16, x, wt, backend=backend)
    with pytest.raises(ValueError, match=r"grad_y \(2, 3, 2, 2\), argmax \(2, 3, 2, 1\) and the conv output"):
        F.conv2d_max_pool2d_backward(y, idx[..., :1], x, wt, backend=backend)
    with pytest.raises(TypeError, match="argmax must be an integer array"):
        F.conv2d_max_pool2d_backward(y, idx.astype(float), x, wt, backend=backend)
    with pytest.raises(ValueError, match=r"relu_output has shape \(2, 3, 2, 1\) but the forward output has shape"):
        F.conv2d_max_pool2d_backward(y, idx, x, wt, relu_output=y[..., :1], backend=backend)
    with pytest.raises(TypeError, match="relu must be True or False, got 'yes'"):
        F.conv2d_max_pool2d(x, wt, relu="yes", backend=backend)


def test_numba_conv_never_reads_stale_scratch(rng):
    """The Numba conv keeps its temporaries between calls without clearing them: poison every kept
    buffer, then check a padded, dilated conv (whose runs hold many zero positions) against SciPy."""
    if "numba" not in BACKENDS:
        pytest.skip("numba not installed")
    from fastcnn.kernels import scratch

    x = rng.standard_normal((5, 3, 14, 13))
    wt = rng.standard_normal((4, 3, 3, 3))
    gy = rng.standard_normal((5, 4, 14, 11))
    gp = rng.standard_normal((5, 4, 7, 5))

    def poisoned(result):
        for buf, *_ in getattr(scratch._local, "buffers", {}).values():  # (bytes, shape, dtype, view)
            buf[:] = 0xFF  # NaN in float32 and float64, whatever the buffer's length
        return result

    def run(backend):
        _, idx = F.conv2d_max_pool2d(x, wt, padding=(1, 0), backend=backend)
        return [poisoned(F.conv2d(x, wt, padding=(1, 0), backend=backend)),
                *poisoned(F.conv2d_backward(gy, x, wt, padding=(1, 0), backend=backend)),
                *poisoned(F.conv2d_max_pool2d(x, wt, padding=(1, 0), backend=backend)),
                *poisoned(F.conv2d_max_pool2d_backward(gp, idx, x, wt, padding=(1, 0), backend=backend))]  # runs from the pool

    want = run("numpy")
    F.conv2d_backward(rng.standard_normal((9, 4, 30, 30)), rng.standard_normal((9, 3, 32, 32)), wt, backend="numba")
    poisoned(None)
    got = run("numba")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_scratch_reuses_one_buffer_per_role_and_thread():
    import threading

    from fastcnn.kernels.scratch import KEEP_BYTES, scratch

    a = scratch("test a", (3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.c_contiguous
    assert np.shares_memory(a, scratch("test a", (2, 2), np.float64))  # same role: same memory
    assert not np.shares_memory(a, scratch("test b", (3, 4), np.float32))
    bigger = scratch("test a", (1000,), np.float64)  # grown, and kept from now on
    assert np.shares_memory(bigger, scratch("test a", (3, 4), np.float32))
    other = []
    thread = threading.Thread(target=lambda: other.append(scratch("test a", (3, 4), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(other[0], a)
    huge = (KEEP_BYTES // 4 + 1,)
    assert not np.shares_memory(scratch("test huge", huge, np.float32), scratch("test huge", huge, np.float32))


def test_zero_padded_is_np_pad_in_a_kept_array(rng):
    """Padded inputs come from arrays kept per shape and padding, whose margins must stay zero while
    their interiors, and other shapes in between, change; the least recently used go first."""
    from fastcnn.kernels.scratch import _PADDED_KEPT, zero_padded

    pads = ((1, 2), (0, 3))

    def reference(x, padding=pads):
        return np.pad(x, ((0, 0), (0, 0)) + padding)

    for dtype in (np.float32, np.float64):
        for n in (2, 0):
            x = rng.standard_normal((n, 3, 4, 5)).astype(dtype)
            first = zero_padded(x, pads)
            assert first.dtype == dtype and first.flags.c_contiguous
            np.testing.assert_array_equal(first, reference(x))
            y = rng.standard_normal(x.shape).astype(dtype)
            again = zero_padded(y, pads)
            assert np.shares_memory(first, again) or n == 0
            np.testing.assert_array_equal(again, reference(y))
            for k in range(_PADDED_KEPT):  # as many other shapes: the first is dropped
                np.testing.assert_array_equal(zero_padded(np.full((1, 1, k + 1, 2), 7, dtype), ((1, 1), (1, 1))),
                                              reference(np.full((1, 1, k + 1, 2), 7, dtype), ((1, 1), (1, 1))))
            last = zero_padded(x, pads)
            assert not np.shares_memory(last, again)
            np.testing.assert_array_equal(last, reference(x))
    x = rng.standard_normal((2, 3, 4, 5))
    other = ((2, 1), (3, 0))  # the same padded shape, another padding: an array of its own
    assert not np.shares_memory(zero_padded(x, pads), zero_padded(x, other))
    np.testing.assert_array_equal(zero_padded(x, pads), reference(x))
    np.testing.assert_array_equal(zero_padded(x, other), reference(x, other))
    # One padded size and the same top and left margins, but a larger input with less bottom/right
    # padding: its last row and column must not be left in the smaller input's margins.
    small, large = np.full((1, 1, 5, 5), 1.0), np.full((1, 1, 6, 6), 2.0)
    np.testing.assert_array_equal(zero_padded(small, ((1, 1), (1, 1))), reference(small, ((1, 1), (1, 1))))
    np.testing.assert_array_equal(zero_padded(large, ((1, 0), (1, 0))), reference(large, ((1, 0), (1, 0))))
    np.testing.assert_array_equal(zero_padded(small, ((1, 1), (1, 1))), reference(small, ((1, 1), (1, 1))))


def test_derived_scratch_is_shared_only_inside_a_shared_inputs_block():
    from fastcnn.kernels.scratch import derived, scratch, shared_inputs

    fills = []

    def make(source, layout=(0,)):
        def fill(out):
            fills.append(source)
            out[:] = source + layout[0]
        return derived("test derived", source.shape, source.dtype, source, layout, fill)

    a, b = np.arange(4.0), np.ones(4)
    make(a), make(a)
    assert len(fills) == 2  # outside a block: filled every time
    with shared_inputs():
        fills.clear()
        np.testing.assert_array_equal(make(a), a)
        np.testing.assert_array_equal(make(a), a)
        assert len(fills) == 1
        np.testing.assert_array_equal(make(a, (1,)), a + 1)  # another layout
        np.testing.assert_array_equal(make(b), b)  # another source refills the role ...
        np.testing.assert_array_equal(make(a), a)  # ... so the first must be filled again
        assert len(fills) == 4
        scratch("test derived", (4,), np.float64)[:] = -1  # a plain scratch use overwrites the role
        np.testing.assert_array_equal(make(a), a)
        with shared_inputs():
            make(b)
        np.testing.assert_array_equal(make(a), a)  # the inner block refilled the buffer
        assert len(fills) == 7


def test_shared_result_is_made_once_per_shared_inputs_block():
    from fastcnn.kernels.scratch import shared, shared_inputs

    made = []

    def make(source, layout=(0,)):
        return shared("test shared", (source,), layout, lambda: made.append(layout) or source + layout[0])

    a = np.arange(3.0)
    assert make(a) is not make(a) and len(made) == 2  # outside a block: made every time
    with shared_inputs():
        first = make(a)
        assert make(a) is first and len(made) == 3
        np.testing.assert_array_equal(make(a, (1,)), a + 1)  # another layout is made afresh
        np.testing.assert_array_equal(make(a.copy()), a)  # so is another source
        assert len(made) == 5
    with shared_inputs():
        assert make(a) is not first and len(made) == 6  # a new block makes it again


def test_conv2d_backward_without_input_grad_skips_only_grad_x(backend, rng):
    x = rng.standard_normal((3, 2, 9, 8)).astype(np.float32)
    wt = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    gy = rng.standard_normal(F.conv2d(x, wt).shape).astype(np.float32)
    full = F.conv2d_backward(gy, x, wt, backend=backend)
    gx, gw, gb = F.conv2d_backward(gy, x, wt, input_grad=False, backend=backend)
    assert gx is None
    np.testing.assert_array_equal(gw, full[1])
    np.testing.assert_array_equal(gb, full[2])


def test_relu_and_its_gradient(backend, rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    y = F.relu(x, backend=backend)
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # NaN stays NaN, -0 becomes 0
    gy = rng.standard_normal(x.shape).astype(np.float32)
    gy[1, 0, 0, 0] = np.nan
    want = np.where(y > 0, gy, 0)
    np.testing.assert_array_equal(F.relu_backward(gy, y, backend=backend), want)
    assert np.array_equal(F.relu_backward(gy, y, backend=backend).view(np.int32), want.view(np.int32))  # -0 too
    for g, out, expected in [(2.5, 1.0, 2.5), (2.5, -1.0, 0.0), (np.nan, 0.0, 0.0)]:  # 0-d arrays
        got = F.relu_backward(np.array(g), np.array(out), backend=backend)
        assert got.shape == () and got == expected
    with pytest.raises(ValueError, match="grad_y has shape"):
        F.relu_backward(gy[:1], y, backend=backend)


@pytest.mark.parametrize("n, n_in, n_out", [(5, 7, 3), (3000, 40, 10), (1, 1, 1), (1031, 100, 13), (97, 784, 16),
                                            (131, 60, 50)])
def test_linear_and_its_gradients_match_the_formulas(backend, rng, n, n_in, n_out):
    x, w, b = rng.standard_normal((n, n_in)), rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    gy = rng.standard_normal((n, n_out))
    np.testing.assert_allclose(F.linear(x, w, b, backend=backend), x @ w.T + b, rtol=1e-12, atol=1e-12)
    gx, gw, gb = F.linear_backward(gy, x, w, backend=backend)
    np.testing.assert_allclose(gx, gy @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, gy.T @ x, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(gb, gy.sum(axis=0), rtol=1e-12)
    assert F.linear_backward(gy, x, w, input_grad=False, backend=backend)[0] is None


def test_linear_goes_by_output_tiles_for_the_shapes_it_is_meant_for():
    """The shapes the linear tests give Numba's forward pass by output tiles, and some it must not take."""
    if "numba" not in BACKENDS:
        pytest.skip("numba not installed")
    from fastcnn.kernels import linear_numba

    assert linear_numba.by_output_tiles(131, 50, 60, 8)  # the case above, and test_inference's float64 ReLU case
    assert linear_numba.by_output_tiles(130, 128, 400, 4)  # test_inference's test_linear_with_relu_serial_or_parallel
    assert not linear_numba.by_output_tiles(64, 128, 400, 4)  # a small batch: the transpose does not pay
    assert not linear_numba.by_output_tiles(60000, 128, 784, 4)  # a whole training set: it streams
    assert not linear_numba.by_output_tiles(256, 128, 9216, 4)  # a long input: its tiles leave L2
    assert not linear_numba.by_output_tiles(256, 10, 400, 4)  # less than a tile of outputs


@pytest.mark.parametrize("n, n_in, n_out", [(64, 400, 128), (33, 50, 9), (600, 96, 12)])
def test_linear_gradients_in_float32(backend, rng, n, n_in, n_out):
    """float32 register tiles (twice as wide as float64's: 48 and 24 outputs on AVX-512, 24 and 12 on
    AVX2): whole tiles, padded rows, a remainder column block, and a weight gradient summed in chunks of
    the batch."""
    x, w = rng.standard_normal((n, n_in)), rng.standard_normal((n_out, n_in))
    gy = rng.standard_normal((n, n_out))
    gx, gw, _ = F.linear_backward(*(a.astype(np.float32) for a in (gy, x, w)), backend=backend)
    assert gx.dtype == gw.dtype == np.float32
    np.testing.assert_allclose(gx, gy @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, gy.T @ x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (3000, 10)])
def test_softmax_cross_entropy_matches_the_naive_formula(backend, rng, dtype, n, k):
    z = (rng.standard_normal((n, k)) * 4).astype(dtype)
    labels = rng.integers(0, k, n).astype(np.uint8)
    z[0, -1] = z[0, 0]  # a tie: the first largest logit is the prediction
    zz = z.astype(np.float64)
    p = np.exp(zz) / np.exp(zz).sum(axis=1, keepdims=True)
    want_loss = -np.log(p[np.arange(n), labels]).mean()
    want_grad = (p - np.eye(k)[labels]) / n
    loss, grad, correct = F.softmax_cross_entropy(z, labels, backend=backend)
    assert isinstance(loss, float) and grad.dtype == dtype and grad.shape == (n, k)
    assert correct == sum(int(np.argmax(row) == label) for row, label in zip(z.tolist(), labels))
    np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
    np.testing.assert_allclose(grad, want_grad, **TOL[dtype])


def test_softmax_cross_entropy_is_exact_for_huge_and_equal_logits(backend):
    z = np.array([[1e30, 0.0, -1e30], [5.0, 5.0, 5.0]], np.float32)
    loss, grad, correct = F.softmax_cross_entropy(z, np.array([1, 2]), backend=backend)
    assert correct == 0  # row 0 predicts class 0; row 1 ties, so predicts class 0 too
    np.testing.assert_allclose(loss, (1e30 + np.log(3)) / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [1 / 6, 1 / 6, -1 / 3]], rtol=1e-6, atol=1e-7)
    assert F.softmax_cross_entropy(np.zeros((0, 4), np.float32), np.zeros(0, int), backend=backend)[0] == 0.0


@pytest.mark.parametrize("labels, error, pattern", [
    (np.array([0, 3]), ValueError, r"labels must be in \[0, 3\) for 3 outputs, got min 0, max 3"),
    (np.array([0]), ValueError, r"labels must hold one class label per row of the logits \(2\), got shape \(1,\)"),
    (np.array([0.0, 1.0]), TypeError, r"labels: class labels must be integers, got dtype float64"),
])
def test_softmax_cross_entropy_rejects_bad_labels(labels, error, pattern):
    with pytest.raises(error, match=pattern):
        F.softmax_cross_entropy(np.zeros((2, 3), np.float32), labels)


def test_dropout_keeps_a_seeded_fraction_and_its_gradient_uses_the_same_mask(rng):
    x = rng.standard_normal((64, 32, 12, 12)).astype(np.float32)
    outs = {b: F.dropout(x, 0.25, 2**63 + 5, backend=b) for b in BACKENDS}
    y = outs[BACKENDS[0]]
    for other in outs.values():
        np.testing.assert_array_equal(other, y)  # one mask on every backend
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.005
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    grad = F.dropout(np.ones_like(x), 0.25, 2**63 + 5)
    np.testing.assert_array_equal(grad != 0, kept)
    assert not np.array_equal(F.dropout(x, 0.25, 6) != 0, kept)  # another seed, another mask
    np.testing.assert_array_equal(F.dropout(x, 0.0, 1), x)


@pytest.mark.parametrize("p, seed, pattern", [(1.0, 0, r"dropout p must be in \[0, 1\), got 1.0"),
                                               (0.5, -1, r"dropout seed must be an integer in \[0, 2\*\*64\), got -1"),
                                               (0.5, 1.5, "dropout seed must be an integer")])
def test_dropout_rejects_bad_arguments(p, seed, pattern):
    with pytest.raises(ValueError, match=pattern):
        F.dropout(np.ones(3, np.float32), p, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 3), (7,), (2, 3, 5, 5), (3, 64, 33, 17)])
def test_add_with_and_without_relu_is_the_sum_per_element(backend, dtype, shape, rng):
    """``add`` against a per-element float64 loop: the sum, and through a ReLU with ``relu`` (NaN kept;
    Numba's -0.0 to +0.0 as its relu gives it); non-contiguous inputs taken; serial (small) and parallel (large)
    kernels alike."""
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[::-1]).astype(dtype).T  # not C-contiguous where it has 2 dims or more
    if a.size:
        a.reshape(-1)[:3] = [np.nan, -0.0, 1.0]
        b.flat[:3] = [1.0, -0.0, -1.0]
    for relu in (False, True):
        want = np.array([(max(v, 0.0) if not np.isnan(v) else v) if relu else v
                         for v in (a.astype(np.float64) + b.astype(np.float64)).ravel()]).reshape(shape)
        got = F.add(a, b, relu=relu, backend=backend)
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_array_equal(got, want.astype(dtype))  # one rounding of the float64 sum
        if relu and a.size and backend == "numba":  # (NumPy's maximum(-0.0, 0) may keep the sign)
            assert not np.signbit(got.reshape(-1)[1]) and not np.signbit(got.reshape(-1)[2])


def test_add_refuses_mismatched_arguments(backend):
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"b has shape \(3,\) but a has shape \(2, 3\)"):
        F.add(a, np.zeros(3, np.float32), backend=backend)
    with pytest.raises(TypeError, match="b has dtype float64 but a has dtype float32"):
        F.add(a, np.zeros((2, 3)), backend=backend)
    with pytest.raises(TypeError, match="a must be a float32 or float64 array"):
        F.add(np.zeros((2, 3), np.int32), a, backend=backend)
    with pytest.raises(TypeError, match="relu must be True or False"):
        F.add(a, a, relu="no", backend=backend)
