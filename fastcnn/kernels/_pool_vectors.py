"""2x2 max-pooling with stride 2, a vector of windows at a time, written as LLVM vector code.

A pooled row of an MNIST net is short (13 windows of a 26-wide plane), so LLVM's loop vectoriser,
which wants long loops, left the windows scalar (lenet's first pool took 75 us a batch; 25 us this
way). Here one call handles up to
a vector of windows of one row pair: it loads both input rows, splits even and odd columns with
shuffles, and picks each window's first maximum (or last NaN, as PyTorch) with compares and selects
(:func:`_max_pairs`); the gradient goes back the same way, each pooled value to the one position of its window that won
(:func:`unpool_pairs`). Loads and stores past the row's last window are masked off, so a call never
touches memory outside the row pair, and parallel tasks can own neighbouring rows.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from ._tiles import _float_arrays, _int, _Vectors, lanes
from .jit import CHECK_BOUNDS

def _first_of(b, va, ia, vb, ib):
    """Per lane, the value and index PyTorch's rule keeps of ``(va, vb)``, ``va`` coming first: ``vb``
    if ``vb > va`` or ``vb`` is NaN, else ``va``. So ties go to ``va`` and a NaN wins, the later one if
    both are; applied to two halves of a window, it gives the window's first maximum or last NaN."""
    take_b = b.or_(b.fcmp_ordered(">", vb, va), b.fcmp_unordered("uno", vb, vb))
    return b.select(take_b, vb, va), b.select(take_b, ib, ia)


@intrinsic
def _max_pairs(typingctx, x, at, step, w, bias, relu, y, out, idx, base, count):
    """``_max_pairs(x, at, step, w, bias, relu, y, out, idx, base, count)``: for window ``q < count``,
    the maximum of ``x[at + 2q]``, ``x[at + 2q + 1]``, ``x[at + step + 2q]``, ``x[at + step + 2q + 1]``
    (each plus ``bias``, unless it is None) to ``y[out + q]`` (with ``relu``, a maximum <= 0 as 0, NaN
    kept), and its position (``base + 2q`` plus 0, 1, ``w`` or ``w + 1``: ties go to the first in that
    order, the last NaN wins) to ``idx[out + q]``, unless ``idx`` is None (inference keeps no argmax:
    the positions are then never computed).

    ``step`` is the distance between the two input rows and ``w`` the width the positions count in;
    they differ when ``x`` is a convolution's wide output (see :mod:`.conv_numba`). ``x`` and ``y`` are
    1-D arrays of one float dtype, ``idx`` of int64; ``count`` is at most ``lanes``
    (:func:`._tiles.lanes`)."""
    indexed = not isinstance(idx, types.NoneType)
    if not (_float_arrays(x, y) and x.ndim == y.ndim == 1 and isinstance(bias, (types.Float, types.NoneType))
            and (not indexed or (isinstance(idx, types.Array) and idx.dtype == types.int64 and idx.ndim == 1))
            and isinstance(relu, types.Boolean)):
        return None
    sig = types.void(x, types.intp, types.intp, types.intp, bias, relu, y, types.intp, idx, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        x_t, y_t, i_t = signature.args[0], signature.args[6], signature.args[8]
        x_a, y_a = (context.make_array(t)(context, builder, args[k]) for t, k in ((x_t, 0), (y_t, 6)))
        at, step, w, relu, out, base, count = args[1], args[2], args[3], args[5], args[7], args[9], args[10]
        v = _Vectors(context, builder, x_t.dtype)
        n, pairs = v.n, builder.mul(count, _int(2))
        low, high = v.below(_int(0), pairs), v.below(_int(v.n), pairs)
        evens, odds = list(range(0, 2 * n, 2)), list(range(1, 2 * n, 2))
        plus = None if isinstance(bias, types.NoneType) else v.splat(context.cast(builder, args[4], bias, x_t.dtype))
        columns = []
        for start in (at, builder.add(at, step)):
            first = v.load(x_a.data, start, low, v.zero)
            second = v.load(x_a.data, builder.add(start, _int(n)), high, v.zero)
            if plus is not None:  # as the convolution adds its bias, before the maximum (same ties)
                first, second = builder.fadd(first, plus), builder.fadd(second, plus)
            columns += [v.shuffle(first, second, evens), v.shuffle(first, second, odds)]
        a, b, c, d = columns
        top = _first_of(builder, a, v.splat(_int(0)), b, v.splat(_int(1)))
        bottom = _first_of(builder, c, v.splat(w), d, v.splat(builder.add(w, _int(1))))
        best, offset = _first_of(builder, *top, *bottom)
        cut = builder.and_(v.splat(relu), builder.fcmp_ordered("<=", best, v.zero))  # as relu: 0 if v <= 0 else v
        best = builder.select(cut, v.zero, best)
        position = builder.add(builder.add(v.splat(base), builder.add(v.iota, v.iota)), offset)
        windows = v.below(_int(0), count)
        v.store(best, y_a.data, out, windows)
        if indexed:  # (without, LLVM drops the positions' arithmetic)
            v.store(position, context.make_array(i_t)(context, builder, args[8]).data, out, windows)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _unpool_pairs(typingctx, g, at, idx, base, w, gate, gated, grad, to, step, count, width):
    """``_unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width)``: the inverse of
    :func:`_max_pairs`. For window ``q < count``, ``g[at + q]`` goes to the position ``idx[at + q]`` names
    among ``grad[to + 2q]``, ``grad[to + 2q + 1]``, ``grad[to + step + 2q]`` and ``grad[to + step + 2q + 1]``
    (``base + 2q`` plus 0, 1, ``w`` or ``w + 1``), and the other three get 0; so do the positions from
    ``2 * count`` to ``width`` (at most ``2 * lanes``) of both rows. With ``gated``, a window whose
    ``gate[at + q]`` (the ReLU's output) is not > 0 passes 0 instead; without, ``gate`` is not read.
    Returns whether every index named a position of its window; where one did not, that window's four
    positions are 0 and the caller must scatter instead."""
    if not (_float_arrays(g, gate, grad) and g.ndim == gate.ndim == grad.ndim == 1 and isinstance(idx, types.Array)
            and idx.dtype == types.int64 and idx.ndim == 1 and isinstance(gated, types.Boolean)):
        return None
    sig = types.boolean(g, types.intp, idx, types.intp, types.intp, gate, gated, grad, types.intp, types.intp,
                        types.intp, types.intp)

    def codegen(context, builder, signature, args):
        g_t, i_t, e_t, o_t = signature.args[0], signature.args[2], signature.args[5], signature.args[7]
        g_a, i_a, e_a, o_a = (context.make_array(t)(context, builder, args[k])
                              for t, k in ((g_t, 0), (i_t, 2), (e_t, 5), (o_t, 7)))
        at, base, w, gated, to, step, count, width = args[1], args[3], args[4], args[6], args[8], args[9], args[10], args[11]
        v = _Vectors(context, builder, g_t.dtype)
        n = v.n
        windows = v.below(_int(0), count)
        values = v.load(g_a.data, at, windows, v.zero)
        one = ir.Constant(v.vty, [ir.Constant(v.fty, 1.0)] * n)
        gate_values = v.load(e_a.data, at, builder.and_(windows, v.splat(gated)), one)  # ungated: no lane read
        values = builder.select(builder.fcmp_ordered(">", gate_values, v.zero), values, v.zero)
        corner = builder.add(v.splat(base), builder.add(v.iota, v.iota))
        offset = builder.sub(v.load(i_a.data, at, windows, corner), corner)  # masked-off lanes: offset 0, value 0
        hits = [builder.icmp_signed("==", offset, v.splat(k)) for k in (_int(0), _int(1), w, builder.add(w, _int(1)))]
        inside = builder.or_(builder.or_(hits[0], hits[1]), builder.or_(hits[2], hits[3]))
        reduce_and = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(1), [inside.type]),
                                                    f"llvm.vector.reduce.and.v{n}i1")
        parts = [builder.select(hit, values, v.zero) for hit in hits]
        half = n // 2
        interleave = [[k + j * n for k in range(lo, lo + half) for j in (0, 1)] for lo in (0, half)]
        masks = (v.below(_int(0), width), v.below(_int(n), width))
        for row, (left, right) in zip((to, builder.add(to, step)), (parts[:2], parts[2:])):
            for k in (0, 1):
                v.store(v.shuffle(left, right, interleave[k]), o_a.data, builder.add(row, _int(k * n)), masks[k])
        return builder.call(reduce_and, [inside])

    return sig, codegen


@intrinsic
def _clear(typingctx, a, start, length):
    """``_clear(a, start, length)``: ``a[start : start + length] = 0``, a vector at a time (a 1-D float array)."""
    if not (_float_arrays(a) and a.ndim == 1):
        return None
    sig = types.void(a, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        a_a = context.make_array(signature.args[0])(context, builder, args[0])
        start, length = args[1], args[2]
        v = _Vectors(context, builder, signature.args[0].dtype)
        whole_vectors = builder.udiv(length, _int(v.n))
        everything = v.below(_int(0), _int(v.n))
        with cgutils.for_range(builder, whole_vectors) as loop:
            v.store(v.zero, a_a.data, builder.add(start, builder.mul(loop.index, _int(v.n))), everything)
        done = builder.mul(whole_vectors, _int(v.n))
        v.store(v.zero, a_a.data, builder.add(start, done), v.below(done, length))
        return context.get_dummy_value()

    return sig, codegen


def _holds(idx, end):
    """Whether ``idx`` has ``end`` values, or is None (nothing is written to it)."""


@overload(_holds)
def _holds_typed(idx, end):
    if isinstance(idx, types.NoneType):
        return lambda idx, end: True
    return lambda idx, end: end <= idx.size


@register_jitable(inline="always")
def max_pairs(x, at, step, w, bias, relu, y, out, idx, base, count):
    """:func:`_max_pairs`, its reads and writes asserted in bounds under ``jit.CHECK_BOUNDS``."""
    if CHECK_BOUNDS:
        assert 0 <= count and count <= lanes(x.itemsize), "max_pairs: count is not in [0, lanes]"
        assert 0 <= at and 0 <= at + step and at + 2 * count <= x.size and at + step + 2 * count <= x.size, \
            "max_pairs: a read of x is out of bounds"
        assert 0 <= out and out + count <= y.size and _holds(idx, out + count), "max_pairs: a write is out of bounds"
    _max_pairs(x, at, step, w, bias, relu, y, out, idx, base, count)


@register_jitable(inline="always")
def unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width):
    """:func:`_unpool_pairs`, its reads and writes asserted in bounds under ``jit.CHECK_BOUNDS``."""
    if CHECK_BOUNDS:
        n = lanes(g.itemsize)
        assert 0 <= count and count <= n and 2 * count <= width and width <= 2 * n, \
            "unpool_pairs: count or width out of range"
        assert 0 <= at and at + count <= g.size and at + count <= idx.size, "unpool_pairs: a read is out of bounds"
        assert not gated or at + count <= gate.size, "unpool_pairs: a read of gate is out of bounds"
        assert 0 <= to and 0 <= to + step and to + width <= grad.size and to + step + width <= grad.size, \
            "unpool_pairs: a write of grad is out of bounds"
    return _unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width)


@register_jitable(inline="always")
def clear(a, start, length):
    """:func:`_clear`, asserted in bounds under ``jit.CHECK_BOUNDS``."""
    if CHECK_BOUNDS:
        assert 0 <= length and 0 <= start and start + length <= a.size, "clear: out of bounds"
    _clear(a, start, length)
