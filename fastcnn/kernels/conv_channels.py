"""Conv2D's forward pass and weight gradient with the output channels in vector lanes: any stride,
dilation and padding; and the input gradient, the input channels in the lanes: a stride-1 conv's as
the forward pass of the output gradient with the weight flipped and transposed, a strided one's
(without dilation) phase by phase of the input, all phases reading one padded copy of the output
gradient.

The stride-1 kernels of :mod:`.conv_numba` put output positions in the vector lanes and broadcast
the weights, so a strided conv must first be rearranged into its input's phases. Here the lanes hold
a block of :func:`._tiles.channel_width` output channels instead (the weight packed so, a block of
channels a tap): one vector for convs of up to two vectors of channels, else :data:`._tiles.CHANNEL_VECTORS`
(four on AVX-512, two on AVX2). Each input value
an output position reads is broadcast: where it lies is a table lookup, so the stride and the
dilation cost nothing. A tile is :func:`._tiles.channel_positions` output positions (24 or 6 on
AVX-512, 12 or 6 on AVX2) by one
block (:func:`._tiles.channel_tile`).

One launch does the whole pass. Its tasks are samples (in the forward pass split by blocks of output
channels and by positions where there are fewer samples than threads want): each copies its sample
into a zero-padded plane of its own, computes its tiles into a position-major buffer while both stay
in cache, and writes the buffer out, transposed to the output's channel-major planes in registers
(:func:`._rows.write_channels`; plus the bias and through a ReLU if asked). A strided input gradient
first copies each phase's tiles to their places in a position-major plane of the block, then writes
that plane out so. Every task writes its own part of the output, so the result does not depend on the
thread count.
"""
from __future__ import annotations

import functools

import numpy as np

from . import _compose, elementwise_numba, jit
from .jit import kernel_helper, parallel_kernel, prange, sized
from ._planes import place
from ._rows import copy_gated, write_channels
from ._taps import tap_offsets
from ._tiles import CHANNEL_ACCUMULATORS, TILE_SPEED, channel_positions, channel_tile, channel_width, lanes

_TASKS_PER_THREAD = 4  # small batches are split until every thread has this many tasks
_MIN_CHUNK_TILES = 8  # a task's positions, at least (in tiles), when small batches are split by positions
_WIDE_WASTE = 1.4  # a stride-1 forward pass runs here from this ratio of padded input to output positions (see takes)
_WIDE_WASTE_GRAD = 1.2  # and its input gradient (and a weight gradient in blocks of one vector) from this one
_WHOLE_TILE = CHANNEL_ACCUMULATORS  # a whole number of tiles of either block width (_tiles.channel_positions)
_GRAD_TAPS = 512  # a stride-1 weight gradient runs here from this many taps (input channels x kernel) a channel
_NARROW_GRAD_TAPS = 64  # and from this many where its blocks are one vector wide (see takes)
_PASS_BYTES = 18 << 10  # a pass of the forward pass's tiles sums the taps whose packed weights take this much
# (on AVX-512 72 taps of blocks of four vectors, 288 of one vector; on AVX2 288 of two, 576 of one, in float32),
# over all a task's positions. Measured on AVX-512 against all taps
# in one pass, 2 threads, 3x3 convs with 32 to 256 output channels (stride 2 at batch 64 and 256, stride 1 on 8x8
# at batch 32 and on 32x32 at 256), three runs of 15 interleaved rounds: per-round medians 0.86-1.04x, most
# 0.90-0.96x.
# The weight gradient's tiles sum as many positions a pass (as much of the output gradient's rows): the same
# bits, 0.93-1.02x the time of all positions a tile (the same convs; with twice as many a pass, 0.94-0.99x);
# a strided input gradient's phases sum as many taps a pass: the same bits, 0.90-0.96x (stride 2, 16 to 128
# input channels)
_PARTS = ("forward", "weight_gradient", "pooled_weight_gradient", "input_gradient")


def takes(x_shape: tuple, w_shape: tuple, geo, part: str = "forward") -> bool:
    """Whether the ``part`` (``"forward"``, ``"weight_gradient"``, ``"pooled_weight_gradient"`` or
    ``"input_gradient"``) of the conv of input ``x_shape`` runs here rather than in :mod:`.conv_numba`.
    A pooled weight gradient is the one of a stride-1 conv whose output a 2x2 max-pool took, which
    :mod:`.conv_numba` reads from the pool's gradient without unpooling it first.

    Measured there against here (2 threads, 3x3 convs at batch 32 to 256, interleaved in one process):

    - The forward pass and weight gradient of every strided conv with dilation (it has nothing else fast).
    - Strided convs without, where the blocks of output channels are at least three-quarters full:
      0.5-0.83x the time of the phases' kernels with 48 to 256 output channels (forward and weight
      gradient); 16->32 on 32x32 in two blocks of one vector 0.65-0.76x (forward) and 0.54-0.60x
      (weight gradient; in one half-empty block of four, 1.1-1.2x); 1x1 convs 1.0-2x. The forward
      pass only where a sample is a task: at batch 1, 32->64 on 32x32 took 1.4x a prepared conv's
      time.
    - The weight gradient of stride-1 convs with full blocks: of four vectors from :data:`_GRAD_TAPS`
      taps (input channels x kernel): 0.63-0.76x the wide layout's time for 64 to 256 channels on 8x8
      and 16x16; 288 taps (32->64 on 26x26) 0.97x, 27 taps (3->32) 3.8x. Of one vector from
      :data:`_NARROW_GRAD_TAPS`, 3x3 at most, on planes small as for the input gradient: alone 0.69-0.97x for 8
      to 32 input and 16 or 32 output channels on 8x8 to 32x32, 9 and 27 taps 1.4-1.65x; but in a
      training step's backward, where the wide layout's two gradients share one layout of the output
      gradient, 16 and 32 channels on 32x32 took 1.0-1.08x (on 8x8 to 16x16, 0.85-0.95x with the input
      gradient below). A pooled one only in blocks of four: in blocks of one vector, unpooling first
      took 0.98-1.13x the time (8 to 32 channels, 13x13 to 32x32).
    - The forward pass of stride-1 convs (3x3 at most) with full blocks of four vectors whose padded
      planes are at least :data:`_WIDE_WASTE` times their output (the wide layout computes a value at
      every position of the padded plane), where a sample is a task: 0.78-0.93x the wide layout's (or
      a prepared conv's) time for 32 to 128 input and 64 to 256 output channels on 8x8 (1.56 times),
      batch 4 to 256; on 16x16 (1.27 times) 0.92-1.02x, on 32x32 1.09x; at batch 1, 1.8x. In blocks
      of one vector, 1.05-1.36x on 8x8 to 32x32.
    - The input gradient of strided convs without dilation (:func:`_grad_input_by_phases`), any
      channels and batch: 0.34-0.82x the time of the phases' wide-layout kernels for 3x3 convs of 8
      to 128 input channels on 16x16 and 32x32 at batch 2 to 64 (0.15-0.41x at batch 1), stride 3
      0.66x, 5x5 and 7x7 0.95-0.99x; one input channel 1.04x.
    - The input gradient of stride-1 convs (3x3 at most; :func:`conv2d_channels_grad_input`) whose blocks of
      *input* channels are full, from :data:`_WIDE_WASTE_GRAD` times, where a sample is a task: on
      8x8 0.68-0.74x the wide layout's time (64 to 256 input channels; 16 in a block of one vector
      0.60-0.77x), on 16x16 0.81-0.84x (16 and 32 input channels 0.79-1.08x), on 32x32 0.96x. In
      blocks of one vector only where the weight gradient runs here too: the backward of 32->64 on
      16x16, whose weight gradient stays in the wide layout, took 1.18x the time with it here.

    The rules were measured in float32 on AVX-512, whose blocks are one vector for 32 channels or fewer
    (on AVX2 they apply unchanged to its blocks, one vector for 16 channels or fewer), and a
    float64 conv is routed as a float32 one of its shapes would be (its blocks are then the ones its
    own dtype gives: :func:`._tiles.channel_width`).
    """
    if part not in _PARTS:
        raise ValueError(f"conv_channels.takes: part must be one of {_PARTS}, got {part!r}")
    c_out, c_in, kh, kw = w_shape
    if part == "input_gradient":  # the transposed conv's output channels are the input's
        c_out, c_in = c_in, c_out
    itemsize = np.dtype(np.float32).itemsize
    width = channel_width(c_out, itemsize)
    narrow = width == lanes(itemsize)  # blocks of one vector
    full = 3 * -(-c_out // width) * width <= 4 * c_out
    one_task = x_shape[0] >= jit.num_threads()  # a sample a task at least
    if geo.stride == (1, 1):
        (hp, wp), (oh, ow) = geo.padded_hw, geo.out_hw
        wasteful = hp * wp >= _WIDE_WASTE_GRAD * oh * ow  # the wide layout's scratch positions cost most
        if part == "weight_gradient":
            if narrow:
                return full and c_in * kh * kw >= _NARROW_GRAD_TAPS and wasteful and kh <= 3 and kw <= 3
            return full and c_in * kh * kw >= _GRAD_TAPS
        if part == "pooled_weight_gradient":
            return full and not narrow and c_in * kh * kw >= _GRAD_TAPS
        measured = full and one_task and kh <= 3 and kw <= 3  # (larger kernels were not measured)
        if part == "input_gradient":  # in blocks of one vector only with the weight gradient (see above)
            shares = narrow and not takes(x_shape, w_shape, geo, "weight_gradient")
            return measured and wasteful and not shares and transposed_padding(geo) is not None
        return measured and not narrow and hp * wp >= _WIDE_WASTE * oh * ow
    if part == "input_gradient":
        return geo.dilation == (1, 1)
    if geo.dilation != (1, 1):
        return True
    return kh * kw > 1 and full and (part != "forward" or one_task)


def conv2d_channels_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, geo, relu: bool, y: np.ndarray) -> np.ndarray:
    """``y = conv(x, w) + b`` (through a ReLU with ``relu``) for the conv of geometry ``geo`` (a
    :class:`~fastcnn._checks.ConvGeometry`, one group): ``x`` (N, C, H, W), ``w`` (C_out, C, kH, kW),
    written into ``y`` (C-contiguous, (N, C_out, OH, OW)) and returned."""
    n, c_in = x.shape[:2]
    c_out, _, kh, kw = w.shape
    (oh, ow), (hp, wp) = geo.out_hw, geo.padded_hw
    (top, _), (left, _) = geo.padding
    width = channel_width(c_out, x.itemsize)
    blocks, tile = -(-c_out // width), channel_positions(width, x.itemsize)
    taps = _tap_offsets(c_in, kh, kw, hp, wp, *geo.dilation)
    positions = _tile_positions(oh, ow, wp, *geo.stride, tile)
    groups, chunks = _task_split(n, blocks, oh * ow, tile)
    packed = np.empty((blocks, c_in * kh * kw, width), x.dtype)
    pass_taps = _pass_length(width, x.itemsize)
    kernel = sized(_conv_channels, n * oh * ow * w.size // TILE_SPEED)
    kernel(x, w, b, packed, taps, positions, top, left, hp, wp, relu, groups, chunks, pass_taps, y)
    return y


def conv2d_channels_grad_input(gy: np.ndarray, gate: np.ndarray | None, w: np.ndarray, geo) -> np.ndarray:
    """The input gradient (N, C, H, W) of the conv ``geo`` (one group; a strided one without dilation)
    of weight ``w`` (C_out, C, kH, kW), from its output gradient ``gy`` (N, C_out, OH, OW), through
    the ReLU whose output is ``gate`` if it is not None. Of a stride-1 conv, the forward pass here of
    ``gy`` (gated in a pass of its own) with the weight flipped and its channels swapped, padded as
    :func:`transposed_padding` says; of a strided one, see :func:`_grad_input_by_phases`."""
    if geo.stride != (1, 1):
        return _grad_input_by_phases(gy, gate, w, geo)
    return transposed_forward(conv2d_channels_forward, gy, gate, w, geo)


def transposed_forward(forward, gy: np.ndarray, gate: np.ndarray | None, w: np.ndarray, geo) -> np.ndarray:
    """The input gradient (N, C, H, W) of the stride-1 conv ``geo`` of weight ``w`` (C_out, C, kH, kW)
    from its output gradient ``gy``, through the ReLU whose output is ``gate`` if it is not None (in a
    pass of its own), as ``forward(gy, flipped, zeros, transposed, False, grad_x)``: a forward pass of
    ``gy`` with the weight flipped and its channels swapped, padded as :func:`transposed_padding` says
    (``forward`` as :func:`conv2d_channels_forward`)."""
    gy = _compose.gated(elementwise_numba, gy, gate)
    (top, bottom), (left, right) = padding = transposed_padding(geo)
    oh, ow = gy.shape[2:]
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    transposed = geo._replace(padding=padding, out_hw=geo.input_hw, padded_hw=(oh + top + bottom, ow + left + right))
    grad_x = np.empty((gy.shape[0], w.shape[1]) + geo.input_hw, gy.dtype)
    return forward(gy, flipped, np.zeros(w.shape[1], gy.dtype), transposed, False, grad_x)


def _grad_input_by_phases(gy: np.ndarray, gate: np.ndarray | None, w: np.ndarray, geo) -> np.ndarray:
    """:func:`conv2d_channels_grad_input` of a strided conv without dilation, gated as each task pads
    its sample's output gradient.

    The input's positions fall into ``sH x sW`` phases (rows ``a, a + sH, ..``, columns ``b, b + sW,
    ..``), and the positions of a phase read the output gradient through the taps of one sub-kernel
    (rows ``a', a' + sH, ..`` of the kernel): per phase a stride-1 transposed conv, all phases reading
    one zero-padded copy of each sample's output gradient (:func:`_phase_layout`), the input channels
    in the lanes. A task is a sample."""
    n, c_out, oh, ow = gy.shape
    _, c_in, kh, kw = w.shape
    (top, _), (left, _) = geo.padding
    layout = _phase_layout(c_out, kh, kw, *geo.stride, top, left, *geo.input_hw, oh, ow)
    width = channel_width(c_in, gy.itemsize)
    blocks = -(-c_in // width)
    packed = np.empty((blocks, c_out * kh * kw, width), gy.dtype)
    grad_x = np.empty((n, c_in) + geo.input_hw, gy.dtype)
    kernel = sized(_grad_input_phases, n * oh * ow * w.size // TILE_SPEED)
    kernel(gy, gy if gate is None else gate, gate is not None, w, packed, *layout, _pass_length(width, gy.itemsize),
           grad_x)
    return grad_x


@functools.lru_cache(maxsize=64)
def _phase_layout(c_out: int, kh: int, kw: int, sh: int, sw: int, top: int, left: int, h: int, wd: int, oh: int,
                  ow: int) -> tuple:
    """Tables for :func:`_grad_input_by_phases`, kept read-only; a phase's part of each
    table starts at its entry in the matching ``*_starts`` array:

    - ``pt, pl, hp, wp``: the output gradient's planes padded to ``hp x wp``, ``pt`` zero rows above
      and ``pl`` zero columns left of it (as far as a sub-kernel reaches back), and below and right
      as far as a phase's last input position reads past it;
    - ``positions``, ``writes``, ``counts``, ``pos_starts``: a phase's input positions ``(r, c)``,
      where each reads in a padded plane (row ``(r + top - a) / sH + pt``, column likewise) and where
      it lies in an input plane; ``counts`` of them, the tables padded to whole tiles of
      :data:`_WHOLE_TILE` positions (``positions`` repeating its last, ``writes`` with zeros, which
      nothing reads);
    - ``taps``, ``sub``, ``tap_starts``, ``sub_starts``: a phase's taps, output channel by sub-kernel
      tap (row ``m``, column ``mx``): their offsets in a padded sample, ``o*hp*wp - m*wp - mx``, and
      the sub-kernel's taps' places in a kernel plane, ``i*kW + j`` with ``i = a + m*sH``, ``j = b +
      mx*sW`` (a phase past the kernel's size has none: its input positions get zeros)."""
    pt, pl = -(-kh // sh) - 1, -(-kw // sw) - 1
    rows = [[r for r in range(h) if (r + top) % sh == a] for a in range(sh)]
    cols = [[c for c in range(wd) if (c + left) % sw == b] for b in range(sw)]
    q_end = max(((rr[-1] + top - a) // sh + 1 for a, rr in enumerate(rows) if rr), default=0)
    qx_end = max(((cc[-1] + left - b) // sw + 1 for b, cc in enumerate(cols) if cc), default=0)
    hp, wp = pt + max(oh, q_end), pl + max(ow, qx_end)
    tables = {name: [] for name in ("positions", "writes", "taps", "sub")}
    counts, pos_starts, tap_starts, sub_starts = [], [0], [0], [0]
    for a in range(sh):
        for b in range(sw):
            spots = [(r, c) for r in rows[a] for c in cols[b]]
            reads = [((r + top - a) // sh + pt) * wp + (c + left - b) // sw + pl for r, c in spots]
            pad = -len(spots) % _WHOLE_TILE
            counts.append(len(spots))
            tables["positions"] += reads + reads[-1:] * pad
            tables["writes"] += [r * wd + c for r, c in spots] + [0] * pad
            pos_starts.append(len(tables["positions"]))
            taps = [(m, mx) for m in range(-(-(kh - a) // sh)) for mx in range(-(-(kw - b) // sw))]
            tables["taps"] += [o * hp * wp - m * wp - mx for o in range(c_out) for m, mx in taps]
            tables["sub"] += [(a + m * sh) * kw + b + mx * sw for m, mx in taps]
            tap_starts.append(len(tables["taps"]))
            sub_starts.append(len(tables["sub"]))
    arrays = [np.array(v, np.int64) for v in (tables["positions"], tables["writes"], counts, pos_starts,
                                               tables["taps"], tables["sub"], tap_starts, sub_starts)]
    for array in arrays:
        array.flags.writeable = False
    return (pt, pl, hp, wp, *arrays)


@parallel_kernel
def _grad_input_phases(gy, gate, gated, w, packed, pt, pl, hp, wp, positions, writes, counts, pos_starts, taps,
                       sub, tap_starts, sub_starts, pass_taps, grad_x):
    """:func:`_grad_input_by_phases`: the weight packed per block of input channels and phase into
    ``packed`` (blocks, taps, width), then a task per sample: its output gradient padded (see
    :func:`_phase_layout`; where ``gate`` is positive, if ``gated``), then for each block and phase,
    tiles of the phase's positions (``pass_taps`` taps at a time, as the forward pass) copied to their
    places in the block's position-major input plane, which :func:`._rows.write_channels` transposes
    into the sample's channel-major input gradient."""
    n, c_out = gy.shape[:2]
    c_in = w.shape[1]
    blocks, n_taps, width = packed.shape
    kernel = w.reshape(c_out, c_in, w.shape[2] * w.shape[3])
    phases = counts.size
    for k in prange(blocks):
        for ph in range(phases):
            t0, s0 = tap_starts[ph], sub_starts[ph]
            per = sub_starts[ph + 1] - s0  # sub-kernel taps
            for t in range(tap_starts[ph + 1] - t0):
                o, tap = t // per, sub[s0 + t % per]
                for c in range(width):
                    ci = k * width + c
                    packed[k, t0 + t, c] = kernel[o, ci, tap] if ci < c_in else 0
    flat_w = packed.reshape(packed.size)
    tile = channel_positions(width, gy.itemsize)
    zeros = np.zeros(c_in, gy.dtype)  # the bias, none
    most = 0
    for ph in range(phases):
        most = max(most, pos_starts[ph + 1] - pos_starts[ph])
    plane = grad_x.shape[2] * grad_x.shape[3]
    for s in prange(n):
        src = np.empty(c_out * hp * wp, gy.dtype)
        if gated:
            _pad_gated_sample(gy[s], gate[s], src, pt, pl, hp, wp)
        else:
            _pad_sample(gy[s], src, pt, pl, hp, wp)
        acc = np.empty(most * width, gy.dtype)
        full = np.empty(plane * width, gy.dtype)  # the block's input gradient, position-major
        out = grad_x[s].reshape(c_in * plane)
        for k in range(blocks):
            for ph in range(phases):
                p0, n_pos, t0, t1 = pos_starts[ph], counts[ph], tap_starts[ph], tap_starts[ph + 1]
                if t1 == t0:  # no tap reaches this phase: its positions get zeros
                    acc[: n_pos * width] = 0
                else:
                    _tiles_in_passes(acc, flat_w, (k * n_taps + t0) * width, src, positions[p0 : pos_starts[ph + 1]],
                                     0, n_pos, tile, taps[t0:t1], pass_taps, width)
                for p in range(n_pos):
                    at = writes[p0 + p] * width
                    full[at : at + width] = acc[p * width : (p + 1) * width]
            write_channels(full, 0, width, zeros, k * width, min(width, c_in - k * width), plane, out, k * width * plane,
                           plane, False)


def transposed_padding(geo) -> tuple | None:
    """The padding of the output gradient that makes a stride-1 conv's input gradient a stride-1 conv
    of it: at the top (left) what the kernel reaches (``dilation * (k - 1)``) less the conv's padding
    there; at the bottom (right) what makes the padded gradient reach past the input's last row
    (column) by as much (more than the kernel reaches where the input has rows no output reads: a
    transposed conv's ``output_padding``). None where a side would be negative (the conv pads more
    than its kernel reaches): the input gradient then stays in :mod:`.conv_numba`."""
    (top, _), (left, _) = geo.padding
    (oh, ow), (h, w) = geo.out_hw, geo.input_hw
    reach_h, reach_w = geo.dilation[0] * (geo.kernel[0] - 1), geo.dilation[1] * (geo.kernel[1] - 1)
    padding = ((reach_h - top, h + top - oh), (reach_w - left, w + left - ow))
    return None if min(padding[0] + padding[1]) < 0 else padding


@functools.lru_cache(maxsize=64)
def _tap_offsets(c_in: int, kh: int, kw: int, hp: int, wp: int, dh: int, dw: int) -> np.ndarray:
    """Where tap ``(c, i, j)`` reads in a zero-padded sample (planes ``hp x wp``), from the top left
    of the output position's window (:func:`._taps.tap_offsets`), kept read-only."""
    offsets = tap_offsets(c_in, kh, kw, hp * wp, 0, dh * wp, dw)
    offsets.flags.writeable = False
    return offsets


@functools.lru_cache(maxsize=64)
def _position_offsets(oh: int, ow: int, wp: int, sh: int, sw: int) -> np.ndarray:
    """Where output position ``(r, q)`` (row-major) has the top left of its window in a padded plane
    (planes ``wp`` wide): ``r*sh*wp + q*sw``."""
    r, q = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    offsets = (r * sh * wp + q * sw).reshape(-1).astype(np.int64)
    offsets.flags.writeable = False
    return offsets


def _pass_length(width: int, itemsize: int) -> int:
    """How many taps (the forward pass, and a strided input gradient's phases) or positions (the weight
    gradient) a pass of tiles of blocks of ``width`` channels sums: as many as have :data:`_PASS_BYTES`
    of packed weights or of output gradient rows."""
    return max(1, _PASS_BYTES // (width * itemsize))


def _whole_tile(offsets: np.ndarray, tile: int) -> np.ndarray:
    """``offsets`` with the last repeated up to a whole number of tiles of ``tile`` (a tile always
    reads ``tile`` offsets, so the last tile reads only real ones or the repeats)."""
    if offsets.size % tile == 0:
        return offsets
    whole = np.concatenate([offsets, np.full(-offsets.size % tile, offsets[-1], np.int64)])
    whole.flags.writeable = False
    return whole


@functools.lru_cache(maxsize=64)
def _tile_positions(oh: int, ow: int, wp: int, sh: int, sw: int, tile: int) -> np.ndarray:
    """:func:`_position_offsets` in whole tiles of ``tile`` (:func:`_whole_tile`)."""
    return _whole_tile(_position_offsets(oh, ow, wp, sh, sw), tile)


def _task_split(n: int, blocks: int, positions: int, tile: int) -> tuple[int, int]:
    """Into how many groups of channel blocks and chunks of positions (tiles of ``tile``) each sample is
    cut, so that there are :data:`_TASKS_PER_THREAD` tasks a thread where the samples alone give too few."""
    want = -(-_TASKS_PER_THREAD * jit.num_threads() // max(n, 1))
    if want <= 1:
        return 1, 1
    groups = min(blocks, want)
    chunks = min(-(-want // groups), max(1, positions // (_MIN_CHUNK_TILES * tile)))
    return groups, chunks


def conv2d_channels_grad_weight(gy: np.ndarray, gate: np.ndarray | None, x: np.ndarray, geo) -> tuple:
    """The weight and bias gradients of the conv ``geo`` (one group) of the input ``x`` (N, C, H, W)
    with output gradient ``gy`` (N, C_out, OH, OW), through the ReLU whose output is ``gate`` if it is
    not None: ``grad_w`` (C_out, C, kH, kW) and ``grad_b`` (C_out,).

    The same tiles as the forward pass with the roles turned: a tile is taps by a block of output
    channels, summed over a sample's output positions, the output gradient read position-major (a
    transposed copy of each sample's block, gated as it is made) and the input as broadcasts. A tile
    sums, in the dtype, the positions of as many samples of its task's chunk as fit in
    :data:`_GRAD_SAMPLE_BYTES`; those sums are added up in float64. The tasks (chunks of samples by
    groups of channel blocks) are set by the shapes alone, so the result does not depend on the
    thread count."""
    n, c_in = x.shape[:2]
    c_out, oh, ow = gy.shape[1:]
    kh, kw = geo.kernel
    hp, wp = geo.padded_hw
    (top, _), (left, _) = geo.padding
    width = channel_width(c_out, x.itemsize)
    blocks = -(-c_out // width)
    taps = _whole_tile(_tap_offsets(c_in, kh, kw, hp, wp, *geo.dilation), channel_positions(width, x.itemsize))
    chunks = max(1, min(n, -(-_GRAD_TASKS // blocks)))
    groups = min(blocks, _GRAD_TASKS)
    per_step = max(1, min(-(-n // chunks), _GRAD_SAMPLE_BYTES // (c_in * hp * wp * x.itemsize)))
    positions = _samples_positions(oh, ow, wp, *geo.stride, c_in * hp * wp, per_step)
    kernel = sized(_grad_weight_channels, n * oh * ow * c_out * c_in * kh * kw // TILE_SPEED)
    grad_w, grad_b = kernel(gy, gy if gate is None else gate, gate is not None, x, taps, c_in * kh * kw, positions,
                            per_step, top, left, hp, wp, width, chunks, groups, _pass_length(width, x.itemsize))
    return grad_w.reshape(c_out, c_in, kh, kw), grad_b


_GRAD_TASKS = 8  # the weight gradient's tasks (where the batch allows): chunks of samples by groups of blocks
_GRAD_SAMPLE_BYTES = 1 << 19  # a tile of the weight gradient sums over all the samples of its chunk that fit in
# this much (padded), so that each task adds its float32 tiles to its float64 sums as few times as it can, while
# those samples stay in L2 cache beside the output gradient's rows: half of a 1 MiB L2. Against 1 MiB (which a
# 32-channel sample of 34x34 padded overflowed at 7 a step), Zen 4, 2 threads, 11 interleaved rounds: 0.84x for
# 32->64 stride 2 on 32x32 at batch 64, 0.97-1.0x on the zoo's other shapes here.


@functools.lru_cache(maxsize=64)
def _samples_positions(oh: int, ow: int, wp: int, sh: int, sw: int, sample: int, samples: int) -> np.ndarray:
    """:func:`_position_offsets` of ``samples`` samples that lie ``sample`` values apart."""
    one = _position_offsets(oh, ow, wp, sh, sw)
    offsets = (np.arange(samples)[:, None] * sample + one[None, :]).reshape(-1)
    offsets.flags.writeable = False
    return offsets


@parallel_kernel
def _grad_weight_channels(gy, gate, gated, x, taps, n_taps, positions, per_step, top, left, hp, wp, width, chunks,
                          groups, pass_positions):
    """:func:`conv2d_channels_grad_weight`: a task per (chunk of samples, group of channel blocks),
    each summing into its own part of ``sums`` (and ``bias``), ``per_step`` samples a tile (whose
    positions ``positions`` lists), ``pass_positions`` of them at a time for all tiles (so that
    their rows of the output gradient stay in cache), then the parts added up."""
    n, c_in = x.shape[:2]
    c_out = gy.shape[1]
    n_pos = gy.shape[2] * gy.shape[3]
    sample = c_in * hp * wp
    blocks = -(-c_out // width)
    sums = np.zeros((chunks, blocks, n_taps, width))  # float64 across samples
    bias = np.zeros((chunks, blocks * width))
    tile_taps = channel_positions(width, x.itemsize)
    for task in prange(chunks * groups):
        chunk, group = task // groups, task % groups
        src = np.empty(per_step * sample, x.dtype)
        rows = np.empty(per_step * n_pos * width, x.dtype)
        tiles = np.empty(taps.size * width, x.dtype)
        s1 = (chunk + 1) * n // chunks
        for s0 in range(chunk * n // chunks, s1, per_step):
            count = min(per_step, s1 - s0)
            for i in range(count):
                _pad_sample(x[s0 + i], src[i * sample : (i + 1) * sample], top, left, hp, wp)
            for k in range(group * blocks // groups, (group + 1) * blocks // groups):
                for i in range(count):
                    _gradient_rows(gy[s0 + i].reshape(c_out, n_pos), gate[s0 + i].reshape(gate.shape[1], -1), gated,
                                   k * width, rows[i * n_pos * width : (i + 1) * n_pos * width],
                                   bias[chunk, k * width : (k + 1) * width])
                _tiles_in_passes(tiles, rows, 0, src, taps, 0, n_taps, tile_taps, positions[: count * n_pos],
                                 pass_positions, width)
                for t in range(n_taps):
                    for c in range(width):
                        sums[chunk, k, t, c] += tiles[t * width + c]
    grad_w = np.empty((c_out, c_in) + (n_taps // c_in,), dtype=gy.dtype)
    grad_b = np.empty(c_out, dtype=gy.dtype)
    for co in prange(c_out):
        k, c = co // width, co % width
        total = 0.0
        for chunk in range(chunks):
            total += bias[chunk, co]
        grad_b[co] = total
        for t in range(n_taps):
            total = 0.0
            for chunk in range(chunks):
                total += sums[chunk, k, t, c]
            grad_w[co, t // grad_w.shape[2], t % grad_w.shape[2]] = total
    return grad_w, grad_b


@kernel_helper
def _gradient_rows(g, gate, gated, c0, rows, bias):
    """Channels ``c0 ..`` of ``g`` (C_out, positions), a block of ``width`` (0 past the last), into
    ``rows`` position-major (positions, width), where ``gate`` is positive if ``gated``; each channel's
    sum added to ``bias``."""
    c_out, n_pos = g.shape
    width = bias.size
    for c in range(width):
        co = c0 + c
        if co >= c_out:
            for p in range(n_pos):
                rows[p * width + c] = 0
            continue
        total = 0.0
        for p in range(n_pos):
            v = g[co, p] if not gated or gate[co, p] > 0 else 0
            rows[p * width + c] = v
            total += v
        bias[c] += total


@parallel_kernel
def _conv_channels(x, w, b, packed, taps, positions, top, left, hp, wp, relu, groups, chunks, pass_taps, y):
    """:func:`conv2d_channels_forward`: the weight packed into ``packed`` (blocks, taps, width), then
    a task per (sample, group of blocks, chunk of positions). A block's tiles sum ``pass_taps`` taps
    at a time over all the task's positions, so that those taps' weights stay in cache."""
    n, c_in, h, wd = x.shape
    c_out = w.shape[0]
    blocks, n_taps, width = packed.shape
    for k in prange(blocks):
        _pack_block(w, packed, k)
    flat_w = packed.reshape(packed.size)
    n_pos = y.shape[2] * y.shape[3]
    tile = channel_positions(width, x.itemsize)
    n_tiles = -(-n_pos // tile)
    per_chunk = -(-n_tiles // chunks) * tile
    for task in prange(n * groups * chunks):
        s, rest = task // (groups * chunks), task % (groups * chunks)
        group, chunk = rest // chunks, rest % chunks
        lo, hi = chunk * per_chunk, min(n_pos, (chunk + 1) * per_chunk)
        if lo >= hi:
            continue
        src = np.empty(c_in * hp * wp, x.dtype)
        _pad_sample(x[s], src, top, left, hp, wp)
        acc = np.empty(n_tiles * tile * width, x.dtype)
        out = y[s].reshape(c_out * n_pos)
        for k in range(group * blocks // groups, (group + 1) * blocks // groups):
            _tiles_in_passes(acc, flat_w, k * n_taps * width, src, positions, lo, hi, tile, taps, pass_taps, width)
            write_channels(acc, lo * width, width, b, k * width, min(width, c_out - k * width), hi - lo, out,
                           k * width * n_pos + lo, n_pos, relu)


@kernel_helper
def _tiles_in_passes(out, w, w_at, src, pos, lo, hi, tile, taps, length, width):
    """The tiles of ``out`` from entry ``lo`` of ``pos`` to ``hi`` (``tile`` entries each, every
    tile whole), summed over ``taps`` ``length`` at a time (:func:`._tiles.channel_tile`, adding to
    the tiles after the first pass: the same bits as one pass), so that a pass's part of ``w`` (from
    ``w_at``, ``width`` values a tap) stays in cache while every tile reads it. The forward pass: tiles
    of positions, summed over taps; the weight gradient: tiles of taps, summed over positions."""
    for r in range(0, taps.size, length):
        for p in range(lo, hi, tile):
            channel_tile(out, p * width, w, w_at + r * width, src, pos, p, taps[r : r + length], width, r > 0)


@kernel_helper
def _pack_block(w, packed, k):
    """Block ``k`` of the packed weight: ``packed[k, t, c] = w[k*width + c]``'s tap ``t``, 0 past the
    last output channel."""
    c_out = w.shape[0]
    n_taps, width = packed.shape[1], packed.shape[2]
    taps = w.reshape(c_out, n_taps)
    for t in range(n_taps):
        for c in range(width):
            co = k * width + c
            packed[k, t, c] = taps[co, t] if co < c_out else 0


@kernel_helper
def _pad_sample(xs, src, top, left, hp, wp):
    """The sample ``xs`` (C, H, W) into ``src`` as planes ``hp x wp``, ``top`` zero rows above and
    ``left`` zero columns left of it, zeros around."""
    src[:] = 0
    for c in range(xs.shape[0]):
        place(src[c * hp * wp :], xs[c], wp, top, left)


@kernel_helper
def _pad_gated_sample(gs, gate, src, top, left, hp, wp):
    """:func:`_pad_sample` of a gradient ``gs`` (C, H, W) through the ReLU whose output is ``gate``:
    a value where ``gate`` is positive, else 0."""
    src[:] = 0
    h, w = gs.shape[1:]
    for c in range(gs.shape[0]):
        for r in range(h):
            at = c * hp * wp + (top + r) * wp + left
            copy_gated(src[at : at + w], gs[c, r], gate[c, r])
