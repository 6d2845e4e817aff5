"""3x3 stride-1 convs by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016), with the channels in the vector lanes.

Each 2x2 tile of output positions reads a 4x4 tile ``d`` of the padded input. With ``V = B^T d B`` per
input channel, ``U = G g G^T`` per 3x3 kernel ``g`` and ``M = sum over input channels of U * V`` (16
products, element by element), the tile is ``A^T M A``: 16 multiply-adds per input channel and output
channel where the direct conv does 36, so the sixteen sums over channels, which are matrix products,
do 2.25 times fewer multiply-adds.

One launch does the whole pass, a task per share of the samples. For each sample a task copies the
zero-padded input into a position-major plane (the channels of a position side by side), transforms
every tile a vector of channels at a time (:func:`._tiles.winograd_input`), sums the sixteen products
through :func:`._tiles.channel_tile` (the transformed weight packed in blocks of output channels, each
transformed input value broadcast), transforms them back a vector of output channels at a time
(:func:`._tiles.winograd_output`) and writes the block out, transposed to the output's channel-major
planes, plus the bias and through a ReLU if asked. A stride-1 conv's input gradient is such a conv of
the output gradient (:func:`.conv_channels.transposed_forward`). The weight gradient is ``G^T S G``
for ``S``, the sums over every tile of ``(A dy A^T) * V`` (:func:`._tiles.winograd_gradient`): again
sixteen matrix products, whose sums run over a share's tiles, input channels in the tile's positions
and output channels in its lanes. The transforms add and subtract only, and ``U`` is exact but for the
halving of sums, so the result differs from the direct conv's by rounding alone (measured: at most
2e-6 of the output's largest value, 3x3 convs of 16 to 256 channels). Every task writes its own
samples (the weight gradient its own share's sums, added in share order), so the result does not
depend on the thread count.

Measured against the direct kernels (the wide layout's, or :mod:`.conv_channels`' where they take the
conv), one process, interleaved rounds, 2 threads, an AMD Zen 4 (AVX-512), 2026-12-02, 3x3 convs with
padding 1 at batch 32 to 256 (:func:`takes` has the rules): the forward pass 0.60-0.84x the time with
32 to 256 channels on 8x8 to 32x32 planes (32->64 on 26x26 unpadded 0.74x), the input gradient
0.62-0.90x, the weight gradient 0.70-0.91x with blocks of 64 output channels (with 32 output channels,
in blocks of one vector, 0.92x on 32x32 but 1.45x on 16x16, so it stays direct); with 16 channels
0.97-1.05x, so those stay direct too; with 8->16 on 13x13, 1.25x.
"""
from __future__ import annotations

import numpy as np

from . import _compose, conv_channels, elementwise_numba, jit
from .jit import kernel_helper, parallel_kernel, prange, sized
from ._rows import row_sum, write_channels
from ._tiles import (TILE_SPEED, channel_positions, channel_tile, channel_width, lanes, whole, winograd_gradient,
                     winograd_input, winograd_output)

_LEAST_CHANNELS = 32  # input and output channels from which the Winograd conv runs (see takes)
_MOST_POSITIONS = 64 * 64  # output positions a plane, at most: measured up to 32x32; a task's transformed
# sample takes 4 times its output's size in channels, so a larger plane would leave the caches far behind
_TASKS_PER_THREAD = 2  # tasks a thread gets, at least, where the samples allow
_PARTS = ("forward", "input_gradient", "weight_gradient")
_GRAD_SHARES = 16  # the weight gradient's shares of the samples, at most: enough to balance two to eight threads
_SHARE_TILES = 256  # and at least this many tiles a share, so that its sums, written once, are few beside its work


def takes(x_shape: tuple, w_shape: tuple, geo, part: str = "forward") -> bool:
    """Whether the ``part`` (``"forward"``, ``"input_gradient"`` or ``"weight_gradient"``) of the conv of
    input ``x_shape`` and weight ``w_shape`` runs here: a 3x3 kernel, stride 1, no dilation, at least
    :data:`_LEAST_CHANNELS` input and output channels, planes of at most :data:`_MOST_POSITIONS` output
    positions, :data:`_TASKS_PER_THREAD` samples a thread (at batch 2, 128->128 on 8x8 took
    1.06-1.13x the direct time) and, for the weight gradient, blocks of more than one vector of output
    channels (see the module's measurements). float32 and float64 alike (only float32 was timed).
    The weight gradient's shares of the samples are at most one per :data:`_SHARE_TILES` tiles, so on
    small planes it keeps fewer threads busy than a machine of many cores has (timed on 2 only).
    """
    if part not in _PARTS:
        raise ValueError(f"winograd.takes: part must be one of {_PARTS}, got {part!r}")
    c_out, c_in, kh, kw = w_shape
    plain = (kh, kw) == (3, 3) and geo.stride == (1, 1) and geo.dilation == (1, 1)
    if part == "input_gradient":
        plain = plain and conv_channels.transposed_padding(geo) is not None
    if part == "weight_gradient":  # its sums in blocks of one vector of output channels lost (see above)
        plain = plain and channel_width(c_out, 4) > lanes(4)
    return (plain and min(c_in, c_out) >= _LEAST_CHANNELS and geo.out_hw[0] * geo.out_hw[1] <= _MOST_POSITIONS
            and x_shape[0] >= _TASKS_PER_THREAD * jit.num_threads())


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, geo, relu: bool, y: np.ndarray) -> np.ndarray:
    """``y = conv(x, w) + b`` (through a ReLU with ``relu``) for the 3x3 stride-1 conv of geometry ``geo``
    (a :class:`~fastcnn._checks.ConvGeometry` that :func:`takes`): ``x`` (N, C, H, W), ``w`` (C_out,
    C, 3, 3), written into ``y`` (C-contiguous, (N, C_out, OH, OW)) and returned."""
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    (top, _), (left, _) = geo.padding
    width = channel_width(c_out, x.itemsize)
    tile = channel_positions(width, x.itemsize)
    blocks = -(-c_out // width)
    tiles_h, tiles_w = _tile_grid(geo)
    tiles = whole(tiles_h * tiles_w, tile)
    channels = whole(c_in, lanes(x.itemsize))  # a plane position's channels, whole vectors
    packed = np.empty(16 * blocks * c_in * width, x.dtype)
    tasks = min(n, _TASKS_PER_THREAD * jit.num_threads())
    sized(_winograd, _work(n, c_in, c_out, geo))(x, w, b, y, relu, top, left, width, blocks, channels, tiles_h,
                                                 tiles_w, tiles, _tile_starts(tiles, channels),
                                                 np.arange(c_in, dtype=np.int64), packed, tasks)
    return y


def grad_input(gy: np.ndarray, gate: np.ndarray | None, w: np.ndarray, geo) -> np.ndarray:
    """The input gradient (N, C, H, W) of the conv ``geo`` (one that :func:`takes` with ``part=
    "input_gradient"``) of weight ``w``, from its output gradient ``gy``, through the ReLU whose output
    is ``gate`` if it is not None: :func:`forward` of the gradient, the weight flipped and transposed."""
    return conv_channels.transposed_forward(forward, gy, gate, w, geo)


def grad_weight(gy: np.ndarray, gate: np.ndarray | None, x: np.ndarray, geo) -> tuple[np.ndarray, np.ndarray]:
    """The weight (C_out, C, 3, 3) and bias (C_out,) gradients of the conv ``geo`` (one that :func:`takes`
    with ``part="weight_gradient"``) of input ``x``, from its output gradient ``gy``, through the ReLU
    whose output is ``gate`` if it is not None: ``G^T S G`` for the sums ``S`` over every tile of every
    sample of ``(A dy A^T) * V``, 16 at a time as products of matrices, in float32 within a share of the
    samples (:data:`_GRAD_SHARES` at most, whatever the thread count) and in float64 across them."""
    gy = _compose.gated(elementwise_numba, gy, gate)
    n, c_out = gy.shape[:2]
    c_in = x.shape[1]
    (top, _), (left, _) = geo.padding
    tiles_h, tiles_w = _tile_grid(geo)
    width = channel_width(c_out, x.itemsize)
    blocks = -(-c_out // width)
    positions = channel_positions(width, x.itemsize)  # input channels a tile
    shares = max(1, min(n, _GRAD_SHARES, n * tiles_h * tiles_w // _SHARE_TILES))
    sums = np.empty((shares, 16, blocks, whole(c_in, positions), width), x.dtype)
    bias = np.zeros((shares, c_out))
    sized(_winograd_grad, _work(n, c_in, c_out, geo))(x, gy, top, left, width, blocks, whole(c_in, lanes(x.itemsize)),
                                                      tiles_h, tiles_w, sums, bias)
    s = sums.sum(axis=0, dtype=np.float64)[:, :, :c_in]  # (16, blocks, C, width), the shares in order
    s = s.transpose(0, 1, 3, 2).reshape(4, 4, blocks * width, c_in)[:, :, :c_out]  # S[u, a, k, c]
    grad_w = np.einsum("ui,uakc,aj->kcij", _G, s, _G, optimize=True)
    return grad_w.astype(x.dtype), bias.sum(axis=0).astype(x.dtype)


_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # U = G g G^T (see _pack_channel)


def _tile_grid(geo) -> tuple[int, int]:
    """The 2x2 tiles that cover the output of ``geo``: rows and columns of them."""
    oh, ow = geo.out_hw
    return -(-oh // 2), -(-ow // 2)


def _work(n: int, c_in: int, c_out: int, geo) -> int:
    """The work :func:`.jit.sized` weighs for a pass of ``n`` samples: its multiply-adds (16 for 4
    outputs, where the direct conv does 36) over :data:`._tiles.TILE_SPEED`."""
    return n * geo.out_hw[0] * geo.out_hw[1] * c_out * c_in * 4 // TILE_SPEED


def _tile_starts(tiles: int, channels: int) -> np.ndarray:
    """Where tile ``q`` of product ``e`` starts in a task's transformed input: entry ``e*tiles + q``."""
    return np.arange(16 * tiles, dtype=np.int64) * channels


@parallel_kernel
def _winograd(x, w, b, y, relu, top, left, width, blocks, channels, tiles_h, tiles_w, tiles, starts, taps, packed,
              tasks):
    """:func:`forward`: the weight transformed and packed, then a task per share of the samples."""
    n, c_in = x.shape[:2]
    c_out, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    for k in prange(blocks * width):
        _pack_channel(w, packed, k, blocks, width)
    hp, wp = 2 * tiles_h + 2, 2 * tiles_w + 2  # the padded plane the tiles read
    for task in prange(tasks):
        plane = np.empty(hp * wp * channels, x.dtype)
        v = np.empty(16 * tiles * channels, x.dtype)
        m = np.empty(16 * tiles * width, x.dtype)
        o = np.empty(4 * tiles_h * tiles_w * width, x.dtype)
        v[:] = 0  # the tiles past the last are summed too: zeros, not leftovers
        for s in range(task * n // tasks, (task + 1) * n // tasks):
            out = y[s].reshape(c_out * oh * ow)
            _pad_positions(x[s], plane, top, left, wp, channels)
            _transform_input(plane, v, wp, channels, tiles_h, tiles_w, tiles)
            for k in range(blocks):
                for e in range(16):
                    for q in range(0, tiles, channel_positions(width, x.itemsize)):
                        channel_tile(m, (e * tiles + q) * width, packed, (e * blocks + k) * c_in * width, v, starts,
                                     e * tiles + q, taps, width, False)
                _transform_output(m, o, width, tiles_h, tiles_w, tiles)
                count = min(width, c_out - k * width)
                rows = oh if 2 * tiles_w == ow else 1  # output rows that lie in o as in y[s]: one run
                for r in range(0, oh, rows):
                    write_channels(o, 2 * r * tiles_w * width, width, b, k * width, count, rows * ow, out,
                                   k * width * oh * ow + r * ow, oh * ow, relu)


@kernel_helper
def _pack_channel(w, packed, k, blocks, width):
    """Output channel ``k`` of the transformed weight ``U = G g G^T``, packed: ``packed[((e*blocks +
    k // width)*C + c)*width + k % width]`` is entry ``e`` of input channel ``c``'s; 0 past the last
    output channel. ``G`` has the rows (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1)."""
    c_out, c_in = w.shape[:2]
    block, lane = k // width, k % width
    for c in range(c_in):
        for a in range(4):
            if k >= c_out:
                r0 = r1 = r2 = 0.0
            elif a == 0 or a == 3:  # row a of G g
                r0, r1, r2 = 1.0 * w[k, c, a - a // 3, 0], 1.0 * w[k, c, a - a // 3, 1], 1.0 * w[k, c, a - a // 3, 2]
            else:
                sign = 1.0 if a == 1 else -1.0
                r0 = 0.5 * (w[k, c, 0, 0] + sign * w[k, c, 1, 0] + w[k, c, 2, 0])
                r1 = 0.5 * (w[k, c, 0, 1] + sign * w[k, c, 1, 1] + w[k, c, 2, 1])
                r2 = 0.5 * (w[k, c, 0, 2] + sign * w[k, c, 1, 2] + w[k, c, 2, 2])
            at = ((4 * a * blocks + block) * c_in + c) * width + lane  # entry e = 4*a + q, q = 0 .. 3
            step = blocks * c_in * width
            packed[at] = r0  # (G g) G^T, row a
            packed[at + step] = 0.5 * (r0 + r1 + r2)
            packed[at + 2 * step] = 0.5 * (r0 - r1 + r2)
            packed[at + 3 * step] = r2


@kernel_helper
def _pad_positions(xs, plane, top, left, wp, channels):
    """The sample ``xs`` (C, H, W) into ``plane``, position-major: ``plane[((top + r)*wp + left + q)*channels
    + c] = xs[c, r, q]``, zeros around it and in the channels past C."""
    c_in, h, w = xs.shape
    plane[:] = 0
    for c in range(c_in):  # (rows outermost took up to 2.5x the time: 4 KiB apart, the channels' rows alias)
        for r in range(h):
            row = (top + r) * wp + left
            for q in range(w):
                plane[(row + q) * channels + c] = xs[c, r, q]


@kernel_helper
def _transform_input(plane, v, wp, channels, tiles_h, tiles_w, tiles):
    """``V = B^T d B`` of every tile of ``plane``, into ``v``: entry ``e`` of tile ``q`` at ``(e*tiles +
    q)*channels``, a vector of channels at a time."""
    n = lanes(plane.itemsize)
    for i in range(tiles_h):
        for j in range(tiles_w):
            q = i * tiles_w + j
            for c in range(0, channels, n):
                winograd_input(v, q * channels + c, tiles * channels, plane, (2 * i * wp + 2 * j) * channels + c,
                               wp * channels, channels)


@kernel_helper
def _transform_output(m, o, width, tiles_h, tiles_w, tiles):
    """``A^T M A`` of every tile's products in ``m`` (entry ``e`` of tile ``q`` at ``(e*tiles + q)*width``),
    into ``o``: position-major, rows of ``2*tiles_w`` positions of ``width`` channels."""
    n = lanes(m.itemsize)
    row = 2 * tiles_w * width
    for i in range(tiles_h):
        for j in range(tiles_w):
            q = i * tiles_w + j
            for c in range(0, width, n):
                winograd_output(o, 2 * i * row + 2 * j * width + c, row, width, m, q * width + c, tiles * width)


@parallel_kernel
def _winograd_grad(x, gy, top, left, width, blocks, channels, tiles_h, tiles_w, sums, bias):
    """:func:`grad_weight`'s sums: a task per share of the samples transforms a sample's input and output
    gradient tiles, then adds their products over the sample's tiles to the share's sums."""
    n = x.shape[0]
    c_out, oh, ow = gy.shape[1], gy.shape[2], gy.shape[3]
    shares, cq = sums.shape[0], sums.shape[3]
    positions = channel_positions(width, x.itemsize)
    tiles = tiles_h * tiles_w
    hp, wp = 2 * tiles_h + 2, 2 * tiles_w + 2
    for share in prange(shares):
        plane = np.empty(hp * wp * channels, x.dtype)
        g_plane = np.empty(4 * tiles * blocks * width, x.dtype)
        v = np.empty(16 * tiles * channels, x.dtype)
        z = np.empty(16 * blocks * tiles * width, x.dtype)
        starts = np.empty(16 * cq, np.int64)  # where input channel c of product e starts: entry e*cq + c
        for e in range(16):
            for c in range(cq):
                starts[e * cq + c] = e * tiles * channels + min(c, channels - 1)  # (past C: read, not kept)
        taps = np.arange(tiles) * channels
        out = sums[share].reshape(sums[share].size)
        for s in range(share * n // shares, (share + 1) * n // shares):
            _pad_positions(x[s], plane, top, left, wp, channels)
            _transform_input(plane, v, wp, channels, tiles_h, tiles_w, tiles)
            _pad_positions(gy[s], g_plane, 0, 0, 2 * tiles_w, blocks * width)
            _transform_gradient(g_plane, z, width, blocks, tiles_h, tiles_w)
            for k in range(c_out):
                bias[share, k] += row_sum(gy[s, k].reshape(oh * ow))
            for e in range(16):
                for k in range(blocks):
                    for c in range(0, cq, positions):
                        channel_tile(out, ((e * blocks + k) * cq + c) * width, z, (e * blocks + k) * tiles * width,
                                     v, starts, e * cq + c, taps, width, s > share * n // shares)


@kernel_helper
def _transform_gradient(g_plane, z, width, blocks, tiles_h, tiles_w):
    """``A dy A^T`` of every 2x2 tile of the output gradient's plane ``g_plane`` (position-major, rows of
    ``2*tiles_w`` positions of ``blocks*width`` channels), into ``z``: entry ``e`` of block ``k`` of tile
    ``q`` at ``((e*blocks + k)*tiles + q)*width``, a vector of channels at a time."""
    n = lanes(z.itemsize)
    channels, tiles = blocks * width, tiles_h * tiles_w
    row = 2 * tiles_w * channels
    for i in range(tiles_h):
        for j in range(tiles_w):
            q = i * tiles_w + j
            for k in range(blocks):
                for c in range(0, width, n):
                    winograd_gradient(z, (k * tiles + q) * width + c, blocks * tiles * width, g_plane,
                                      2 * i * row + 2 * j * channels + k * width + c, row, channels)
