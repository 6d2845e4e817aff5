"""Conv2D's forward pass, weight gradient and (stride 1) input gradient with output channels in vector
lanes (fastcnn/kernels/conv_channels.py): against the reference loops for any stride, dilation, padding
and channel count, at batch 1 (tasks split by channel blocks and positions) and larger, and which convs
the Numba backend sends there."""
import numpy as np
import pytest

import fastcnn
import fastcnn.functional as F
from fastcnn._checks import conv_geometry

from . import reference as ref

pytestmark = pytest.mark.skipif("numba" not in F.dispatch.available_backends(), reason="Numba not installed")

TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-11, atol=1e-11)}


def _case(rng, n, c_in, c_out, hw, kernel, stride, padding, dilation, dtype):
    x = rng.standard_normal((n, c_in) + hw).astype(dtype)
    w = rng.standard_normal((c_out, c_in) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b, conv_geometry(x.shape, w.shape, stride, padding, dilation)


CASES = pytest.mark.parametrize("n, c_in, c_out, hw, kernel, stride, padding, dilation", [
    (3, 5, 64, (9, 8), (3, 3), (2, 2), 1, (1, 1)),          # one whole block of channels
    (1, 4, 130, (11, 10), (3, 3), (2, 2), 1, (1, 1)),       # three blocks, the last nearly empty; batch 1
    (2, 3, 20, (10, 13), (5, 3), (3, 2), (2, 0, 1, 1), (1, 1)),  # (left, right, top, bottom) padding
    (2, 6, 33, (12, 12), (3, 3), (2, 2), 2, (2, 2)),        # strided and dilated
    (1, 2, 7, (3, 4), (3, 3), (2, 3), 1, (1, 1)),           # 2x2 outputs: fewer positions than a tile
    (2, 1, 40, (9, 9), (2, 2), (2, 2), 1, (2, 2)),          # 4 taps: fewer than a weight-gradient tile
    (1, 3, 70, (30, 30), (3, 3), (2, 2), "same", (1, 1)),   # batch 1 split into chunks of positions
    (4, 16, 48, (16, 16), (1, 1), (2, 2), 0, (1, 1)),       # 1x1, stride 2
    (11, 4, 64, (6, 6), (3, 3), (1, 1), 1, (1, 1)),         # stride 1; several samples a weight-gradient tile
    (2, 8, 32, (17, 17), (3, 3), (2, 2), 1, (1, 1)),        # two blocks of one vector (float32; float64: one of four)
    (1, 3, 16, (3, 5), (3, 3), (1, 1), 1, (1, 1)),          # one such block (two in float64), fewer positions
                                                            # than its tile
    (1, 3, 16, (40, 40), (3, 3), (1, 1), 1, (1, 1)),        # the same at batch 1 split into chunks of positions
    # passes of _PASS_BYTES of packed weights (float32): 72 taps in AVX-512's blocks of four vectors, 288 in its
    # blocks of one; 288 in AVX2's blocks of two, 576 in its blocks of one
    (2, 20, 64, (9, 9), (3, 3), (2, 2), 1, (1, 1)),         # 180 taps: AVX-512 passes of 72, 72 and 36 taps
    (2, 40, 16, (7, 7), (3, 3), (1, 1), 1, (1, 1)),         # 360 taps in blocks of one vector: AVX-512 288 and 72
    (1, 20, 64, (40, 40), (3, 3), (2, 2), 1, (1, 1)),       # 180 taps, batch 1 split into chunks of positions
    (2, 40, 64, (9, 9), (3, 3), (2, 2), 1, (1, 1)),         # 360 taps: AVX2 passes of 288 and 72
    (2, 70, 16, (7, 7), (3, 3), (1, 1), 1, (1, 1)),         # 630 taps in blocks of one vector: AVX2 576 and 54
])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@CASES
def test_channels_conv_matches_the_reference(n, c_in, c_out, hw, kernel, stride, padding, dilation, relu, dtype):
    from fastcnn.kernels import conv_channels
    rng = np.random.default_rng(c_out)
    x, w, b, geo = _case(rng, n, c_in, c_out, hw, kernel, stride, padding, dilation, dtype)
    want = ref.conv2d(x, w, b, geo.stride, geo.padding, geo.dilation)
    if relu:
        want = np.maximum(want, 0)
    y = np.full((n, c_out) + geo.out_hw, np.nan, dtype)  # every value must be written
    got = conv_channels.conv2d_channels_forward(x, w, b, geo, relu, y)
    assert got is y
    np.testing.assert_allclose(y, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gated", [False, True])
@CASES
def test_channels_weight_gradient_matches_the_reference(n, c_in, c_out, hw, kernel, stride, padding, dilation, gated,
                                                        dtype):
    from fastcnn.kernels import conv_channels
    rng = np.random.default_rng(c_out + 1)
    x, w, _, geo = _case(rng, n, c_in, c_out, hw, kernel, stride, padding, dilation, dtype)
    gy = rng.standard_normal((n, c_out) + geo.out_hw).astype(dtype)
    gate = np.maximum(rng.standard_normal(gy.shape), 0).astype(dtype) if gated else None
    _, want_w, want_b = ref.conv2d_backward(gy * (gate > 0) if gated else gy, x, w, geo.stride, geo.padding,
                                            geo.dilation)
    grad_w, grad_b = conv_channels.conv2d_channels_grad_weight(gy, gate, x, geo)
    assert grad_w.dtype == grad_b.dtype == dtype and grad_w.shape == w.shape and grad_w.flags.c_contiguous
    np.testing.assert_allclose(grad_w, want_w, **TOL[dtype])
    np.testing.assert_allclose(grad_b, want_b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c_in, c_out, hw, kernel, padding, dilation", [
    (3, 64, 16, (8, 8), (3, 3), 1, (1, 1)),             # one whole block of input channels, "same"
    (1, 130, 5, (7, 9), (3, 3), 1, (1, 1)),             # three blocks, the last nearly empty; batch 1
    (2, 64, 8, (10, 11), (5, 3), (2, 0, 1, 1), (1, 1)),  # (left, right, top, bottom) padding
    (2, 70, 6, (12, 12), (3, 3), 2, (2, 2)),            # dilated
    (2, 64, 3, (6, 6), (3, 3), 0, (1, 1)),              # no padding: the gradient padded by the whole reach
    (2, 48, 4, (3, 2), (3, 3), 1, (1, 1)),              # 3x2 planes: fewer positions than a tile
    (2, 32, 8, (8, 8), (3, 3), 1, (1, 1)),              # two blocks of one vector (float32)
    (2, 12, 5, (9, 9), (3, 3), 1, (1, 1)),              # blocks of one vector in both dtypes, the last partly empty
    (1, 20, 4, (4, 5), (3, 3), 1, (1, 1)),              # blocks of one vector, the last nearly empty (float32)
])
def test_channels_input_gradient_matches_the_reference(n, c_in, c_out, hw, kernel, padding, dilation, dtype):
    from fastcnn.kernels import conv_channels
    rng = np.random.default_rng(c_in)
    x, w, _, geo = _case(rng, n, c_in, c_out, hw, kernel, (1, 1), padding, dilation, dtype)
    gy = rng.standard_normal((n, c_out) + geo.out_hw).astype(dtype)
    want, _, _ = ref.conv2d_backward(gy, x, w, geo.stride, geo.padding, geo.dilation)
    got = conv_channels.conv2d_channels_grad_input(gy, None, w, geo)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("n, c_in, c_out, hw, kernel, stride, padding", [
    (2, 16, 8, (11, 10), (3, 3), (2, 2), 1),             # a block of one vector (float32), odd planes
    (1, 70, 5, (16, 16), (3, 3), (2, 2), 1),             # blocks of four, the last nearly empty; batch 1
    (2, 20, 6, (10, 13), (5, 3), (3, 2), (2, 0, 1, 1)),  # (left, right, top, bottom) padding, strides 3 and 2
    (2, 9, 4, (12, 12), (2, 2), (3, 3), 1),              # a kernel smaller than the stride: phases no tap reaches
    (3, 3, 5, (7, 6), (1, 1), (2, 2), 1),                # a padded 1x1 conv
    (2, 64, 7, (5, 5), (3, 3), (2, 2), 0),               # 2x2 outputs: phases of fewer positions than a tile
    (2, 6, 5, (10, 10), (3, 3), (2, 2), 0),              # a last row and column that no output reads
    (2, 6, 5, (9, 9), (3, 3), (2, 2), 3),                # padding wider than the kernel reaches
    (1, 4, 3, (0, 6), (2, 2), (2, 2), 1),                # no input rows: nothing to write
    (2, 40, 24, (12, 12), (3, 3), (2, 2), 1),            # 96 taps a phase in blocks of four: passes of 72 and 24
    (2, 16, 80, (10, 10), (3, 3), (2, 2), 1),            # 320 in blocks of one vector (both dtypes): 288 and 32
    (2, 40, 80, (10, 10), (3, 3), (2, 2), 1),            # 320 in AVX2's blocks of two vectors: 288 and 32
    (2, 8, 160, (8, 8), (3, 3), (2, 2), 1),              # 640 in AVX2's blocks of one vector: 576 and 64
    (2, 40, 24, (13, 13), (3, 3), (2, 2), 0),            # 96 taps, 49 positions a phase: a part-padded last tile
])
def test_strided_input_gradient_matches_the_reference(n, c_in, c_out, hw, kernel, stride, padding, gated, dtype):
    from fastcnn.kernels import conv_channels
    rng = np.random.default_rng(c_in + c_out)
    x, w, _, geo = _case(rng, n, c_in, c_out, hw, kernel, stride, padding, (1, 1), dtype)
    gy = rng.standard_normal((n, c_out) + geo.out_hw).astype(dtype)
    gate = np.maximum(rng.standard_normal(gy.shape), 0).astype(dtype) if gated else None
    want, _, _ = ref.conv2d_backward(gy * (gate > 0) if gated else gy, x, w, geo.stride, geo.padding, geo.dilation)
    got = conv_channels.conv2d_channels_grad_input(gy, gate, w, geo)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, want, **TOL[dtype])


def test_input_gradients_it_takes_run_there_through_the_numba_backend(monkeypatch):
    """64 -> 32 channels on 16x16 at batch 4 (the padded planes 1.27 times the output): the input gradient
    of conv2d_backward and conv2d_relu_backward (gated) runs here and equals the reference's; with 8
    input channels (half a block), or padding wider than the kernel reaches, it does not; with a
    stride it does (by phases), but not with a stride and a dilation. (Winograd's kernels, which take
    such 3x3 convs first where they have 32 channels or more, are out of the way here.)"""
    from fastcnn.kernels import conv_channels, winograd
    monkeypatch.setattr(fastcnn.kernels.jit, "num_threads", lambda: 2)
    monkeypatch.setattr(winograd, "takes", lambda *args: False)
    rng = np.random.default_rng(8)
    x, w, b, geo = _case(rng, 4, 64, 32, (16, 16), (3, 3), (1, 1), 1, (1, 1), np.float32)
    assert conv_channels.takes(x.shape, w.shape, geo, "input_gradient")
    half = (4, 8, 16, 16)  # 8 input channels: half a block
    assert not conv_channels.takes(half, (32, 8, 3, 3), conv_geometry(half, (32, 8, 3, 3), 1, 1, 1), "input_gradient")
    assert not conv_channels.takes(x.shape, w.shape, conv_geometry(x.shape, w.shape, 1, 3, 1), "input_gradient")
    assert conv_channels.takes(x.shape, w.shape, conv_geometry(x.shape, w.shape, 2, 1, 1), "input_gradient")
    assert not conv_channels.takes(x.shape, w.shape, conv_geometry(x.shape, w.shape, 2, 1, 2), "input_gradient")
    w5 = (32, 64, 5, 5)  # larger kernels were not measured
    assert not conv_channels.takes(x.shape, w5, conv_geometry(x.shape, w5, 1, 2, 1), "input_gradient")
    with pytest.raises(ValueError, match="part must be one of"):
        conv_channels.takes(x.shape, w.shape, geo, "backward")
    calls = []
    real = conv_channels.conv2d_channels_grad_input
    monkeypatch.setattr(conv_channels, "conv2d_channels_grad_input", lambda *args: calls.append(1) or real(*args))
    y = F.conv2d_relu(x, w, b, padding=1, backend="numba")
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx, _, _ = F.conv2d_backward(gy, x, w, padding=1, backend="numba")
    np.testing.assert_allclose(gx, ref.conv2d_backward(gy, x, w, (1, 1), geo.padding, (1, 1))[0], **TOL[np.float32])
    gx, _, _ = F.conv2d_relu_backward(gy, y, x, w, padding=1, backend="numba")
    want = ref.conv2d_backward(np.where(y > 0, gy, 0), x, w, (1, 1), geo.padding, (1, 1))[0]
    np.testing.assert_allclose(gx, want, **TOL[np.float32])
    assert calls == [1, 1]


def test_transposed_conv_with_output_padding_takes_its_gradient_path(monkeypatch):
    """A stride-1, dilation-2 transposed conv with ``output_padding`` 1 and 64 output channels is the input
    gradient of a conv whose input has a row and a column no output reads: it runs here and equals the
    scatter loops, its last row and column the bias alone."""
    from fastcnn.kernels import conv_channels
    from .test_conv_transpose import naive_conv_transpose2d
    monkeypatch.setattr(fastcnn.kernels.jit, "num_threads", lambda: 2)
    calls = []
    real = conv_channels.conv2d_channels_grad_input
    monkeypatch.setattr(conv_channels, "conv2d_channels_grad_input", lambda *args: calls.append(1) or real(*args))
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((4, 8, 8, 8)), rng.standard_normal((8, 64, 3, 3)), rng.standard_normal(64)
    y = F.conv_transpose2d(x, w, b, 1, 0, 1, 1, 2, backend="numba")
    assert y.shape == (4, 64, 13, 13) and calls == [1]
    np.testing.assert_allclose(y, naive_conv_transpose2d(x, w, b, (1, 1), (0, 0), (1, 1), 1, (2, 2)), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(y[:, :, -1, :], np.broadcast_to(b[:, None], (4, 64, 13)), rtol=1e-12)
    np.testing.assert_allclose(y[:, :, :, -1], np.broadcast_to(b[:, None], (4, 64, 13)), rtol=1e-12)


@pytest.mark.parametrize("c_out", [96, 32, 16])  # blocks of CHANNEL_VECTORS vectors; of one (32: two on AVX2)
def test_channels_conv_is_the_same_for_any_thread_count(c_out):
    from fastcnn.kernels import conv_channels
    rng = np.random.default_rng(3)
    before = fastcnn.get_num_threads()
    results = []
    try:
        for n in (1, 6):
            x, w, b, geo = _case(rng, n, 8, c_out, (14, 14), (3, 3), (2, 2), 1, (1, 1), np.float32)
            gy = rng.standard_normal((n, c_out) + geo.out_hw).astype(np.float32)
            for threads in (1, fastcnn.threads.max_threads()):
                fastcnn.set_num_threads(threads)
                y = np.empty((n, c_out) + geo.out_hw, np.float32)
                results.append((conv_channels.conv2d_channels_forward(x, w, b, geo, False, y),
                                conv_channels.conv2d_channels_grad_input(gy, None, w, geo))
                               + conv_channels.conv2d_channels_grad_weight(gy, None, x, geo))
    finally:
        fastcnn.set_num_threads(before)
    for one, many in zip(results[::2], results[1::2]):
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)


def test_strided_convs_it_takes_run_there_through_the_numba_backend(monkeypatch):
    """The forward pass, the weight gradient (alone, and after a max-pool's gradient) and the input
    gradient as the op calls them."""
    from fastcnn.kernels import _tiles, conv_channels
    rng = np.random.default_rng(4)
    x, w, b, geo = _case(rng, 8, 16, 64, (16, 16), (3, 3), (2, 2), 1, (1, 1), np.float32)
    taken = {"strided 64": conv_channels.takes(x.shape, w.shape, geo),
             "strided 32": conv_channels.takes(x.shape, (32, 16, 3, 3), geo),  # two blocks of one vector
             "strided 8": conv_channels.takes(x.shape, (8, 16, 3, 3), geo),  # half a block (AVX2: a whole one)
             "dilated 8": conv_channels.takes(x.shape, (8, 16, 3, 3), geo._replace(dilation=(2, 2))),
             "stride 1 on 16x16": conv_channels.takes(x.shape, w.shape, conv_geometry(x.shape, w.shape, 1, 1, 1))}
    one_task = fastcnn.get_num_threads() <= 8
    assert taken == {"strided 64": one_task, "strided 32": one_task, "strided 8": one_task and _tiles.lanes(4) == 8,
                     "dilated 8": True,
                     "stride 1 on 16x16": False}
    assert conv_channels.takes(x.shape, w.shape, geo, "weight_gradient")
    calls = []
    for name in ("conv2d_channels_forward", "conv2d_channels_grad_weight", "conv2d_channels_grad_input"):
        real = getattr(conv_channels, name)
        monkeypatch.setattr(conv_channels, name, lambda *args, real=real, name=name: calls.append(name) or real(*args))
    for relu in (False, True):
        got = F.conv2d(x, w, b, stride=2, padding=1, backend="numba") if not relu else \
            F.conv2d_relu(x, w, b, stride=2, padding=1, backend="numba")
        want = ref.conv2d(x, w, b, geo.stride, geo.padding, geo.dilation)
        np.testing.assert_allclose(got, np.maximum(want, 0) if relu else want, **TOL[np.float32])
    gy = rng.standard_normal(want.shape).astype(np.float32)
    want_x, want_w, want_b = ref.conv2d_backward(gy, x, w, geo.stride, geo.padding, geo.dilation)
    grad_x, grad_w, grad_b = F.conv2d_backward(gy, x, w, stride=2, padding=1, backend="numba")
    np.testing.assert_allclose(grad_x, want_x, **TOL[np.float32])
    np.testing.assert_allclose(grad_w, want_w, **TOL[np.float32])
    np.testing.assert_allclose(grad_b, want_b, **TOL[np.float32])
    assert calls == ["conv2d_channels_forward"] * 2 * taken["strided 64"] + ["conv2d_channels_grad_weight",
                                                                             "conv2d_channels_grad_input"]


@pytest.mark.parametrize("policy", ["numba", "plan"])
def test_stride_1_forward_passes_on_small_planes_run_there(monkeypatch, policy):
    """64 -> 64 channels on 8x8 (the padded planes 1.56 times the output) at batch 4: the op's forward
    pass and the inference plan's conv step run here, and give the reference's answers; at batch 1,
    and on 16x16 planes (1.27 times), they do not. (Winograd's kernels, which take such convs first, are
    out of the way here.)"""
    from fastcnn.kernels import conv_channels, winograd
    monkeypatch.setattr(fastcnn.kernels.jit, "num_threads", lambda: 2)
    monkeypatch.setattr(winograd, "takes", lambda *args: False)
    rng = np.random.default_rng(7)
    x, w, b, geo = _case(rng, 4, 64, 64, (8, 8), (3, 3), (1, 1), 1, (1, 1), np.float32)
    assert conv_channels.takes(x.shape, w.shape, geo)
    assert not conv_channels.takes((1,) + x.shape[1:], w.shape, conv_geometry((1,) + x.shape[1:], w.shape, 1, 1, 1))
    big = (4, 64, 16, 16)
    assert not conv_channels.takes(big, w.shape, conv_geometry(big, w.shape, 1, 1, 1))
    calls = []
    real = conv_channels.conv2d_channels_forward
    monkeypatch.setattr(conv_channels, "conv2d_channels_forward", lambda *args: calls.append(1) or real(*args))
    want = np.maximum(ref.conv2d(x, w, b, geo.stride, geo.padding, geo.dilation), 0)
    if policy == "numba":
        got = F.conv2d_relu(x, w, b, padding=1, backend="numba")
    else:
        from fastcnn import layers as L
        conv = L.Conv2D(64, 64, 3, padding=1)
        conv.params["weight"][...], conv.params["bias"][...] = w, b
        model = fastcnn.Sequential([conv, L.ReLU()], input_shape=(64, 8, 8))
        with fastcnn.dispatch.use_backend("numba"):
            got = model.predict(x)
    np.testing.assert_allclose(got, want, **TOL[np.float32])
    assert calls == [1]


def test_pooled_stride_1_weight_gradients_it_takes_run_there(monkeypatch):
    """A conv + ReLU + 2x2 max-pool of 64 -> 64 channels: its weight gradient runs here (576 taps), after the
    pool's gradient is unpooled, and equals the NumPy backend's."""
    from fastcnn.kernels import conv_channels
    monkeypatch.setattr(fastcnn.kernels.jit, "num_threads", lambda: 2)
    rng = np.random.default_rng(5)
    x, w, b, geo = _case(rng, 3, 64, 64, (8, 8), (3, 3), (1, 1), 1, (1, 1), np.float32)
    assert conv_channels.takes(x.shape, w.shape, geo, "pooled_weight_gradient")
    assert conv_channels.takes(x.shape, w.shape, geo)  # the conv alone, on 8x8; with its pool it runs in conv_numba
    calls = []
    for name in ("conv2d_channels_forward", "conv2d_channels_grad_weight"):
        real = getattr(conv_channels, name)
        monkeypatch.setattr(conv_channels, name, lambda *args, real=real, name=name: calls.append(name) or real(*args))
    grads = {}
    for backend in ("numba", "numpy"):
        yp, idx = F.conv2d_max_pool2d(x, w, b, padding=1, relu=True, backend=backend)
        gp = np.random.default_rng(6).standard_normal(yp.shape).astype(np.float32)
        grads[backend] = F.conv2d_max_pool2d_backward(gp, idx, x, w, padding=1, relu_output=yp, backend=backend)
    assert calls == ["conv2d_channels_grad_weight"]
    for got, want in zip(grads["numba"], grads["numpy"]):
        np.testing.assert_allclose(got, want, **TOL[np.float32])


def test_small_channel_counts_take_blocks_of_one_vector(monkeypatch):
    """16 -> 16 channels on 16x16 at batch 3: the weight gradient of the stride-1 conv (144 taps) runs
    here in blocks of one vector, and so does its input gradient (not where the weight gradient stays
    in the wide layout, whose copy of the output gradient both would share), and both equal the
    reference's; on 32x32 planes, after a max-pool's gradient, or from 3 input channels (27 taps), the
    weight gradient does not, and neither does the stride-1 forward pass in such blocks (slower than
    the wide layout)."""
    from fastcnn.kernels import _tiles, conv_channels
    monkeypatch.setattr(fastcnn.kernels.jit, "num_threads", lambda: 2)
    n = _tiles.lanes(4)
    assert _tiles.channel_width(_tiles.NARROW_VECTORS * n, 4) == n
    assert _tiles.channel_width(_tiles.NARROW_VECTORS * n + 1, 4) == _tiles.CHANNEL_VECTORS * n
    rng = np.random.default_rng(9)
    x, w, b, geo = _case(rng, 3, 16, 16, (16, 16), (3, 3), (1, 1), 1, (1, 1), np.float32)
    assert conv_channels.takes(x.shape, w.shape, geo, "weight_gradient")
    assert not conv_channels.takes(x.shape, w.shape, geo, "pooled_weight_gradient")  # read from a pool's gradient
    big = (3, 16, 32, 32)  # the padded planes 1.13 times the output: the wide layout's gradients share its layout
    assert not conv_channels.takes(big, w.shape, conv_geometry(big, w.shape, 1, 1, 1), "weight_gradient")
    few = (3, 3, 16, 16)
    assert not conv_channels.takes(few, (16, 3, 3, 3), conv_geometry(few, (16, 3, 3, 3), 1, 1, 1), "weight_gradient")
    small = (3, 16, 8, 8)
    assert not conv_channels.takes(small, w.shape, conv_geometry(small, w.shape, 1, 1, 1))
    assert conv_channels.takes(x.shape, w.shape, geo, "input_gradient")  # 16 input channels: a block of one vector
    x32, w64 = (3, 32, 16, 16), (64, 32, 3, 3)  # its weight gradient (288 taps, blocks of four): the wide layout
    taken = conv_channels.takes(x32, w64, conv_geometry(x32, w64, 1, 1, 1), "input_gradient")
    if _tiles.channel_width(32, 4) == n:  # 32 input channels are a block of one vector on AVX-512
        assert not taken
    else:  # and of two on AVX2: full blocks, whose input gradient runs here from _WIDE_WASTE_GRAD
        assert taken
    calls = []
    for name in ("conv2d_channels_grad_weight", "conv2d_channels_grad_input"):
        real = getattr(conv_channels, name)
        monkeypatch.setattr(conv_channels, name, lambda *args, real=real, name=name: calls.append(name) or real(*args))
    gy = rng.standard_normal((3, 16, 16, 16)).astype(np.float32)
    grad_x, grad_w, grad_b = F.conv2d_backward(gy, x, w, padding=1, backend="numba")
    want_x, want_w, want_b = ref.conv2d_backward(gy, x, w, geo.stride, geo.padding, geo.dilation)
    np.testing.assert_allclose(grad_x, want_x, **TOL[np.float32])
    np.testing.assert_allclose(grad_w, want_w, **TOL[np.float32])
    np.testing.assert_allclose(grad_b, want_b, **TOL[np.float32])
    assert sorted(calls) == ["conv2d_channels_grad_input", "conv2d_channels_grad_weight"]
