"""Register tiles: the innermost loops of the convolutions, written as LLVM vector code.

LLVM's loop vectoriser keeps running sums in registers only as the reductions of an innermost loop.
A convolution's forward pass and input gradient want an outer product instead: a tile of :data:`ROWS`
output rows by :data:`VECTORS` SIMD vectors of output positions, summed over every tap while all of it
stays in registers, and written once (:func:`store_tile`). Python loops cannot say that, so these
Numba intrinsics emit the loop directly: vector loads, broadcasts and ``llvm.fma`` on
``<lanes x float>``. The weight gradient's dot products (``dot_tile``) keep a fixed tile of
:data:`DOT_ROWS` by :data:`DOT_COLS` vector sums the same way, and so does a dense layer's forward
pass (``dense_tile``), which also prefetches the input rows it will read next, so that streaming
them from memory overlaps the arithmetic; and a 1x1 conv's weight gradient (``dot_segments``), whose
sums run over a segment of each of several samples' planes, any length, without leaving the registers.
The transforms of Winograd's F(2x2, 3x3) (``winograd_input``, ``winograd_output``, ``winograd_gradient``,
see :mod:`.winograd`) take one vector of channels of a tile at a time, all sixteen values of it in registers.
``transpose_tile`` turns a square of vectors (positions by channels) into channels by positions with
shuffles, in registers, so that the kernels that keep channels in the lanes write channel-major planes
with vector stores instead of a strided copy per channel (or, in the strided input gradient, a scalar
scatter).

A vector is :data:`jit.VECTOR_BYTES` bytes (:func:`lanes`): one register of the target, 64 bytes on
AVX-512 and 32 on AVX2. The tiles' shapes (below) are chosen for the target's register file: 32 vector
registers on AVX-512, 16 on AVX2. Either geometry is correct on any CPU (LLVM splits a vector wider
than the target's registers), though a tile whose sums do not fit the registers spills them. The
intrinsics are inlined into the kernel that calls them. They read whole vectors, so callers pad
their arrays (see each factory) and drop what lands in the padding.
"""
from __future__ import annotations

import functools

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

from .jit import CHECK_BOUNDS, VECTOR_BYTES

if VECTOR_BYTES == 64:  # AVX-512: 32 vector registers
    ROWS, VECTORS = 8, 3  # 24 accumulators, 3 loads and 8 broadcasts per tap: measured best of 4x4 .. 16x1
    DOT_ROWS, DOT_COLS = 4, 6  # the weight gradient's tile, 4 output channels by 6 (input channel, tap) pairs:
    # measured best of 2x3 .. 12x3 and 4x6 (4x6 over 4x3: 3-12% less time on lenet's 8->16 gradient, 17-20% on a 32->64)
    DENSE_ROWS, DENSE_COLS = 4, 5  # input rows by outputs: an MLP's ten outputs in two calls
    POINT_ROWS, POINT_VECTORS = 4, 4  # a 1x1 conv's tile (store_point, pointwise_numba): output rows by vectors of
    # positions. Measured against 8x3 on the zoo's ten 1x1 shapes (planes of 64 to 1024 positions, 10 to 256
    # outputs, one thread, interleaved): 4x4 took 0.79-0.96x the time, 6x4 0.87-0.96x, 5x4 0.82-1.02x, 7x4
    # (spilled) 1.0-1.19x, 3x8 1.27-1.36x; then the product itself, 8x3 against 4x4 in one process: 0.88-1.01x the
    # time with 2 threads, 0.80-1.00x with one
    CHANNEL_ACCUMULATORS, CHANNEL_VECTORS = 24, 4  # channel_tile: 24 vector sums; a block of 4 vectors (64 float32
    # channels) by 6 positions, or of one vector by 24 positions where a conv has two vectors of channels or fewer.
    # Measured, 3x3 convs at batch 64: with 64 output channels 12x2 took 1.2-1.3x the time of 6x4 and 24x1 1.1-1.4x;
    # with 32 (16->32, stride 2), two blocks of 24x1 took 0.65-0.76x (forward) and 0.54-0.60x (weight gradient) the
    # time of the phases' kernels (6x4: 1.1-1.2x), one block of 12x2 0.7-1.1x and 0.55-1.0x
else:  # AVX2: 16 vector registers, so 12 accumulators and the loads and broadcast beside them. Measured on
    # an AMD Zen 3 (znver3: AVX2, no AVX-512) against these (interleaved, 3x3 convs at batch 32-64): store tiles
    # of 6x2, 4x2 and 5x2 took 0.98-1.18x the forward time; dot tiles of 3x4 1.0-1.37x, 4x2 0.92-1.10x and 6x2
    # 0.98-1.14x the backward's; dense tiles of 3x4 1.2-2.3x (they spill), 2x5 0.94-1.06x; channel tiles of 5x2
    # 1.0-1.07x, 4x2 1.04-1.16x, 3x4 1.5-1.8x (spilled). The AVX-512 shapes above took 1.3-2.2x (split into
    # 256-bit halves, their 24 sums, 20 for the dense tile, need 48 or 40 registers and spill).
    ROWS, VECTORS = 4, 3
    POINT_ROWS, POINT_VECTORS = 4, 3  # against these, 3x4 took 1.14-1.59x the time and 4x4 1.43-2.0x (znver4 run
    # as haswell, the zoo's 1x1 shapes, one thread)
    DOT_ROWS, DOT_COLS = 4, 3
    DENSE_ROWS, DENSE_COLS = 4, 3
    CHANNEL_ACCUMULATORS, CHANNEL_VECTORS = 12, 2
NARROW_VECTORS = 2  # convs of at most this many vectors of output channels take blocks of one vector
# (measured on AVX-512 only, as are TILE_SPEED and the routing rules of conv_channels.takes and linear: on AVX2
# they apply to its blocks and tiles unchanged)
FEW_ROWS = 4  # fewer output rows than this go one row at a time, instead of padded to a whole tile
TILE_SPEED = 8  # multiply-adds a tile kernel does in the time jit.SERIAL_WORK counts one: divides the
# work passed to jit.sized, so a small call runs serially (measured: 1->1 3x3 at batch 32 is faster so)


@register_jitable
def whole(n: int, step: int) -> int:
    """``n`` rounded up to a multiple of ``step``."""
    return -(-n // step) * step


@register_jitable
def tile_rows(n: int) -> int:
    """Rows to allocate for ``n`` output rows: ``n`` itself when fewer than :data:`FEW_ROWS`, else
    whole tiles of :data:`ROWS` (the rows past ``n`` are padding)."""
    return n if n < FEW_ROWS else whole(n, ROWS)


@register_jitable
def lanes(itemsize: int) -> int:
    """Values per vector of :data:`jit.VECTOR_BYTES`: 16 float32 or 8 float64 on AVX-512, 8 or 4 on AVX2."""
    return VECTOR_BYTES // itemsize


@register_jitable
def tile_width(itemsize: int) -> int:
    """Output positions per :func:`store_tile`: ``VECTORS`` vectors, 48 float32 on AVX-512 and 24 on AVX2."""
    return VECTORS * lanes(itemsize)


def _float_arrays(*arrays) -> bool:
    """Whether the Numba types are all arrays of one float dtype."""
    if not all(isinstance(a, types.Array) for a in arrays):
        return False
    dtypes = {a.dtype for a in arrays}
    return len(dtypes) == 1 and dtypes <= {types.float32, types.float64}


_I32 = ir.IntType(32)


class _Vectors:
    """LLVM IR building blocks for vectors of ``lanes`` values of one float dtype, and for the int64
    vectors and lane masks that go with them. Loads and stores are aligned to the element only."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.fty = context.get_value_type(dtype)
        self.itemsize = context.get_abi_sizeof(self.fty)
        self.n = n = lanes(self.itemsize)
        self.vty = ir.VectorType(self.fty, n)
        self.zero = ir.Constant(self.vty, [ir.Constant(self.fty, 0.0)] * n)
        self.iota = ir.Constant(ir.VectorType(ir.IntType(64), n), list(range(n)))
        self.lanes32 = ir.Constant(ir.VectorType(_I32, n), list(range(n)))

    def splat(self, value):
        """``value`` in every lane."""
        ty = ir.VectorType(value.type, self.n)
        one = self.builder.insert_element(ir.Constant(ty, ir.Undefined), value, ir.Constant(_I32, 0))
        return self.shuffle(one, ir.Constant(ty, ir.Undefined), [0] * self.n)

    def shuffle(self, a, b, order):
        """The lanes of ``a`` then ``b`` picked by ``order`` (a list of lane numbers)."""
        return self.builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(order)), order))

    def fma(self, a, b, c):
        """``a * b + c`` lane by lane, one rounding (``llvm.fma``)."""
        fn = cgutils.get_or_insert_function(self.builder.module, ir.FunctionType(self.vty, [self.vty] * 3),
                                            f"llvm.fma.{_suffix(self.vty)}")
        return self.builder.call(fn, [a, b, c])

    def load_all(self, data, index):
        """The vector at ``data[index]``."""
        pointer = self.builder.bitcast(self.builder.gep(data, [index]), self.vty.as_pointer())
        return self.builder.load(pointer, align=self.itemsize)

    def store_all(self, value, data, index):
        """Write ``value`` to ``data[index:]``."""
        self.builder.store(value, self.builder.bitcast(self.builder.gep(data, [index]), self.vty.as_pointer()),
                           align=self.itemsize)

    def below(self, first, limit):
        """The mask of lanes ``k`` with ``first + k < limit``: one compare of 32-bit lanes with
        ``limit - first`` clamped to [0, lanes]. (Lanes of 64 bits cost AVX2 two compares and packing
        per mask: a 2x2 max-pool of 13 windows a row took 1.5-2x the time, one process, interleaved.)"""
        builder = self.builder
        room = builder.sub(limit, first)
        room = builder.select(builder.icmp_signed("<", room, _int(0)), _int(0), room)
        room = builder.select(builder.icmp_signed(">", room, _int(self.n)), _int(self.n), room)
        return builder.icmp_signed("<", self.lanes32, self.splat(builder.trunc(room, _I32)))

    def load(self, data, index, mask, fill):
        """The vector at ``data[index]``; lanes off in ``mask`` are not read (nor can fault) and hold ``fill``."""
        vty = fill.type
        fn = cgutils.get_or_insert_function(self.builder.module, ir.FunctionType(vty, [data.type, mask.type, vty]),
                                            f"llvm.masked.load.{_suffix(vty)}.p0")
        return self.builder.call(fn, [self.builder.gep(data, [index]), mask, fill])

    def store(self, value, data, index, mask):
        """Write the lanes of ``value`` that are on in ``mask`` to ``data[index:]``."""
        fn = cgutils.get_or_insert_function(self.builder.module,
                                            ir.FunctionType(ir.VoidType(), [value.type, data.type, mask.type]),
                                            f"llvm.masked.store.{_suffix(value.type)}.p0")
        self.builder.call(fn, [value, self.builder.gep(data, [index]), mask])


def _suffix(vty) -> str:
    """An intrinsic's name suffix for the vector type ``vty``, e.g. ``v16f32``."""
    element = vty.element
    name = {ir.FloatType: "f32", ir.DoubleType: "f64"}.get(type(element)) or f"i{element.width}"
    return f"v{vty.count}{name}"


def _int(value: int):
    return ir.Constant(ir.IntType(64), value)


@functools.lru_cache(maxsize=None)  # one intrinsic (and one name) a geometry
def _store_tile(rows: int, width: int):
    """An intrinsic ``store_tile(out, w, row, col, src, offsets, first, stop, add)``:
    ``out[row + r, col + q] = sum(w[row + r, t] * src[offsets[t] + col + q] for first <= t < stop)``
    for ``r < rows`` and ``q < width * lanes`` (``width`` vectors); with ``add`` true the sum is added to
    ``out`` instead.

    ``out`` and ``w`` are C-contiguous 2-D arrays, ``src`` 1-D, ``offsets`` int64: tap ``t`` of row
    ``r`` weighs ``src`` shifted by ``offsets[t]``. The caller keeps every read and write in bounds.
    """
    def store_tile(typingctx, out, w, row, col, src, offsets, first, stop, add):
        return _store_tile_typing(rows, width, out, w, src, offsets)

    store_tile.__name__ = store_tile.__qualname__ = f"store_tile_{rows}x{width}"  # one name per intrinsic
    return intrinsic(store_tile)


def _store_tile_typing(rows, width, out, w, src, offsets):
    if not (_float_arrays(out, w, src) and out.ndim == w.ndim == 2 and src.ndim == 1
            and isinstance(offsets, types.Array) and offsets.dtype == types.int64):
        return None
    sig = types.void(out, w, types.intp, types.intp, src, offsets, types.intp, types.intp, types.boolean)

    def codegen(context, builder, signature, args):
        out_t, w_t, _, _, src_t, offsets_t, _, _, _ = signature.args
        out_a, w_a, src_a, offsets_a = (context.make_array(ty)(context, builder, args[i])
                                        for ty, i in ((out_t, 0), (w_t, 1), (src_t, 4), (offsets_t, 5)))
        row, col, first, stop = args[2], args[3], args[6], args[7]
        vectors = _Vectors(context, builder, out_t.dtype)
        n, zero, splat, load, store = vectors.n, vectors.zero, vectors.splat, vectors.load_all, vectors.store_all
        out_width = cgutils.unpack_tuple(builder, out_a.shape, 2)[1]
        n_taps = cgutils.unpack_tuple(builder, w_a.shape, 2)[1]
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(width)] for _ in range(rows)]
        w_rows = [builder.mul(builder.add(row, _int(r)), n_taps) for r in range(rows)]
        with cgutils.for_range_slice(builder, first, stop, _int(1)) as (t, _):
            start = builder.add(builder.load(builder.gep(offsets_a.data, [t])), col)
            xs = [load(src_a.data, builder.add(start, _int(n * v))) for v in range(width)]
            for r in range(rows):
                weight = splat(builder.load(builder.gep(w_a.data, [builder.add(w_rows[r], t)])))
                for v in range(width):
                    builder.store(vectors.fma(weight, xs[v], builder.load(acc[r][v])), acc[r][v])
        bases = [builder.add(builder.mul(builder.add(row, _int(r)), out_width), col) for r in range(rows)]
        with builder.if_then(args[8]):
            for r in range(rows):
                for v in range(width):
                    at = builder.add(bases[r], _int(n * v))
                    builder.store(builder.fadd(builder.load(acc[r][v]), load(out_a.data, at)), acc[r][v])
        for r in range(rows):
            for v in range(width):
                store(builder.load(acc[r][v]), out_a.data, builder.add(bases[r], _int(n * v)))
        return context.get_dummy_value()

    return sig, codegen


def _dot_tile(rows: int, cols: int, prefetch: bool):
    """An intrinsic ``dot_tile(out, g, g_starts, x, x_starts, length, ahead)``:
    ``out[a, b] = sum(g[g_starts[a] + k] * x[x_starts[b] + k] for k < length)`` for ``a < rows`` and
    ``b < cols``. ``out`` is C-contiguous with rows of ``cols`` values; ``length`` is a multiple of
    ``lanes``.

    With ``prefetch``, each step also asks the cache for the line ``ahead`` values further along each
    row of ``g`` (the rows the next call will read, for a stream from memory); otherwise ``ahead`` is
    unused.
    """
    def dot_tile(typingctx, out, g, g_starts, x, x_starts, length, ahead):
        if not _dot_tile_types(out, g, g_starts, x, x_starts):
            return None
        sig = types.void(out, g, g_starts, x, x_starts, types.intp, types.intp)
        return sig, _dot_codegen(rows, cols, prefetch, segmented=False)

    dot_tile.__name__ = dot_tile.__qualname__ = f"dot_tile_{rows}x{cols}{'_prefetch' if prefetch else ''}"
    return intrinsic(dot_tile)


def _dot_segments(rows: int, cols: int):
    """An intrinsic ``dot_segments(out, g, g_starts, g_step, x, x_starts, x_step, length, count)``: the
    dot products of :func:`_dot_tile` over ``count`` segments of ``length`` values (any length: the last
    vector of a segment is read through a mask), segment ``s`` of row ``a`` of ``g`` starting at
    ``g_starts[a] + s*g_step`` and of column ``b`` of ``x`` at ``x_starts[b] + s*x_step``: a sum over
    samples of NCHW arrays, whose planes are apart, kept in registers from one segment to the next."""
    def dot_segments(typingctx, out, g, g_starts, g_step, x, x_starts, x_step, length, count):
        if not _dot_tile_types(out, g, g_starts, x, x_starts):
            return None
        sig = types.void(out, g, g_starts, types.intp, x, x_starts, types.intp, types.intp, types.intp)
        return sig, _dot_codegen(rows, cols, False, segmented=True)

    dot_segments.__name__ = dot_segments.__qualname__ = f"dot_segments_{rows}x{cols}"
    return intrinsic(dot_segments)


def _dot_tile_types(out, g, g_starts, x, x_starts) -> bool:
    return (_float_arrays(out, g, x) and out.ndim == 2 and g.ndim == x.ndim == 1
            and isinstance(g_starts, types.Array) and isinstance(x_starts, types.Array)
            and g_starts.dtype == x_starts.dtype == types.int64)


def _dot_codegen(rows, cols, prefetch, segmented):
    """The code of :func:`_dot_tile` (``segmented`` false) or of :func:`_dot_segments`."""
    def codegen(context, builder, signature, args):
        if segmented:
            out, g, g_starts, g_step, x, x_starts, x_step, length, count = args
            ahead = None
        else:
            out, g, g_starts, x, x_starts, length, ahead = args
            g_step, x_step, count = _int(0), _int(0), _int(1)
        out_t, g_t, gs_t = signature.args[:3]
        xs_t = signature.args[5 if segmented else 4]
        out_a, g_a, gs_a, x_a, xs_a = (context.make_array(ty)(context, builder, value) for ty, value in
                                       ((out_t, out), (g_t, g), (gs_t, g_starts), (g_t, x), (xs_t, x_starts)))
        vectors = _Vectors(context, builder, out_t.dtype)
        n, zero = vectors.n, vectors.zero
        g_first = [builder.load(builder.gep(gs_a.data, [_int(a)])) for a in range(rows)]
        x_first = [builder.load(builder.gep(xs_a.data, [_int(b)])) for b in range(cols)]
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(cols)] for _ in range(rows)]
        byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0")
        steps = builder.udiv(length, _int(n))

        def step(g_at, x_at, k, load):
            xv = [load(x_a.data, builder.add(x_at[b], k)) for b in range(cols)]
            for a in range(rows):
                gv = load(g_a.data, builder.add(g_at[a], k))
                for b in range(cols):
                    builder.store(vectors.fma(gv, xv[b], builder.load(acc[a][b])), acc[a][b])

        with cgutils.for_range(builder, count) as segment:
            g_at = [builder.add(at, builder.mul(segment.index, g_step)) for at in g_first]
            x_at = [builder.add(at, builder.mul(segment.index, x_step)) for at in x_first]
            with cgutils.for_range(builder, steps) as loop:
                k = builder.mul(loop.index, _int(n))
                for a in range(rows if prefetch else 0):  # read, keep in all caches, data
                    line = builder.gep(g_a.data, [builder.add(builder.add(g_at[a], ahead), k)])
                    builder.call(fetch, [builder.bitcast(line, byte_ptr), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                         ir.Constant(i32, 1)])
                step(g_at, x_at, k, vectors.load_all)
            if segmented:  # the segment's last values, fewer than a vector: the lanes past its end read as 0
                body = builder.mul(steps, _int(n))
                with builder.if_then(builder.icmp_signed("<", body, length)):
                    mask = vectors.below(body, length)
                    step(g_at, x_at, body, lambda data, at: vectors.load(data, at, mask, zero))
        for a in range(rows):
            for b in range(cols):
                v, width = builder.load(acc[a][b]), n
                while width > 1:  # add the two halves of the vector, down to one lane
                    width //= 2
                    halves = [ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(h, h + width)))
                              for h in (0, width)]
                    v = builder.fadd(builder.shuffle_vector(v, v, halves[0]), builder.shuffle_vector(v, v, halves[1]))
                total = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
                builder.store(total, builder.gep(out_a.data, [_int(a * cols + b)]))
        return context.get_dummy_value()

    return codegen


def _channel_tile(positions: int, vectors: int):
    """An intrinsic ``channel_tile(out, at, w, w_at, src, pos, first, taps, add)``:
    ``out[at + p*B + c] = sum(w[w_at + t*B + c] * src[pos[first + p] + taps[t]] for t < len(taps))``
    for ``p < positions`` and ``c < B = vectors * lanes`` (with ``add``, the sums start from what
    ``out`` holds there, not from 0: a pass continues the multiply-adds of the one before, to the
    same bits as one pass): a tile of output positions by output channels, the channels in the vectors' lanes (the
    weight packed so, ``B`` channels a tap) and each input value broadcast. What an output position
    reads is wherever ``pos`` says, so the stride and dilation cost nothing. ``out``, ``w`` and ``src``
    are 1-D, ``pos`` and ``taps`` int64; the caller keeps every read and write in bounds."""
    def channel_tile(typingctx, out, at, w, w_at, src, pos, first, taps, add):
        return _channel_tile_typing(positions, vectors, out, w, src, pos, taps)

    channel_tile.__name__ = channel_tile.__qualname__ = f"channel_tile_{positions}x{vectors}"
    return intrinsic(channel_tile)


def _channel_tile_typing(positions, vectors, out, w, src, pos, taps):
    if not (_float_arrays(out, w, src) and out.ndim == w.ndim == src.ndim == 1
            and all(isinstance(a, types.Array) and a.dtype == types.int64 and a.ndim == 1 for a in (pos, taps))):
        return None
    sig = types.void(out, types.intp, w, types.intp, src, pos, types.intp, taps, types.boolean)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 4, 5, 7)]
        out_a, w_a, src_a, pos_a, taps_a = arrays
        vectors_ir = _Vectors(context, builder, signature.args[0].dtype)
        n, width = vectors_ir.n, vectors * vectors_ir.n
        reads = [builder.gep(src_a.data, [builder.load(builder.gep(pos_a.data, [builder.add(args[6], _int(p))]))])
                 for p in range(positions)]
        weights = builder.gep(w_a.data, [args[3]])
        acc = [[cgutils.alloca_once_value(builder, vectors_ir.zero) for _ in range(vectors)] for _ in range(positions)]
        with builder.if_then(args[8]):
            for p in range(positions):
                for v in range(vectors):
                    at = builder.add(args[1], _int(p * width + v * n))
                    builder.store(vectors_ir.load_all(out_a.data, at), acc[p][v])
        n_taps = cgutils.unpack_tuple(builder, taps_a.shape, 1)[0]
        with cgutils.for_range(builder, n_taps) as loop:
            shift = builder.load(builder.gep(taps_a.data, [loop.index]))
            row = builder.mul(loop.index, _int(width))
            ws = [vectors_ir.load_all(weights, builder.add(row, _int(v * n))) for v in range(vectors)]
            for p in range(positions):
                value = vectors_ir.splat(builder.load(builder.gep(reads[p], [shift])))
                for v in range(vectors):
                    builder.store(vectors_ir.fma(value, ws[v], builder.load(acc[p][v])), acc[p][v])
        for p in range(positions):
            for v in range(vectors):
                vectors_ir.store_all(builder.load(acc[p][v]), out_a.data, builder.add(args[1], _int(p * width + v * n)))
        return context.get_dummy_value()

    return sig, codegen


def _winograd_transform(transform, size: int, name: str):
    """An intrinsic ``name(out, out_at, out_row, out_col, src, src_at, src_row, src_col)``: one of
    Winograd's F(2x2, 3x3) transforms of one vector of channels, ``T x T^t``, where ``x[i, j] =
    src[src_at + i*src_row + j*src_col :][:lanes]`` for ``i, j < size`` and ``transform`` builds ``T``
    times a column of vectors; entry ``[u, a]`` of the result goes to ``out[out_at + u*out_row +
    a*out_col :][:lanes]``. All of the tile stays in registers."""
    def winograd(typingctx, out, out_at, out_row, out_col, src, src_at, src_row, src_col):
        if not (_float_arrays(out, src) and out.ndim == src.ndim == 1):
            return None
        return types.void(out, types.intp, types.intp, types.intp, src, types.intp, types.intp, types.intp), codegen

    def codegen(context, builder, signature, args):
        out_a, src_a = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 4))
        _, out_at, out_row, out_col, _, src_at, src_row, src_col = args
        vectors = _Vectors(context, builder, signature.args[0].dtype)
        mul, add = builder.mul, builder.add
        x = [[vectors.load_all(src_a.data, add(src_at, add(mul(_int(i), src_row), mul(_int(j), src_col))))
              for j in range(size)] for i in range(size)]
        columns = [transform(builder, *(x[i][j] for i in range(size))) for j in range(size)]  # T x, by column
        for u in range(len(columns[0])):
            row = transform(builder, *(columns[j][u] for j in range(size)))  # (T x) T^t, row u
            for a, value in enumerate(row):
                vectors.store_all(value, out_a.data, add(out_at, add(mul(_int(u), out_row), mul(_int(a), out_col))))
        return context.get_dummy_value()

    winograd.__name__ = winograd.__qualname__ = name
    return intrinsic(winograd)


def _winograd_bt(builder, d0, d1, d2, d3):
    """``B^T`` (rows (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)) times the column (d0, d1, d2, d3)."""
    return [builder.fsub(d0, d2), builder.fadd(d1, d2), builder.fsub(d2, d1), builder.fsub(d1, d3)]


def _winograd_at(builder, m0, m1, m2, m3):
    """``A^T`` (rows (1, 1, 1, 0) and (0, 1, -1, -1)) times the column (m0, m1, m2, m3)."""
    return [builder.fadd(builder.fadd(m0, m1), m2), builder.fsub(builder.fsub(m1, m2), m3)]


def _winograd_a(builder, g0, g1):
    """``A`` (rows (1, 0), (1, 1), (1, -1), (0, -1)) times the column (g0, g1)."""
    return [g0, builder.fadd(g0, g1), builder.fsub(g0, g1), builder.fneg(g1)]


def _transpose_tile_typing(typingctx, out, out_at, out_step, rows, src, src_at, src_step, cols, plus, plus_at, relu):
    if not (_float_arrays(out, src, plus) and out.ndim == src.ndim == plus.ndim == 1):
        return None
    sig = types.void(out, types.intp, types.intp, types.intp, src, types.intp, types.intp, types.intp, plus,
                     types.intp, types.boolean)

    def codegen(context, builder, signature, args):
        out_a, src_a, plus_a = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 4, 8))
        _, out_at, out_step, rows, _, src_at, src_step, cols, _, plus_at, relu = args
        vectors = _Vectors(context, builder, signature.args[0].dtype)
        n, mul, add = vectors.n, builder.mul, builder.add
        whole = builder.and_(builder.icmp_signed("==", rows, _int(n)), builder.icmp_signed("==", cols, _int(n)))
        with builder.if_else(whole) as (full, part):
            with full:
                values = [vectors.load_all(src_a.data, add(src_at, mul(_int(p), src_step))) for p in range(n)]
                _transpose_write(vectors, values, vectors.load_all(plus_a.data, plus_at), relu,
                                 lambda c, v: vectors.store_all(v, out_a.data, add(out_at, mul(_int(c), out_step))))
            with part:
                channels = vectors.below(_int(0), rows)
                values = [vectors.load(src_a.data, add(src_at, mul(_int(p), src_step)),
                                       builder.and_(channels, vectors.splat(builder.icmp_signed("<", _int(p), cols))),
                                       vectors.zero) for p in range(n)]
                positions = vectors.below(_int(0), cols)
                _transpose_write(vectors, values, vectors.load(plus_a.data, plus_at, channels, vectors.zero), relu,
                                 lambda c, v: vectors.store(v, out_a.data, add(out_at, mul(_int(c), out_step)),
                                                            builder.and_(positions, vectors.splat(
                                                                builder.icmp_signed("<", _int(c), rows)))))
        return context.get_dummy_value()

    return sig, codegen


def _transpose_write(vectors, values, plus, relu, write):
    """``write(c, column c)`` for each lane ``c`` of the ``lanes x lanes`` tile whose rows are ``values``,
    each row plus ``plus`` and through a ReLU (kept NaN) where ``relu``: one round of shuffles per bit of
    the lane number, each swapping that bit of the row's number with that bit of the column's."""
    builder, n = vectors.builder, vectors.n
    rows = [builder.fadd(v, plus) for v in values]
    rows = [builder.select(builder.and_(vectors.splat(relu), builder.fcmp_ordered("<=", v, vectors.zero)),
                           vectors.zero, v) for v in rows]
    step = 1
    while step < n:
        for i in range(n):
            if i & step == 0:
                low, high = rows[i], rows[i | step]
                rows[i] = vectors.shuffle(low, high, [c if c & step == 0 else n + c - step for c in range(n)])
                rows[i | step] = vectors.shuffle(low, high, [c + step if c & step == 0 else n + c for c in range(n)])
        step *= 2
    for c, column in enumerate(rows):
        write(c, column)


_transpose_tile = intrinsic(_transpose_tile_typing)


_winograd_input = _winograd_transform(_winograd_bt, 4, "winograd_input_tile")  # V = B^T d B of a 4x4 input tile
_winograd_output = _winograd_transform(_winograd_at, 4, "winograd_output_tile")  # A^T M A: a 2x2 output tile
_winograd_gradient = _winograd_transform(_winograd_a, 2, "winograd_gradient_tile")  # A dy A^T of a 2x2 gradient tile

_store_tile_rows = _store_tile(ROWS, VECTORS)
_store_tile_one = _store_tile(1, VECTORS)
assert 2 <= POINT_VECTORS <= 4, "store_point has tiles of 1 to 4 vectors"
# (with 3 vectors, the fourth is the third again: store_point never calls it, but every branch is compiled)
_point_tiles = tuple(_store_tile(POINT_ROWS, min(v, POINT_VECTORS)) for v in range(1, 5))
_point_rows = tuple(_store_tile(1, min(v, POINT_VECTORS)) for v in range(1, 5))
_point_tile_1, _point_tile_2, _point_tile_3, _point_tile_4 = _point_tiles
_point_row_1, _point_row_2, _point_row_3, _point_row_4 = _point_rows
_dot_tile_rows = _dot_tile(DOT_ROWS, DOT_COLS, False)
_dot_tile_one = _dot_tile(1, DOT_COLS, False)
_dense_tile = _dot_tile(DENSE_ROWS, DENSE_COLS, True)
_dot_segments_rows = _dot_segments(DOT_ROWS, DOT_COLS)
_dot_segments_one = _dot_segments(1, DOT_COLS)
_channel_tile_wide = _channel_tile(CHANNEL_ACCUMULATORS // CHANNEL_VECTORS, CHANNEL_VECTORS)
_channel_tile_narrow = _channel_tile(CHANNEL_ACCUMULATORS, 1)


@register_jitable
def check_store_tile(rows, vectors, out, w, row, col, src, offsets, first, stop):
    """Assert the preconditions of a ``store_tile`` of ``rows`` rows by ``vectors`` vectors: every read
    and write in bounds."""
    width = vectors * lanes(out.itemsize)
    assert 0 <= row and row + rows <= out.shape[0] and row + rows <= w.shape[0], "store_tile: rows out of bounds"
    assert 0 <= col and col + width <= out.shape[1], "store_tile: columns out of bounds"
    assert 0 <= first and first <= stop and stop <= w.shape[1] and stop <= offsets.size, "store_tile: taps out of bounds"
    for t in range(first, stop):
        assert 0 <= offsets[t] + col and offsets[t] + col + width <= src.size, \
            "store_tile: a shifted read of src is out of bounds"


@register_jitable
def check_dot_tile(rows, cols, out, g, g_starts, x, x_starts, length):
    """Assert the preconditions of a ``dot_tile`` of ``rows`` by ``cols``: every read and write in bounds."""
    assert out.size >= rows * cols and g_starts.size >= rows and x_starts.size >= cols, "dot_tile: tile out of bounds"
    assert length >= 0 and length % lanes(g.itemsize) == 0, "dot_tile: length is not whole vectors"
    for a in range(rows):
        assert 0 <= g_starts[a] and g_starts[a] + length <= g.size, "dot_tile: a row of g is out of bounds"
    for b in range(cols):
        assert 0 <= x_starts[b] and x_starts[b] + length <= x.size, "dot_tile: a row of x is out of bounds"


@register_jitable
def check_dot_segments(rows, cols, out, g, g_starts, g_step, x, x_starts, x_step, length, count):
    """Assert the preconditions of a ``dot_segments`` of ``rows`` by ``cols``: every read and write in bounds."""
    assert out.size >= rows * cols and g_starts.size >= rows and x_starts.size >= cols, \
        "dot_segments: tile out of bounds"
    assert length >= 0 and count >= 0 and g_step >= 0 and x_step >= 0, "dot_segments: a negative length or step"
    last = max(0, count - 1)
    for a in range(rows):
        assert count == 0 or 0 <= g_starts[a] and g_starts[a] + last * g_step + length <= g.size, \
            "dot_segments: a segment of g is out of bounds"
    for b in range(cols):
        assert count == 0 or 0 <= x_starts[b] and x_starts[b] + last * x_step + length <= x.size, \
            "dot_segments: a segment of x is out of bounds"


@register_jitable(inline="always")
def store_tile(out, w, row, col, src, offsets, first, stop, add):
    """The :func:`_store_tile` intrinsic for :data:`ROWS` rows (bounds asserted under ``jit.CHECK_BOUNDS``)."""
    if CHECK_BOUNDS:
        check_store_tile(ROWS, VECTORS, out, w, row, col, src, offsets, first, stop)
    _store_tile_rows(out, w, row, col, src, offsets, first, stop, add)


@register_jitable(inline="always")
def store_row(out, w, row, col, src, offsets, first, stop, add):
    """:func:`store_tile` for one row: outputs of fewer than :data:`FEW_ROWS` rows."""
    if CHECK_BOUNDS:
        check_store_tile(1, VECTORS, out, w, row, col, src, offsets, first, stop)
    _store_tile_one(out, w, row, col, src, offsets, first, stop, add)


@register_jitable(inline="always")
def point_width(itemsize: int) -> int:
    """Output positions per :func:`store_point` tile: :data:`POINT_VECTORS` vectors."""
    return POINT_VECTORS * lanes(itemsize)


@register_jitable(inline="always")
def store_point(out, w, row, col, src, offsets, first, stop, add, rows, vectors):
    """The :func:`_store_tile` intrinsic of a 1x1 conv's product: ``rows`` (:data:`POINT_ROWS` or 1) output
    rows by ``vectors`` vectors of positions (:data:`POINT_VECTORS`, or fewer for a plane's last whole
    vectors), bounds asserted under ``jit.CHECK_BOUNDS``."""
    if CHECK_BOUNDS:
        assert (rows == POINT_ROWS or rows == 1) and 1 <= vectors <= POINT_VECTORS, "store_point: not a point tile"
        check_store_tile(rows, vectors, out, w, row, col, src, offsets, first, stop)
    if rows == POINT_ROWS:
        if vectors == 1:
            _point_tile_1(out, w, row, col, src, offsets, first, stop, add)
        elif vectors == 2:
            _point_tile_2(out, w, row, col, src, offsets, first, stop, add)
        elif vectors == 3:
            _point_tile_3(out, w, row, col, src, offsets, first, stop, add)
        else:
            _point_tile_4(out, w, row, col, src, offsets, first, stop, add)
    elif vectors == 1:
        _point_row_1(out, w, row, col, src, offsets, first, stop, add)
    elif vectors == 2:
        _point_row_2(out, w, row, col, src, offsets, first, stop, add)
    elif vectors == 3:
        _point_row_3(out, w, row, col, src, offsets, first, stop, add)
    else:
        _point_row_4(out, w, row, col, src, offsets, first, stop, add)


@register_jitable(inline="always")
def dot_tile(out, g, g_starts, x, x_starts, length, ahead):
    """The :func:`_dot_tile` intrinsic, :data:`DOT_ROWS` by :data:`DOT_COLS`: the weight gradient's tile."""
    if CHECK_BOUNDS:
        check_dot_tile(DOT_ROWS, DOT_COLS, out, g, g_starts, x, x_starts, length)
    _dot_tile_rows(out, g, g_starts, x, x_starts, length, ahead)


@register_jitable(inline="always")
def dot_row(out, g, g_starts, x, x_starts, length, ahead):
    """:func:`dot_tile` for one row of ``g`` (fewer than :data:`DOT_ROWS` rows)."""
    if CHECK_BOUNDS:
        check_dot_tile(1, DOT_COLS, out, g, g_starts, x, x_starts, length)
    _dot_tile_one(out, g, g_starts, x, x_starts, length, ahead)


@register_jitable(inline="always")
def dot_segments(out, g, g_starts, g_step, x, x_starts, x_step, length, count):
    """The :func:`_dot_segments` intrinsic, :data:`DOT_ROWS` by :data:`DOT_COLS`."""
    if CHECK_BOUNDS:
        check_dot_segments(DOT_ROWS, DOT_COLS, out, g, g_starts, g_step, x, x_starts, x_step, length, count)
    _dot_segments_rows(out, g, g_starts, g_step, x, x_starts, x_step, length, count)


@register_jitable(inline="always")
def dot_segments_row(out, g, g_starts, g_step, x, x_starts, x_step, length, count):
    """:func:`dot_segments` for one row of ``g`` (fewer than :data:`DOT_ROWS` rows)."""
    if CHECK_BOUNDS:
        check_dot_segments(1, DOT_COLS, out, g, g_starts, g_step, x, x_starts, x_step, length, count)
    _dot_segments_one(out, g, g_starts, g_step, x, x_starts, x_step, length, count)


@register_jitable(inline="always")
def dense_tile(out, g, g_starts, x, x_starts, length, ahead):
    """:func:`_dot_tile` of :data:`DENSE_ROWS` by :data:`DENSE_COLS`, prefetching ``ahead`` values along
    ``g``: a dense layer's forward pass, streaming its input (a prefetch cannot fault: it is not checked)."""
    if CHECK_BOUNDS:
        check_dot_tile(DENSE_ROWS, DENSE_COLS, out, g, g_starts, x, x_starts, length)
    _dense_tile(out, g, g_starts, x, x_starts, length, ahead)


@register_jitable
def channel_width(c_out: int, itemsize: int) -> int:
    """Output channels per block of :func:`channel_tile` for a conv of ``c_out`` output channels: one
    vector (:func:`lanes`) where they fit in :data:`NARROW_VECTORS`, else :data:`CHANNEL_VECTORS` vectors."""
    n = lanes(itemsize)
    return n if c_out <= NARROW_VECTORS * n else CHANNEL_VECTORS * n


@register_jitable
def channel_positions(width: int, itemsize: int) -> int:
    """Output positions per :func:`channel_tile` of blocks of ``width`` channels: :data:`CHANNEL_ACCUMULATORS`
    of one vector, or that divided by :data:`CHANNEL_VECTORS` (AVX-512: 24 or 6; AVX2: 12 or 6)."""
    return CHANNEL_ACCUMULATORS * lanes(itemsize) // width


@register_jitable
def check_channel_tile(out, at, w, w_at, src, pos, first, taps, width):
    """Assert the preconditions of a ``channel_tile`` of blocks of ``width`` channels: every read and
    write in bounds."""
    positions = channel_positions(width, out.itemsize)
    assert width == lanes(out.itemsize) or width == CHANNEL_VECTORS * lanes(out.itemsize), \
        "channel_tile: the width is not a block's"
    assert 0 <= at and at + positions * width <= out.size, "channel_tile: the tile is out of bounds"
    assert 0 <= w_at and w_at + taps.size * width <= w.size, "channel_tile: the weights are out of bounds"
    assert 0 <= first and first + positions <= pos.size, "channel_tile: positions out of bounds"
    for p in range(first, first + positions):
        for t in range(taps.size):
            assert 0 <= pos[p] + taps[t] and pos[p] + taps[t] < src.size, "channel_tile: a read of src is out of bounds"


@register_jitable(inline="always")
def channel_tile(out, at, w, w_at, src, pos, first, taps, width, add):
    """The :func:`_channel_tile` intrinsic for blocks of ``width`` channels (see :func:`channel_width`):
    :func:`channel_positions` by one vector or by :data:`CHANNEL_VECTORS`, summed onto what ``out`` holds with ``add``
    (bounds asserted under ``jit.CHECK_BOUNDS``)."""
    if CHECK_BOUNDS:
        check_channel_tile(out, at, w, w_at, src, pos, first, taps, width)
    if width == lanes(out.itemsize):
        _channel_tile_narrow(out, at, w, w_at, src, pos, first, taps, add)
    else:
        _channel_tile_wide(out, at, w, w_at, src, pos, first, taps, add)



@register_jitable(inline="always")
def winograd_input(v, v_at, v_step, p, p_at, p_row, p_col):
    """``v[v_at + (4*u + a)*v_step :][:lanes] = (B^T d B)[u, a]`` for the 4x4 tile ``d[i, j] = p[p_at +
    i*p_row + j*p_col :][:lanes]``: Winograd's F(2x2, 3x3) input transform of one vector of channels
    (bounds asserted under ``jit.CHECK_BOUNDS``)."""
    if CHECK_BOUNDS:
        _check_transform(4, 4, v, v_at, 4 * v_step, v_step, p, p_at, p_row, p_col)
    _winograd_input(v, v_at, 4 * v_step, v_step, p, p_at, p_row, p_col)


@register_jitable(inline="always")
def winograd_output(o, o_at, o_row, o_col, m, m_at, m_step):
    """``o[o_at + r*o_row + q*o_col :][:lanes] = (A^T M A)[r, q]`` for ``r, q < 2``, where ``M[u, a] =
    m[m_at + (4*u + a)*m_step :][:lanes]``: Winograd's F(2x2, 3x3) output transform of one vector of
    channels (bounds asserted under ``jit.CHECK_BOUNDS``)."""
    if CHECK_BOUNDS:
        _check_transform(4, 2, o, o_at, o_row, o_col, m, m_at, 4 * m_step, m_step)
    _winograd_output(o, o_at, o_row, o_col, m, m_at, 4 * m_step, m_step)


@register_jitable(inline="always")
def winograd_gradient(z, z_at, z_step, g, g_at, g_row, g_col):
    """``z[z_at + (4*u + a)*z_step :][:lanes] = (A g A^T)[u, a]`` for the 2x2 tile ``g[r, q] = g[g_at +
    r*g_row + q*g_col :][:lanes]`` of an output gradient: what the weight gradient of Winograd's F(2x2,
    3x3) multiplies the input tiles' transforms by (bounds asserted under ``jit.CHECK_BOUNDS``)."""
    if CHECK_BOUNDS:
        _check_transform(2, 4, z, z_at, 4 * z_step, z_step, g, g_at, g_row, g_col)
    _winograd_gradient(z, z_at, 4 * z_step, z_step, g, g_at, g_row, g_col)


@register_jitable(inline="always")
def transpose_tile(out, out_at, out_step, rows, src, src_at, src_step, cols, plus, plus_at, relu):
    """``out[out_at + c*out_step + p] = src[src_at + p*src_step + c] + plus[plus_at + c]`` for ``c < rows``
    and ``p < cols`` (at most :func:`lanes` each), through a ReLU (``0 if v <= 0 else v``) where ``relu``: a
    tile of a position-major buffer written channel-major, in registers. Nothing else is read or written
    (bounds asserted under ``jit.CHECK_BOUNDS``)."""
    if CHECK_BOUNDS:
        n = lanes(out.itemsize)
        assert 0 <= rows and rows <= n and 0 <= cols and cols <= n, "transpose_tile: more rows or columns than lanes"
        assert out_step >= 0 and src_step >= 0, "transpose_tile: a negative step"
        if rows > 0 and cols > 0:
            assert 0 <= out_at and out_at + (rows - 1) * out_step + cols <= out.size, "transpose_tile: a write is out of bounds"
            assert 0 <= src_at and src_at + (cols - 1) * src_step + rows <= src.size, "transpose_tile: a read is out of bounds"
            assert 0 <= plus_at and plus_at + rows <= plus.size, "transpose_tile: the bias is out of bounds"
    _transpose_tile(out, out_at, out_step, rows, src, src_at, src_step, cols, plus, plus_at, relu)


@register_jitable
def _check_transform(size, out_size, out, out_at, out_row, out_col, src, src_at, src_row, src_col):
    """Assert the preconditions of a Winograd transform of a ``size x size`` tile into an ``out_size x
    out_size`` one: every read and write in bounds."""
    n = lanes(out.itemsize)
    assert out_row >= 0 and out_col >= 0 and src_row >= 0 and src_col >= 0, "winograd: a negative step"
    assert 0 <= out_at and out_at + (out_size - 1) * (out_row + out_col) + n <= out.size, \
        "winograd: a write is out of bounds"
    assert 0 <= src_at and src_at + (size - 1) * (src_row + src_col) + n <= src.size, \
        "winograd: a read is out of bounds"
