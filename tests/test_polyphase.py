"""Strided convolutions through the polyphase split (fastcnn/kernels/_polyphase.py): the phases' runs
and the tap offsets against their formulas, and the Numba conv built on them against the reference loops."""
import numpy as np
import pytest

import fastcnn.functional as F
from fastcnn.kernels import _polyphase

from . import reference as ref

pytestmark = pytest.mark.skipif("numba" not in F.dispatch.available_backends(), reason="Numba not installed")


@pytest.mark.parametrize("kh, kw, sh, sw", [(3, 3, 2, 2), (5, 4, 3, 2)])
def test_tap_offsets_point_at_each_taps_phase_and_shift(kh, kw, sh, sw):
    run, wq = 1000, 7
    ph, pw = min(sh, kh), min(sw, kw)
    offsets = _polyphase.tap_offsets(2, kh, kw, sh, sw, run, wq)
    for c in range(2):
        for i in range(kh):
            for j in range(kw):
                channel = (c * ph + i % sh) * pw + j % sw
                assert offsets[(c * kh + i) * kw + j] == channel * run + (i // sh) * wq + j // sw


@pytest.mark.parametrize("kh, kw, sh, sw, padding, hw", [
    ((3, 3, 2, 2, ((1, 1), (1, 1)), (7, 9))),
    ((1, 1, 2, 2, ((0, 0), (0, 0)), (5, 6))),
    ((5, 4, 3, 2, ((2, 0), (1, 3)), (8, 7))),
])
def test_phase_runs_read_each_phase_of_the_padded_input(kh, kw, sh, sw, padding, hw, rng):
    from fastcnn.kernels import conv_numba  # needs Numba: imported only when not skipped
    x = rng.standard_normal((2, 3) + hw).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0)) + padding)
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    runs, _, (hq, wq, shift) = conv_numba._phase_taps(x, padding, kh, kw, sh, sw, oh, ow)
    ph, pw, _, _, _, _ = _polyphase.phase_shape(kh, kw, sh, sw, oh, ow)
    assert shift == 0 and runs.shape[0] == 3 * ph * pw
    planes = runs[:, : 2 * hq * wq].reshape(3, ph, pw, 2, hq, wq)
    for pi in range(ph):
        for pj in range(pw):
            for u in range(hq):
                for v in range(wq):
                    a, b = u * sh + pi, v * sw + pj
                    want = xp[:, :, a, b] if a < xp.shape[2] and b < xp.shape[3] else 0
                    np.testing.assert_array_equal(planes[:, pi, pj, :, u, v].T, want)
    assert not runs[:, 2 * hq * wq :].any()  # the tail the shifted reads run into is zero


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in, c_out, k, stride, padding, hw", [
    (5, 9, 3, 2, 1, (9, 8)),     # more than one register tile of output channels, odd sizes
    (3, 16, 7, 2, 3, (11, 11)),  # a stem: 7x7, stride 2
    (6, 4, 1, 2, 0, (7, 6)),     # 1x1 stride 2: one phase
    (4, 3, (3, 5), (3, 2), (1, 2), (10, 9)),
    (2, 5, 3, 2, (1, 0, 2, 0), (9, 10)),   # (left, right, top, bottom): padding on some sides only
    (3, 4, 2, 3, (0, 2, 1, 1), (8, 11)),   # kernel smaller than the stride: some positions unread
])
def test_strided_numba_conv_matches_the_reference(c_in, c_out, k, stride, padding, hw, dtype, rng):
    x = rng.standard_normal((3, c_in) + hw).astype(dtype)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    st = (stride, stride) if isinstance(stride, int) else stride
    pd = (padding, padding) if isinstance(padding, int) else padding
    pads = ((pd[0], pd[0]), (pd[1], pd[1])) if len(pd) == 2 else ((pd[2], pd[3]), (pd[0], pd[1]))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = F.conv2d(x, w, b, stride=st, padding=pd, backend="numba")
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, st, pads), **tol)
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = F.conv2d_backward(gy, x, w, stride=st, padding=pd, backend="numba")
    for a, want in zip(got, ref.conv2d_backward(gy, x, w, st, pads)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, want, **tol)
