"""Plain, obviously correct loop implementations that every backend is compared against.

Everything here computes in float64 and loops over output positions; speed is not a goal.
"""
from __future__ import annotations

import numpy as np


def conv2d(x, w, b=None, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + sum(pads[0]), wd + sum(pads[1])))
    xp[:, :, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + wd] = x
    sh, sw = stride
    dh, dw = dilation
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, co, oh, ow))
    cig = w.shape[1]  # input channels per group
    for s in range(n):
        for o in range(co):
            first = o // (co // groups) * cig
            for r in range(oh):
                for q in range(ow):
                    total = 0.0 if b is None else float(b[o])
                    for ci in range(cig):
                        for i in range(kh):
                            for j in range(kw):
                                total += w[o, ci, i, j] * xp[s, first + ci, r * sh + i * dh, q * sw + j * dw]
                    y[s, o, r, q] = total
    return y


def conv2d_backward(gy, x, w, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + sum(pads[0]), wd + sum(pads[1])))
    xp[:, :, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + wd] = x
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    sh, sw = stride
    dh, dw = dilation
    cig = w.shape[1]
    for s in range(n):
        for o in range(co):
            first = o // (co // groups) * cig
            for r in range(gy.shape[2]):
                for q in range(gy.shape[3]):
                    for ci in range(cig):
                        for i in range(kh):
                            for j in range(kw):
                                a, bcol = r * sh + i * dh, q * sw + j * dw
                                gw[o, ci, i, j] += gy[s, o, r, q] * xp[s, first + ci, a, bcol]
                                gxp[s, first + ci, a, bcol] += gy[s, o, r, q] * w[o, ci, i, j]
    gx = gxp[:, :, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + wd]
    return gx, gw, gy.sum(axis=(0, 2, 3))


def _pool_out(size, k, s, p, d=1, ceil_mode=False):
    """PyTorch's pooling_output_shape, written out again."""
    numerator = size + 2 * p - d * (k - 1) - 1
    out = -(-numerator // s) + 1 if ceil_mode else numerator // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_windows(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = _pool_out(h, kh, sh, ph, dh, ceil_mode)
    ow = _pool_out(w, kw, sw, pw, dw, ceil_mode)
    for r in range(oh):
        for q in range(ow):
            cells = [
                (r * sh - ph + i * dh, q * sw - pw + j * dw)
                for i in range(kh)
                for j in range(kw)
            ]
            yield r, q, cells, (oh, ow)


def max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """Returns (y, argmax): the first maximum in row-major order; if the window holds NaN, the last NaN
    (PyTorch's CPU rule: take ``v`` when ``v > best or isnan(v)``)."""
    n, c, h, w = x.shape
    y = idx = None
    for r, q, cells, (oh, ow) in _pool_windows(x, kernel, stride, padding, dilation, ceil_mode):
        if y is None:
            y = np.empty((n, c, oh, ow), x.dtype)
            idx = np.empty((n, c, oh, ow), np.int64)
        for s in range(n):
            for ch in range(c):
                best, best_at = None, None
                for a, bcol in cells:
                    if not (0 <= a < h and 0 <= bcol < w):
                        continue
                    v = x[s, ch, a, bcol]
                    if best is None or v > best or np.isnan(v):
                        best, best_at = v, a * w + bcol
                y[s, ch, r, q] = best
                idx[s, ch, r, q] = best_at
    return y, idx


def avg_pool2d(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """PyTorch's CPU loop: the divisor is the window cut at the right padding (with padding counted),
    or its count of input elements, or ``divisor_override``."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = _pool_out(h, kh, sh, ph, 1, ceil_mode), _pool_out(w, kw, sw, pw, 1, ceil_mode)
    y = np.empty((n, c, oh, ow))
    for r in range(oh):
        for q in range(ow):
            h0, w0 = r * sh - ph, q * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            size = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            total = np.zeros((n, c))
            for a in range(h0, h1):
                for bcol in range(w0, w1):
                    total += x[:, :, a, bcol]
            divisor = divisor_override or (size if count_include_pad else (h1 - h0) * (w1 - w0))
            y[:, :, r, q] = total / divisor
    return y


def numeric_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar function ``f`` at float64 ``x``."""
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return g


def random_batch_norm(layer, seed):
    """``layer`` (a BatchNorm1D/2D) with random weight, bias and running statistics (variances in [0.5, 2])."""
    rng = np.random.default_rng(seed)
    n = layer.num_features
    layer.params["weight"] = rng.uniform(0.5, 2, n).astype(np.float32)
    layer.params["bias"] = rng.uniform(-1, 1, n).astype(np.float32)
    layer.buffers["running_mean"] = rng.uniform(-1, 1, n).astype(np.float32)
    layer.buffers["running_var"] = rng.uniform(0.5, 2, n).astype(np.float32)
    return layer
