"""Depthwise convolution's own kernels (kernels/depthwise_*.py and the wide-layout helpers of
kernels/_planes.py): the helpers against their formulas, and the ops in both backends against the
reference loops on the geometries test_grouped_conv.py's random cases rarely reach (strides 3 and
(2, 3), 5x5 and 2x3 kernels, dilation with stride, uneven padding, channel multipliers, batches larger
than one stack of planes), empty batches, and the same weight gradient for any thread count."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn._checks import conv_geometry

from . import reference as ref
from .conftest import BACKENDS

NUMBA = "numba" in BACKENDS
needs_numba = pytest.mark.skipif(not NUMBA, reason="Numba not installed")
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}

# (N, C, H, W, multiplier, kernel, stride, padding, dilation)
CASES = [
    (2, 3, 9, 11, 1, (3, 3), 3, 1, 1),
    (2, 2, 10, 9, 2, (5, 5), (2, 3), (1, 2, 0, 3), 1),
    (1, 3, 11, 8, 1, (2, 3), 2, (0, 1, 2, 0), (2, 1)),
    (3, 2, 7, 13, 1, (3, 3), 2, "same", 1),
    (2, 2, 9, 9, 1, (1, 1), 2, 0, 1),
    (3, 1, 8, 7, 2, (3, 3), 2, 1, 2),
    # stride 1 keeping the width: the kernels' runs over whole planes (depthwise_numba._same_width)
    (2, 3, 9, 11, 2, (3, 3), 1, 1, 1),
    (2, 2, 8, 10, 1, (5, 5), 1, "same", 1),
    (1, 2, 9, 7, 1, (3, 3), 1, "same", 2),
    (2, 2, 7, 9, 1, (2, 3), 1, (1, 1, 0, 1), 1),
    (1, 3, 6, 8, 1, (3, 3), 1, (1, 1, 0, 0), 1),
    (2, 2, 5, 4, 1, (3, 2), 1, (0, 1, 3, 2), 1),  # more zero rows than the kernel reaches: the wide layout
    (2, 2, 6, 7, 1, (3, 3), 1, (0, 2, 1, 1), 1),  # no left padding: the input gradient's left is the kernel's reach
    # stride 2 on rows of whole pairs (even widths, no dilation): depthwise_numba._forward_pairs
    (2, 3, 9, 10, 1, (3, 3), 2, 1, 1),
    (2, 2, 10, 8, 2, (5, 5), 2, (1, 2, 0, 3), 1),
    (1, 3, 11, 8, 1, (2, 3), 2, (0, 1, 2, 0), 1),
    (3, 2, 6, 4, 1, (1, 1), 2, 0, 1),
    (2, 2, 4, 6, 1, (3, 3), 2, (2, 2, 3, 3), 1),  # more padding than the kernel reaches past the plane
    (1, 2, 4, 4, 1, (1, 1), 2, 2, 1),  # an output gradient run longer than the input planes
    (1, 2, 2, 4, 1, (2, 2), 2, (0, 1, 0, 3), 1),
    (1, 2, 2, 2, 1, (1, 1), 2, (3, 0, 0, 0), 1),  # output rows wider than the input's: not by pairs
]
# More samples than one stack of planes holds (kernels/_planes.py), the last stack part-full: too large for
# the reference loops, so against the NumPy backend (which the cases above hold to the reference).
STACKED = [(7, 2, 30, 29, 1, (3, 3), 1, 1, 1), (13, 1, 30, 33, 2, (3, 3), 2, 1, 2),
           (37, 3, 16, 16, 1, (3, 3), 2, 1, 1),  # by pairs: three stacks of 16, 16 and 5, in parallel
           (11, 2, 16, 16, 2, (3, 3), 2, 1, 1),  # by pairs, one part-full stack, serial
           (9, 2, 30, 29, 1, (3, 3), 1, (1, 0, 1, 1), 1),  # stride 1, narrower output: stacked wide planes
           # stride 1 keeping the width, several planes a task (on up to 8 threads): its buffers serve them all
           (40, 3, 9, 11, 2, (3, 3), 1, 1, 1), (40, 3, 9, 11, 1, (3, 3), 1, (1, 1, 0, 2), 1),
           (24, 3, 8, 10, 1, (5, 5), 1, "same", 1)]


def _geometry(x, w, stride, padding, dilation):
    """The reference's ((top, bottom), (left, right)) padding, stride and dilation pairs for a case."""
    geo = conv_geometry(x.shape, w.shape, stride, padding, dilation, x.shape[1])
    return geo.stride, geo.padding, geo.dilation


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_depthwise_conv2d_matches_reference(case, dtype):
    n, c, h, wd, m, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(n * 100 + h)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((c * m, 1) + kernel).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype)
    st, pads, dil = _geometry(x, w, stride, padding, dilation)
    want = ref.conv2d(x, w, b, st, pads, dil, c)
    gy = rng.standard_normal(want.shape).astype(dtype)
    wants = ref.conv2d_backward(gy, x, w, st, pads, dil, c)
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    for backend in BACKENDS:
        y = F.conv2d(x, w, b, backend=backend, **params)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, want, **TOL[dtype])
        for got, expected in zip(F.conv2d_backward(gy, x, w, backend=backend, **params), wants):
            assert got.dtype == dtype and got.flags.c_contiguous
            np.testing.assert_allclose(got, expected, **TOL[dtype])


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STACKED, ids=str)
def test_depthwise_stacks_match_the_numpy_backend(case, dtype):
    n, c, h, wd, m, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((c * m, 1) + kernel).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype)
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    want = F.conv2d(x, w, b, backend="numpy", **params)
    gy = rng.standard_normal(want.shape).astype(dtype)
    np.testing.assert_allclose(F.conv2d(x, w, b, backend="numba", **params), want, **TOL[dtype])
    for got, expected in zip(F.conv2d_backward(gy, x, w, backend="numba", **params),
                             F.conv2d_backward(gy, x, w, backend="numpy", **params)):
        np.testing.assert_allclose(got, expected, **TOL[dtype])


@pytest.mark.parametrize("stride, padding, out_hw", [(2, (1, 0, 2, 1), (5, 4)), (1, 1, (9, 8))])  # by pairs; flat
def test_depthwise_empty_batches(backend, stride, padding, out_hw):
    x = np.zeros((0, 4, 9, 8), np.float32)
    w = np.ones((8, 1, 3, 3), np.float32)
    params = dict(stride=stride, padding=padding, groups=4)
    for op in (F.conv2d, F.conv2d_relu):
        y = op(x, w, np.ones(8, np.float32), backend=backend, **params)
        assert y.shape == (0, 8) + out_hw and y.dtype == np.float32
    gx, gw, gb = F.conv2d_backward(y, x, w, backend=backend, **params)
    assert gx.shape == x.shape and gw.shape == w.shape and not gw.any() and not gb.any()
    gx, gw, gb = F.conv2d_relu_backward(y, y, x, w, backend=backend, **params)
    assert gx.shape == x.shape and gw.shape == w.shape and not gw.any() and not gb.any()


@needs_numba
@pytest.mark.parametrize("kernel, multiplier", [((3, 3), 2), ((5, 5), 1)])
def test_depthwise_flat_kernels_give_the_same_bits_for_any_planes_per_task(monkeypatch, kernel, multiplier):
    """The same-width kernels' tasks take several planes, their buffers made once: any number of planes
    a task (one, a part-full last task, all of them) gives the bits of one plane a task, forward (with
    and without the ReLU) and the input gradient; and so does any thread count."""
    from fastcnn.kernels import depthwise_numba
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 3, 16, 18)).astype(np.float32)  # enough work to run in parallel
    w = rng.standard_normal((3 * multiplier, 1) + kernel).astype(np.float32)
    b = rng.standard_normal(3 * multiplier).astype(np.float32)
    gy = rng.standard_normal((16, 3 * multiplier, 16, 18)).astype(np.float32)
    params = dict(padding="same", groups=3, backend="numba")

    def results():
        return (F.conv2d(x, w, b, **params), F.conv2d_relu(x, w, b, **params), F.conv2d_backward(gy, x, w, **params)[0])
    before = fastcnn.get_num_threads()
    runs = []
    try:
        for per_task, threads in ((1, 1), (7, 1), (1000, 1), (None, fastcnn.threads.max_threads())):
            if per_task is None:
                monkeypatch.undo()
            else:
                monkeypatch.setattr(depthwise_numba, "planes_per_task", lambda planes, k=per_task: k)
            fastcnn.set_num_threads(threads)
            runs.append(results())
    finally:
        fastcnn.set_num_threads(before)
    for run in runs[1:]:
        for a, e in zip(run, runs[0]):
            np.testing.assert_array_equal(a, e)


@needs_numba
@pytest.mark.parametrize("stride", [1, 2])  # same width; by pairs
def test_depthwise_weight_gradient_is_the_same_for_any_thread_count(stride):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 6, 12, 12)).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((37, 6) + (12 // stride,) * 2).astype(np.float32)
    before = fastcnn.get_num_threads()
    results = []
    try:
        for threads in (1, fastcnn.threads.max_threads()):
            fastcnn.set_num_threads(threads)
            results.append(F.conv2d_backward(gy, x, w, stride=stride, padding=1, groups=6, backend="numba"))
    finally:
        fastcnn.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@needs_numba
def test_depthwise_same_width_keeps_inf_out_of_the_neighbouring_rows():
    """The same-width kernels read a neighbouring row's end where a tap's column is padding and select it
    away: an inf there must not turn into NaN (as inf * 0 would); every backend gives the loops' values."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 6))
    x[0, 0, 1, -1] = np.inf  # read as the next row's left padding
    x[1, 1, 3, 0] = -np.inf  # read as the previous row's right padding
    w = rng.standard_normal((2, 1, 3, 3))
    st, pads, dil = _geometry(x, w, 1, 1, 1)
    want = ref.conv2d(x, w, None, st, pads, dil, 2)
    gy = np.zeros_like(want)
    gy[0, 0, 2, -1] = np.inf
    with np.errstate(invalid="ignore"):  # the reference's weight gradient (not compared) meets inf * 0
        wants = ref.conv2d_backward(gy, np.nan_to_num(x), w, st, pads, dil, 2)
    for backend in BACKENDS:
        np.testing.assert_allclose(F.conv2d(x, w, padding=1, groups=2, backend=backend), want)
        got = F.conv2d_backward(gy, np.nan_to_num(x), w, padding=1, groups=2, backend=backend)
        np.testing.assert_allclose(got[0], wants[0])


@pytest.mark.parametrize("padding", [1, (1, 0, 1, 0), (0, 1, 0, 1)])
def test_depthwise_stride_2_keeps_inf_out_of_the_neighbouring_rows(padding):
    """A stride-2 conv on rows of whole pairs reads a neighbouring row's end where a tap's column is
    padding and selects it away: an inf there must not turn into NaN; every backend gives the loops'."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 6, 8))
    x[0, 0, 1, -1] = np.inf
    x[1, 1, 3, 0] = -np.inf
    w = rng.standard_normal((2, 1, 3, 3))
    st, pads, dil = _geometry(x, w, 2, padding, 1)
    want = ref.conv2d(x, w, None, st, pads, dil, 2)
    for backend in BACKENDS:
        np.testing.assert_allclose(F.conv2d(x, w, stride=2, padding=padding, groups=2, backend=backend), want)


# The helpers, called directly (each is a Numba function).

@needs_numba
@pytest.mark.parametrize("sh, sw, top, left", [(1, 1, 0, 0), (1, 1, 2, 1), (2, 2, 1, 1), (3, 2, 0, 3)])
def test_split_phases_writes_each_phase_of_the_padded_plane(sh, sw, top, left):
    from fastcnn.kernels import _planes
    plane = np.random.default_rng(sh).standard_normal((7, 9))
    padded = np.pad(plane, ((top, 2), (left, 1)))
    h2, w2 = -(-padded.shape[0] // sh), -(-padded.shape[1] // sw)
    stride = h2 * w2 + 5
    out = np.zeros(sh * sw * stride)
    _planes.split_phases(out, plane, sh, sw, h2, w2, top, left, stride)
    want = np.zeros_like(out)
    for a in range(sh):
        for b in range(sw):
            phase = padded[a::sh, b::sw]
            block = np.zeros((h2, w2))
            block[: phase.shape[0], : phase.shape[1]] = phase
            want[(a * sw + b) * stride : (a * sw + b) * stride + h2 * w2] = block.ravel()
    np.testing.assert_array_equal(out, want)


@needs_numba
@pytest.mark.parametrize("row_step, col_step, row0, col0", [(1, 1, 0, 0), (2, 2, -1, 1), (3, 2, 2, -3)])
def test_narrow_writes_the_positions_inside_dst(row_step, col_step, row0, col0):
    from fastcnn.kernels import _planes
    width = 6
    src = np.arange(60, dtype=np.float64) + 1
    dst = np.zeros((8, 9))
    _planes.narrow(dst, src, width, row_step, col_step, row0, col0)
    want = np.zeros_like(dst)
    for r in range(10):
        for q in range(width):
            y, x = row0 + r * row_step, col0 + q * col_step
            if 0 <= y < 8 and 0 <= x < 9 and r * width + q < src.size:
                want[y, x] = src[r * width + q]
    np.testing.assert_array_equal(dst, want)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_taps", [1, 3, 4, 8])
def test_gather_and_dot_taps_follow_their_formulas(dtype, n_taps):
    from fastcnn.kernels import _planes
    rng = np.random.default_rng(n_taps)
    n = 37
    src = rng.standard_normal(120).astype(dtype)
    weights = rng.standard_normal(n_taps).astype(dtype)
    offsets = rng.integers(0, src.size - n + 1, n_taps).astype(np.int64)
    acc = rng.standard_normal(n).astype(dtype)
    want = acc + sum(weights[t] * src[offsets[t] : offsets[t] + n] for t in range(n_taps))
    _planes.gather_taps(acc, src, weights, offsets)
    np.testing.assert_allclose(acc, want, **TOL[dtype])
    out = np.ones(n_taps + 1)
    _planes.dot_taps(out, acc, src, offsets)
    want_dots = [1 + acc.astype(np.float64) @ src[o : o + n] for o in offsets]
    np.testing.assert_allclose(out[:n_taps], want_dots, **TOL[dtype])
    assert out[n_taps] == 1
    # With keep: only the kept positions, and a value left out (inf here) is never multiplied in.
    keep = rng.random(n) < 0.6
    kept_reads = {o + p for o in offsets for p in np.flatnonzero(keep)}
    left_out = {o + p for o in offsets for p in np.flatnonzero(~keep)} - kept_reads
    src[sorted(left_out)] = np.inf  # read only where keep is False
    masked = acc.copy()
    _planes.gather_taps(masked, src, weights, offsets, keep)
    want = acc + np.where(keep, sum(weights[t] * np.where(keep, src[o : o + n], 0) for t, o in enumerate(offsets)), 0)
    np.testing.assert_allclose(masked, want, **TOL[dtype])
    out = np.ones(n_taps)
    _planes.dot_taps(out, acc, src, offsets, keep)
    want_dots = [1 + acc[keep].astype(np.float64) @ src[o : o + n][keep] for o in offsets]
    np.testing.assert_allclose(out, want_dots, **TOL[dtype])
