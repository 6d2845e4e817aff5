"""Row copies that the conv kernels finish their outputs and gradients with: plus a bias, through a
ReLU, or gated by a ReLU's output (vector loops, inlined into the kernels that call them); the sum of
a row, for bias gradients; the sum of the weight gradients' per-task parts; and a position-major
buffer written out channel-major (the conv kernels that keep channels in the vector lanes)."""
from __future__ import annotations

from ._tiles import lanes, transpose_tile
from .jit import kernel_helper


@kernel_helper
def copy_plus(dst, src, plus):
    """``dst[p] = src[p] + plus`` for every ``p < len(dst)`` (a vectorised row copy)."""
    for p in range(dst.shape[0]):
        dst[p] = src[p] + plus


@kernel_helper
def copy_gated(dst, src, gate):
    """``dst[p] = src[p]`` where ``gate[p] > 0``, else 0, for every ``p < len(dst)``: a gradient through
    the ReLU whose output is ``gate`` (as ``relu_backward``)."""
    for p in range(dst.shape[0]):
        dst[p] = src[p] if gate[p] > 0 else 0


@kernel_helper
def copy_relu(dst, src, plus):
    """:func:`copy_plus` through a ReLU: ``max(src[p] + plus, 0)``, keeping NaN (as ``relu`` does)."""
    for p in range(dst.shape[0]):
        v = src[p] + plus
        dst[p] = 0 if v <= 0 else v


@kernel_helper
def row_sum(row):
    """``row.sum()`` in float64, by a loop of its own, compiled alike in a parallel kernel and in its
    serial twin (:func:`.jit.sized`). Inside a ``prange`` body, ``row.sum()`` becomes a parallel
    reduction of its own (run serially there), whose order differs from the serial twin's sum: the
    bits then depended on the thread count."""
    total = 0.0
    for p in range(row.shape[0]):
        total += row[p]
    return total


@kernel_helper
def sum_shares(sums, bias, grad_w, grad_b):
    """``grad_w[r, k] = sums[:, r, k].sum()`` and ``grad_b[r] = bias[:, r].sum()`` for every row ``r`` of
    ``grad_w`` (R, K) and ``grad_b`` (R,): the float64 parts (shares, at least R, K) and (shares, at least
    R) that a weight gradient's tasks summed, added in share order (loops: an array expression here
    would be a parallel loop of its own)."""
    shares = sums.shape[0]
    for r in range(grad_w.shape[0]):
        total = 0.0
        for share in range(shares):
            total += bias[share, r]
        grad_b[r] = total
        for k in range(grad_w.shape[1]):
            total = 0.0
            for share in range(shares):
                total += sums[share, r, k]
            grad_w[r, k] = total


@kernel_helper
def write_channels(buffer, buffer_at, width, b, c0, count, length, out, out_at, out_step, relu):
    """``out[out_at + c*out_step + p] = buffer[buffer_at + p*width + c] + b[c0 + c]`` for ``c < count`` and ``p <
    length``, through a ReLU with ``relu``: ``length`` positions of a position-major buffer of ``width``
    channels a position written channel-major, a tile of a vector of channels by a vector of positions at a
    time, transposed in registers (:func:`._tiles.transpose_tile`)."""
    n = lanes(buffer.itemsize)
    for v in range(0, count, n):
        for p in range(0, length, n):
            transpose_tile(out, out_at + v * out_step + p, out_step, min(n, count - v), buffer,
                           buffer_at + p * width + v, width, min(n, length - p), b, c0 + v, relu)
