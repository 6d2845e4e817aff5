"""Conv2D in vectorised NumPy: im2col / col2im around BLAS matrix products.

The batch is cut into blocks of samples whose columns (about 1 MB) stay in cache; each block is one
GEMM, ``(C_out, C_in*kH*kW) @ (C_in*kH*kW, block*OH*OW)``, and fastcnn's threads take the blocks in
turn (see :func:`.blas.on_threads`). im2col loops only over the kernel offsets (kH * kW strided
copies, as in Chainer's ``utils/conv.py``). A 1x1 conv without stride or padding needs no columns: it
is one product per sample on the arrays as they lie, the samples dealt to the threads.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import elementwise_numpy, pool_numpy
from .blas import channel_sums, on_threads
from ._compose import gated, pooled, unpooled
from ._windows import window
from .scratch import cropped, zero_padded

_BLOCK_ELEMENTS = 1 << 18  # columns per block: 1 MB of float32, resident in L2


def _blocks(n: int, k: int, p: int) -> list[tuple[int, int]]:
    """``(first_sample, samples)`` blocks for ``k`` rows of columns and ``p`` output pixels per sample."""
    m = max(1, min(n, _BLOCK_ELEMENTS // (k * p)))
    return [(s0, min(m, n - s0)) for s0 in range(0, n, m)] or [(0, 0)]  # an empty batch: one empty block


def _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow, buf) -> np.ndarray:
    """Columns (C*kH*kW, samples*OH*OW) of the padded block ``xp``, written into ``buf``.

    Rows are ordered (c, i, j) to match ``weight.reshape(C_out, -1)``, columns (sample, r, q).
    """
    size, c = xp.shape[:2]
    cols = buf[: c * kh * kw * size * oh * ow].reshape(c, kh, kw, size, oh, ow)
    xt = xp.transpose(1, 0, 2, 3)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = window(xt, i * dh, j * dw, sh, sw, oh, ow)
    return cols.reshape(c * kh * kw, size * oh * ow)


def _channels_first(a: np.ndarray) -> np.ndarray:
    """(m, C, OH, OW) -> (C, m*OH*OW), the column order of :func:`_im2col`."""
    m, c, oh, ow = a.shape
    if m == 1:
        return a.reshape(c, oh * ow)
    return np.ascontiguousarray(a.reshape(m, c, oh * ow).transpose(1, 0, 2)).reshape(c, m * oh * ow)


def _per_sample(n: int, product: Callable[[int], np.ndarray | None]) -> list:
    """``product(s)`` for every sample ``s < n``, the samples dealt round-robin to fastcnn's threads
    (BLAS held to one); returns each thread's results in its order (see :func:`.blas.on_threads`)."""
    return on_threads(lambda worker, workers: [product(s) for s in range(worker, n, workers)])


def conv2d_forward(x, w, b, geo, out=None):
    """``y = conv(x, w) + b`` for an input ``x`` (N, C, H, W) and weight (C_out, C, kH, kW); ``geo`` is
    the conv's :class:`~fastcnn._checks.ConvGeometry` (its padding, stride, dilation and output size).
    A 1x1 conv (``geo.pointwise``) is a product per sample; others are im2col products by blocks.
    Into ``out`` (C-contiguous, the output's shape) if given."""
    if out is None:
        out = np.empty((x.shape[0], w.shape[0]) + geo.out_hw, dtype=x.dtype)
    if geo.pointwise:
        n, c, h, width = x.shape
        xs, w2 = x.reshape(n, c, h * width), w.reshape(w.shape[0], c)
        y = out.reshape(n, w.shape[0], h * width)
        bias = b[:, None]
        _per_sample(n, lambda s: np.add(np.matmul(w2, xs[s], out=y[s]), bias, out=y[s]))
        return out
    xp = zero_padded(x, geo.padding)
    (sh, sw), (dh, dw), (oh, ow) = geo.stride, geo.dilation, geo.out_hw
    n, c = xp.shape[:2]
    c_out, _, kh, kw = w.shape
    k, p = c * kh * kw, oh * ow
    w2 = w.reshape(c_out, k)
    y = out.reshape(n, c_out, p)
    blocks = _blocks(n, k, p)

    def work(worker, workers):
        buf = np.empty(k * blocks[0][1] * p, dtype=xp.dtype)
        for s0, size in blocks[worker::workers]:
            cols = _im2col(xp[s0 : s0 + size], kh, kw, sh, sw, dh, dw, oh, ow, buf)
            prod = (w2 @ cols).reshape(c_out, size, p)
            np.add(prod.transpose(1, 0, 2), b[:, None], out=y[s0 : s0 + size])

    on_threads(work)
    return out


def conv2d_relu_forward(x, w, b, geo, out=None):
    """``relu(conv2d_forward(x, w, b, geo))``, the ReLU in place on the conv's output (NaN kept)."""
    y = conv2d_forward(x, w, b, geo, out)
    return np.maximum(y, 0, out=y)


def conv2d_grad_weight(gy, x, geo):
    """Gradients of a conv of the input ``x`` with respect to its weight, shape (C_out, C, kH, kW), and its bias."""
    if geo.pointwise:
        n, c_out, c = gy.shape[0], gy.shape[1], x.shape[1]
        gs, xs = gy.reshape(n, c_out, gy.shape[2] * gy.shape[3]), x.reshape(n, c, x.shape[2] * x.shape[3])
        parts = [sum(products, np.zeros((c_out, c), gy.dtype))
                 for products in _per_sample(n, lambda s: gs[s] @ xs[s].T)]
        grad_w = parts[0]
        for part in parts[1:]:
            grad_w += part
        return grad_w.reshape(c_out, c, 1, 1), channel_sums(gy)
    xp = zero_padded(x, geo.padding)
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    n, c = xp.shape[:2]
    c_out, oh, ow = gy.shape[1:]
    k, p = c * kh * kw, oh * ow
    blocks = _blocks(n, k, p)

    def work(worker, workers):
        grad = np.zeros((c_out, k), dtype=gy.dtype)
        buf = np.empty(k * blocks[0][1] * p, dtype=xp.dtype)
        for s0, size in blocks[worker::workers]:
            cols = _im2col(xp[s0 : s0 + size], kh, kw, sh, sw, dh, dw, oh, ow, buf)
            grad += _channels_first(gy[s0 : s0 + size]) @ cols.T
        return grad

    parts = on_threads(work)
    grad_w = parts[0]
    for part in parts[1:]:
        grad_w += part
    return grad_w.reshape(c_out, c, kh, kw), channel_sums(gy)


def conv2d_grad_input(gy, w, geo):
    """Gradient of a conv with respect to its input, shape (N, C, H, W)."""
    if geo.pointwise:
        n, c_out, oh, ow = gy.shape
        w2t, gs = w.reshape(c_out, -1).T, gy.reshape(n, c_out, oh * ow)
        grad_x = np.empty((n, w.shape[1], oh * ow), dtype=gy.dtype)
        _per_sample(n, lambda s: np.matmul(w2t, gs[s], out=grad_x[s]))
        return grad_x.reshape(n, w.shape[1], oh, ow)
    (hp, wp), (sh, sw), (dh, dw) = geo.padded_hw, geo.stride, geo.dilation
    n, _, oh, ow = gy.shape
    c_out, c, kh, kw = w.shape
    w2t = w.reshape(c_out, -1).T
    grad_xp = np.zeros((n, c, hp, wp), dtype=gy.dtype)
    blocks = _blocks(n, c * kh * kw, oh * ow)

    def work(worker, workers):
        for s0, size in blocks[worker::workers]:
            cols = (w2t @ _channels_first(gy[s0 : s0 + size])).reshape(c, kh, kw, size, oh, ow)
            bt = grad_xp[s0 : s0 + size].transpose(1, 0, 2, 3)
            for i in range(kh):
                for j in range(kw):
                    window(bt, i * dh, j * dw, sh, sw, oh, ow)[...] += cols[:, i, j]

    on_threads(work)
    return cropped(grad_xp, geo.padding)


def conv2d_relu_grad_weight(gy, gate, x, geo):
    """:func:`conv2d_grad_weight` of a conv with a ReLU after it, whose output is ``gate``."""
    return conv2d_grad_weight(gated(elementwise_numpy, gy, gate), x, geo)


def conv2d_relu_grad_input(gy, gate, w, geo):
    """:func:`conv2d_grad_input` of a conv with a ReLU after it, whose output is ``gate``."""
    return conv2d_grad_input(gated(elementwise_numpy, gy, gate), w, geo)


def conv2d_max_pool2d_forward(x, w, b, geo, pool, relu):
    """``max_pool2d(conv2d(...))``, and a ReLU after it with ``relu``, as the separate ops: ``pool`` is
    the pool's :class:`~fastcnn._checks.PoolGeometry`."""
    return pooled(pool_numpy, elementwise_numpy, conv2d_forward(x, w, b, geo), pool, relu)


def conv2d_max_pool2d_grad_weight(gp, argmax, gate, x, geo):
    """:func:`conv2d_grad_weight` of the conv output (N, C_out) + ``geo.out_hw`` that a max-pool took to
    ``gp`` with ``argmax``; if ``gate`` is not None, through a ReLU after the pool, whose output it is."""
    gy = unpooled(pool_numpy, elementwise_numpy, gp, argmax, gate, *geo.out_hw)
    return conv2d_grad_weight(gy, x, geo)


def conv2d_max_pool2d_grad_input(gp, argmax, gate, w, geo):
    """:func:`conv2d_grad_input` of the conv output (N, C_out) + ``geo.out_hw`` that a max-pool took to
    ``gp`` with ``argmax``; ``gate`` as in :func:`conv2d_max_pool2d_grad_weight`."""
    gy = unpooled(pool_numpy, elementwise_numpy, gp, argmax, gate, *geo.out_hw)
    return conv2d_grad_input(gy, w, geo)
