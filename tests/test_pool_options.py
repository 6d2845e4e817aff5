"""Pooling options (max-pool dilation and ceil_mode; avg-pool ceil_mode, count_include_pad,
divisor_override) and global pooling: every backend against the naive loops, finite differences,
PyTorch when importable, empty batches and bad arguments."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
import fastcnn.functional as F
from fastcnn import layers as L

from . import reference as ref
from .conftest import BACKENDS

try:
    import torch
except ImportError:
    torch = None

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def pool_cases(draw, dilation=True):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    lo_h, lo_w = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
    h, w = draw(st.integers(lo_h, lo_h + 6)), draw(st.integers(lo_w, lo_w + 6))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), kernel=(kh, kw),
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=(ph, pw), dilation=(dh, dw),
                ceil_mode=draw(st.booleans()), dtype=draw(st.sampled_from([np.float32, np.float64])),
                ties=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def _x(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    if case["ties"]:
        x = np.maximum(np.round(x), 0)  # ties, as after a ReLU
    return x.astype(case["dtype"])


def _refused(fn):
    """Run ``fn``; True if it refused the geometry with a ValueError (as PyTorch would refuse it)."""
    try:
        fn()
    except ValueError as exc:
        assert "window" in str(exc) or "larger than the padded input" in str(exc), exc
        return True
    return False


@SETTINGS
@given(case=pool_cases())
def test_max_pool2d_options_match_reference(case):
    x = _x(case)
    args = (case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    if _refused(lambda: F.max_pool2d(x, *args, backend="numpy")):
        return
    want_y, want_idx = ref.max_pool2d(x, *args[:3], dilation=case["dilation"], ceil_mode=case["ceil_mode"])
    gy = np.random.default_rng(case["seed"] + 1).standard_normal(want_y.shape).astype(case["dtype"])
    want_gx = np.zeros(x.size)
    np.add.at(want_gx.reshape(x.shape[0] * x.shape[1], -1),
              (np.arange(x.shape[0] * x.shape[1])[:, None], want_idx.reshape(x.shape[0] * x.shape[1], -1)),
              gy.reshape(x.shape[0] * x.shape[1], -1))
    for backend in BACKENDS:
        y, idx = F.max_pool2d(x, *args, backend=backend)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(idx, want_idx)
        gx = F.max_pool2d_backward(gy, idx, x.shape, backend=backend)
        np.testing.assert_allclose(gx, want_gx.reshape(x.shape), rtol=1e-6, atol=1e-6)


@SETTINGS
@given(case=pool_cases(dilation=False), include=st.booleans(), divisor=st.sampled_from([None, 1, 3]))
def test_avg_pool2d_options_match_reference_and_finite_differences(case, include, divisor):
    x = _x(case)
    args = (case["kernel"], case["stride"], case["padding"], case["ceil_mode"], include, divisor)
    if _refused(lambda: F.avg_pool2d(x, *args, backend="numpy")):
        return
    want = ref.avg_pool2d(x, *args)
    gy = np.random.default_rng(case["seed"] + 1).standard_normal(want.shape)
    x64 = x.astype(np.float64)
    numeric = ref.numeric_grad(lambda: float((ref.avg_pool2d(x64, *args) * gy).sum()), x64)
    tol = dict(rtol=2e-5, atol=2e-6) if case["dtype"] == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for backend in BACKENDS:
        y = F.avg_pool2d(x, *args, backend=backend)
        assert y.dtype == case["dtype"]
        np.testing.assert_allclose(y, want, **tol)
        gx = F.avg_pool2d_backward(gy.astype(case["dtype"]), x.shape, *args, backend=backend)
        np.testing.assert_allclose(gx, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil", [
    ((2, 3, 7, 8), 3, 2, 1, 1, True), ((2, 3, 7, 8), 2, 2, 0, 1, True), ((1, 2, 9, 9), 3, 2, 1, 2, False),
    ((1, 2, 10, 7), (2, 3), (3, 2), (1, 1), (2, 1), True), ((2, 2, 5, 5), 2, 3, 1, 1, True),
])
def test_pool_options_match_pytorch(shape, kernel, stride, padding, dilation, ceil, backend):
    x = np.maximum(np.round(np.random.default_rng(0).standard_normal(shape) * 2), 0)
    y, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil, backend=backend)
    ty, tidx = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding, dilation, ceil,
                                              return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    for include in (True, False):
        for divisor in (None, 5):
            xt = torch.from_numpy(x).requires_grad_()
            out = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, ceil, include, divisor)
            gy = np.random.default_rng(1).standard_normal(out.shape)
            out.backward(torch.from_numpy(gy))
            args = (kernel, stride, padding, ceil, include, divisor)
            np.testing.assert_allclose(F.avg_pool2d(x, *args, backend=backend), out.detach().numpy(), rtol=1e-12)
            np.testing.assert_allclose(F.avg_pool2d_backward(gy, x.shape, *args, backend=backend), xt.grad.numpy(),
                                       rtol=1e-12)


def test_pool_layers_fuse_save_and_describe(tmp_path):
    model = fastcnn.Sequential([L.Conv2D(1, 2, 3, rng=0), L.ReLU(), L.MaxPool2D(2, ceil_mode=True),
                                L.AvgPool2D(2, ceil_mode=True, count_include_pad=False, divisor_override=3),
                                L.MaxPool2D(3, 1, 1, dilation=2), L.Flatten()], input_shape=(1, 13, 13))
    x = np.random.default_rng(2).standard_normal((2, 1, 13, 13)).astype(np.float32)
    steps = model.steps()
    assert type(steps[0]).__name__ == "ConvMaxPool"
    conv = model.layers[0].forward(x)
    pooled, _ = F.max_pool2d(np.maximum(conv, 0), 2, ceil_mode=True)
    np.testing.assert_allclose(steps[0].forward(x), pooled, rtol=1e-6)
    assert model.output_shapes()[2:4] == [(2, 6, 6), (2, 3, 3)]
    assert "ceil_mode True" in model.layers[2].describe() and "dilation [2, 2]" in model.layers[4].describe()
    model.save(tmp_path / "m.npz")
    loaded = fastcnn.load_model(tmp_path / "m.npz")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_pool_bad_arguments():
    x = np.zeros((1, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match="holds no input element"):
        F.max_pool2d(np.zeros((1, 1, 2, 2), np.float32), 2, 1, 1, dilation=3)  # rows -1 and 2 of 2
    with pytest.raises(ValueError, match="padding"):
        F.avg_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="spanning"):
        F.max_pool2d(x, 3, dilation=3)
    with pytest.raises(TypeError, match="ceil_mode"):
        F.max_pool2d(x, 2, ceil_mode="yes")
    with pytest.raises(TypeError, match="count_include_pad"):
        F.avg_pool2d(x, 2, count_include_pad=None)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="divisor_override"):
            F.avg_pool2d(x, 2, divisor_override=bad)
    with pytest.raises(ValueError, match="dilation"):
        L.MaxPool2D(2, dilation=0)


def test_pool_options_take_empty_batches(backend):
    x = np.zeros((0, 2, 5, 5), np.float32)
    y, idx = F.max_pool2d(x, 2, ceil_mode=True, dilation=1, backend=backend)
    assert y.shape == (0, 2, 3, 3)
    assert F.max_pool2d_backward(y, idx, x.shape, backend=backend).shape == x.shape
    y = F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False, backend=backend)
    assert F.avg_pool2d_backward(y, x.shape, 2, ceil_mode=True, count_include_pad=False, backend=backend).shape == x.shape
    y = F.avg_pool2d(x, 5, backend=backend)  # one window, the whole plane
    assert y.shape == (0, 2, 1, 1) and F.avg_pool2d_backward(y, x.shape, 5, backend=backend).shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_pools_match_reference_gradients_and_pytorch(dtype, backend):
    rng = np.random.default_rng(3)
    x = np.maximum(np.round(rng.standard_normal((3, 4, 5, 6)) * 2), 0).astype(dtype)  # ties, zero planes
    x[0, 0, 1, 2] = np.nan
    gy = rng.standard_normal((3, 4)).astype(dtype)
    y = F.global_avg_pool2d(x, backend=backend)
    assert y.shape == (3, 4) and y.dtype == dtype
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(F.global_avg_pool2d_backward(gy, x.shape, backend=backend),
                               np.broadcast_to(gy[:, :, None, None] / 30, x.shape), rtol=1e-6)
    m, idx = F.global_max_pool2d(x, backend=backend)
    want_y, want_idx = ref.max_pool2d(x, (5, 6), (5, 6), (0, 0))
    np.testing.assert_array_equal(m, want_y[:, :, 0, 0])
    np.testing.assert_array_equal(idx, want_idx[:, :, 0, 0])
    gx = F.global_max_pool2d_backward(gy, idx, x.shape, backend=backend)
    want_gx = np.zeros((12, 30), dtype)
    want_gx[np.arange(12), want_idx.ravel()] = gy.ravel()
    np.testing.assert_array_equal(gx, want_gx.reshape(x.shape))
    if torch is not None:
        x = np.nan_to_num(x)
        np.testing.assert_allclose(F.global_avg_pool2d(x, backend=backend),
                                   torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy()[:, :, 0, 0],
                                   rtol=1e-6)
        np.testing.assert_array_equal(F.global_max_pool2d(x, backend=backend)[0],
                                      torch.amax(torch.from_numpy(x), dim=(2, 3)).numpy())


@pytest.mark.parametrize("shape", [(2, 3, 17, 19), (8, 16, 16, 16)])  # odd planes; enough work for threads
def test_global_pool_kernels_on_whole_planes(shape, backend):
    """The global pools' own kernels on planes longer than a vector, in one task and in many: means against
    float64, the maxima and their indices against the naive loop with ties, several NaNs in a plane (the
    last wins), infinities and constant planes; the gradients exactly."""
    rng = np.random.default_rng(8)
    x = np.round(rng.standard_normal(shape) * 3).astype(np.float32)  # many ties
    x[0, 0].flat[[3, 40, 100]] = np.nan
    x[0, 1] = -np.inf
    x[1, 0] = 7
    x[1, 1].flat[[0, -1]] = np.inf
    x[1, 2].flat[-1] = np.nan
    planes = x.reshape(shape[0] * shape[1], -1)
    finite = np.where(np.isfinite(planes), planes, 0).astype(np.float64)
    np.testing.assert_allclose(F.global_avg_pool2d(np.nan_to_num(x, posinf=0, neginf=0), backend=backend),
                               finite.mean(axis=1).reshape(shape[:2]), rtol=2e-6, atol=1e-6)
    mean = F.global_avg_pool2d(x, backend=backend)
    assert np.isnan(mean[0, 0]) and mean[0, 1] == -np.inf and mean[1, 0] == 7 and mean[1, 1] == np.inf
    m, idx = F.global_max_pool2d(x, backend=backend)
    want_y, want_idx = ref.max_pool2d(x, shape[2:], shape[2:], (0, 0))
    np.testing.assert_array_equal(m, want_y[:, :, 0, 0])
    np.testing.assert_array_equal(idx, want_idx[:, :, 0, 0])
    assert idx[0, 0] == 100 and idx[0, 1] == 0 and idx[1, 0] == 0 and idx[1, 1] == 0
    gy = rng.standard_normal(shape[:2]).astype(np.float32)
    want = np.zeros(planes.shape, np.float32)
    want[np.arange(len(planes)), idx.ravel()] = gy.ravel()
    np.testing.assert_array_equal(F.global_max_pool2d_backward(gy, idx, shape, backend=backend),
                                  want.reshape(shape))
    grad = F.global_avg_pool2d_backward(gy, shape, backend=backend)
    np.testing.assert_allclose(grad, np.broadcast_to(gy[:, :, None, None] / (shape[2] * shape[3]), shape),
                               rtol=1e-6)
    assert (grad == grad[:, :, :1, :1]).all()  # one value per plane
    with pytest.raises(ValueError, match="outside"):
        F.global_max_pool2d_backward(gy, idx + shape[2] * shape[3], shape, backend=backend)


def test_global_pool_layers_empty_batches_and_bad_input():
    for layer in (L.GlobalAvgPool2D(), L.GlobalMaxPool2D()):
        x = np.random.default_rng(4).standard_normal((2, 3, 4, 4))
        g = np.random.default_rng(5).standard_normal((2, 3))
        layer.forward(x, training=True)
        gx = layer.backward(g)
        np.testing.assert_allclose(gx, ref.numeric_grad(lambda: float((layer.forward(x) * g).sum()), x), atol=1e-8)
        empty = np.zeros((0, 3, 4, 4), np.float32)
        assert layer.forward(empty, training=True).shape == (0, 3)
        assert layer.backward(np.zeros((0, 3), np.float32)).shape == empty.shape
        assert layer.output_shape((3, 4, 4)) == (3,)
        with pytest.raises(ValueError, match="H, W >= 1"):
            layer.forward(np.zeros((2, 3, 0, 4), np.float32))
        with pytest.raises(ValueError):
            layer.output_shape((3, 4))


def test_empty_window_check_is_the_loops_and_takes_no_time_on_huge_inputs():
    """Which pooling window first holds no input element, against the loop over every window and tap
    (small axes, every parameter, dilation wider than the input included); and a file's claim of a huge
    input or padding is answered at once (the loop took as long as the input is long: an importer hang)."""
    from fastcnn._checks import _first_empty_window, pool_out_size

    def loops(size, k, s, p, d, o):
        return next((r for r in range(o) if not any(0 <= r * s - p + i * d < size for i in range(k))), None)

    checked = 0
    for size in range(1, 9):
        for k in range(1, 6):
            for d in range(1, 5):
                for p in range(k // 2 + 1):
                    if d * (k - 1) + 1 > size + 2 * p:
                        continue
                    for s in range(1, 5):
                        for ceil in (False, True):
                            o = pool_out_size(size, k, s, p, d, ceil)
                            assert _first_empty_window(size, k, s, p, d, o) == loops(size, k, s, p, d, o)
                            checked += 1
    assert checked > 1000
    huge = 2**40
    geo = fastcnn._checks.pool_geometry((1, 1, huge, huge), 2, 1, 0)
    assert geo.out_hw == (huge - 1, huge - 1)
    geo = fastcnn._checks.pool_geometry((1, 1, 3, 3), 2**41, 1, 2**40)
    assert geo.out_hw == (4, 4)


def test_whole_windows_is_the_scales_test_and_takes_no_time_on_huge_inputs():
    """Whether every average-pool window is whole, against the scales array it summarises (every small
    geometry, ceil mode, with and without the padding counted); and answered at once for a file's
    claim of a huge plane, whose scales array would not fit in memory."""
    from fastcnn._checks import avg_pool_scales, pool_geometry, whole_windows

    seen = set()
    for size in range(1, 8):
        for k in range(1, 5):
            for p in range(k // 2 + 1):
                for s in range(1, 4):
                    for ceil in (0, 1):
                        if k > size + 2 * p:
                            continue
                        for other in ((size, k, s, p), (6, 2, 2, 0)):  # the same on both axes, or a plain width
                            hw = (size, other[0])
                            geo = pool_geometry((1, 1) + hw, (k, other[1]), (s, other[2]), (p, other[3]), 1, ceil)
                            for count_pad in (False, True):
                                scales = avg_pool_scales(geo, hw, count_pad, None, np.float64)
                                expected = bool(np.all(scales == 1.0 / (k * other[1])))
                                assert whole_windows(geo, hw, count_pad) == expected, (hw, k, p, s, ceil, count_pad, other)
                                seen.add((count_pad, expected))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
    huge = 2**40
    geo = pool_geometry((1, 1, huge, huge), 2, 2, 0)
    assert whole_windows(geo, (huge, huge), False)
    geo = pool_geometry((1, 1, huge + 1, huge), 2, 2, 0, 1, 1)  # ceil mode: the last row's windows are cut
    assert not whole_windows(geo, (huge + 1, huge), True)
