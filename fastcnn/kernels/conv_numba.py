"""Conv2D as direct ``@njit(parallel=True)`` loops, built for the small-channel convs of MNIST nets.

Stride 1 works in a "wide", channel-major layout: each channel of the whole batch is one flat run of
``N * Hp * Wp`` values, and output pixel ``(s, r, q)`` sits at flat position ``s*Hp*Wp + r*Wp + q`` in
the output run, so kernel element ``(i, j)`` reads the input run shifted by ``i*dh*Wp + j*dw``. Every
(channel, kernel row) term is then one long contiguous multiply-add that LLVM vectorises; positions
that are not real output pixels (the last columns and rows of each sample) are scratch, dropped from
the output and zero in the gradient. The runs are cut into cache-sized blocks, which are also the
parallel tasks. Other strides run row by row.

Every parallel loop writes a disjoint slice of its output, so there are no races and the result does
not depend on the thread count. The public entry points pick the stride-1 or the general kernel in
Python, so only the kernel a network uses is ever compiled, and allocate the large arrays with NumPy,
which asks the kernel for huge pages (far fewer page faults than Numba's own allocations).
"""
from __future__ import annotations

import numpy as np

from ._blas import channel_sums
from ._jit import kernel_helper, parallel_kernel, prange, sized
from ._scratch import derived, scratch
from ._taps import add_tap_dots, add_taps, add_taps4, tap_dots4

_BLOCK = 2048  # values per block of a run: the accumulator stays in L1 cache


@kernel_helper
def _correlate_group(out, b, runs, o0, o1, lo, hi, base, row_step, taps, dw):
    """Block ``[lo, hi)`` of output runs ``o0 <= o < o1`` (at most four):
    ``out[o, lo + p] = b[o] + sum over (c, i, j) of taps[o, c, i, j] * runs[c, base + i*row_step + j*dw + p]``.

    Shared by the forward pass and the input gradient (which reads its runs backwards by rows).
    """
    n_in, kh = taps.shape[1], taps.shape[2]
    for o in range(o0, o1):
        out[o, lo:hi] = b[o]
    if o1 - o0 == 4:
        a0, a1, a2, a3 = out[o0, lo:hi], out[o0 + 1, lo:hi], out[o0 + 2, lo:hi], out[o0 + 3, lo:hi]
        for c in range(n_in):
            for i in range(kh):
                add_taps4(a0, a1, a2, a3, runs[c, base + i * row_step :], taps[o0:o1, c, i], dw)
    else:
        for o in range(o0, o1):
            for c in range(n_in):
                for i in range(kh):
                    add_taps(out[o, lo:hi], runs[c, base + i * row_step :], taps[o, c, i], dw)


@kernel_helper
def _copy(dst, src):
    """``dst[p] = src[p]`` for every ``p < len(dst)`` (a vectorised row copy)."""
    for p in range(dst.shape[0]):
        dst[p] = src[p]


def _runs(a, hp, wp, role, head=0, tail=0):
    """``a`` (N, C, H, W) as runs (C, head + N*hp*wp + tail) in the scratch array ``role``: each
    sample's plane at the top left of an ``hp x wp`` block, zeros elsewhere (the scratch positions, and
    the head and tail that shifted reads run into). Made once per :class:`._scratch.shared_inputs` block."""
    n, c = a.shape[:2]
    return derived(role, (c, head + n * hp * wp + tail), a.dtype, a, (hp, wp, head, tail),
                   lambda runs: sized(_fill_runs, a.size)(a, runs, hp, wp, head))


@parallel_kernel
def _fill_runs(a, runs, hp, wp, head):
    n, c, h, w = a.shape
    plane = hp * wp
    for task in prange(n * c):
        s, ch = task // c, task % c
        start = head + s * plane
        if s == 0:
            runs[ch, :head] = 0
        if w == wp:  # no scratch columns: the plane is one run
            _copy(runs[ch, start : start + h * w], a[s, ch].reshape(h * w))
        else:
            for r in range(h):
                row = start + r * wp
                _copy(runs[ch, row : row + w], a[s, ch, r])
                runs[ch, row + w : row + wp] = 0
        end = start + plane if s < n - 1 else runs.shape[1]
        runs[ch, start + h * wp : end] = 0


def _reach(kh, kw, wp, dh, dw):
    """How far a kernel's shifted reads reach along a run: the zeros the input's runs need after them
    (the forward pass, the weight gradient) and the output gradient's runs before them (the input gradient)."""
    return (kh - 1) * dh * wp + (kw - 1) * dw


@parallel_kernel
def _conv_wide(xr, w, b, yr, y, hp, wp, dh, dw):
    """Stride-1 forward pass in the wide layout (see the module docstring): runs ``xr`` -> ``y``."""
    c_out, total = yr.shape
    oh = y.shape[2]
    blocks, groups = (total + _BLOCK - 1) // _BLOCK, (c_out + 3) // 4
    for task in prange(groups * blocks):
        g, b0 = task // blocks, (task % blocks) * _BLOCK
        _correlate_group(yr, b, xr, 4 * g, min(4 * g + 4, c_out), b0, min(b0 + _BLOCK, total), b0, dh * wp, w, dw)
    for task in prange(y.shape[0] * c_out):
        s, co = task // c_out, task % c_out
        for r in range(oh):
            _copy(y[s, co, r], yr[co, s * hp * wp + r * wp :])


@parallel_kernel
def _conv_strided(xp, w, b, sh, sw, dh, dw, oh, ow):
    """Forward pass for any stride, one output row at a time."""
    n, c_in, hp, wp = xp.shape
    c_out, _, kh, kw = w.shape
    y = np.empty((n, c_out, oh, ow), dtype=xp.dtype)
    for task in prange(n * c_out):
        s, co = task // c_out, task % c_out
        for r in range(oh):
            out = y[s, co, r]
            out[:] = b[co]
            for ci in range(c_in):
                for i in range(kh):
                    row = xp[s, ci, r * sh + i * dh]
                    for j in range(kw):
                        wv = w[co, ci, i, j]
                        for q in range(ow):
                            out[q] += wv * row[q * sw + j * dw]
    return y


def conv2d_forward(xp, w, b, sh, sw, dh, dw, oh, ow):
    """``y = conv(xp, w) + b`` for a padded input ``xp`` (N, C, Hp, Wp) and weight (C_out, C, kH, kW)."""
    work = xp.shape[0] * oh * ow * w.size
    if sh != 1 or sw != 1:
        return sized(_conv_strided, work)(xp, w, b, sh, sw, dh, dw, oh, ow)
    n, _, hp, wp = xp.shape
    c_out, _, kh, kw = w.shape
    xr = _runs(xp, hp, wp, "input runs", tail=_reach(kh, kw, wp, dh, dw))
    y = np.empty((n, c_out, oh, ow), dtype=xp.dtype)
    sized(_conv_wide, work)(xr, w, b, scratch("wide out", (c_out, n * hp * wp), xp.dtype), y, hp, wp, dh, dw)
    return y


@parallel_kernel
def _grad_weight_wide(gr, head, xr, kh, kw, wp, dh, dw):
    """Stride-1 weight and bias gradients in the wide layout: dot products of the runs ``gr`` (of the
    output gradient, from ``head`` on) and ``xr`` (of the input), for four output channels and one input
    channel per task; the tasks of input channel 0 also sum the runs (their scratch positions are 0)."""
    c_out, total = gr.shape[0], gr.shape[1] - head
    c_in = xr.shape[0]
    grad_w = np.empty((c_out, c_in, kh, kw), dtype=gr.dtype)
    grad_b = np.empty(c_out, dtype=gr.dtype)
    groups = (c_out + 3) // 4
    for task in prange(groups * c_in):
        g, ci = task // c_in, task % c_in
        o0, o1 = 4 * g, min(4 * g + 4, c_out)
        sums = np.zeros((4, kh, kw), dtype=np.float64)  # float64 across blocks
        bias = np.zeros(4, dtype=np.float64)
        part = np.empty((4, kw), dtype=gr.dtype)
        for b0 in range(0, total, _BLOCK):
            b1 = min(b0 + _BLOCK, total)
            if ci == 0:
                for o in range(o1 - o0):
                    bias[o] += gr[o0 + o, head + b0 : head + b1].sum()
            for i in range(kh):
                src = xr[ci, b0 + i * dh * wp :]
                if o1 - o0 == 4:
                    g0, g1, g2, g3 = gr[o0, head:], gr[o0 + 1, head:], gr[o0 + 2, head:], gr[o0 + 3, head:]
                    tap_dots4(part, g0[b0:b1], g1[b0:b1], g2[b0:b1], g3[b0:b1], src, dw)
                else:
                    for o in range(o1 - o0):
                        part[o, :] = 0
                        add_tap_dots(part[o], gr[o0 + o, head + b0 : head + b1], src, dw)
                for o in range(o1 - o0):
                    for j in range(kw):
                        sums[o, i, j] += part[o, j]
        for o in range(o1 - o0):
            for i in range(kh):
                for j in range(kw):
                    grad_w[o0 + o, ci, i, j] = sums[o, i, j]
            if ci == 0:
                grad_b[o0 + o] = bias[o]
    return grad_w, grad_b


@parallel_kernel
def _grad_weight_strided(gy, xp, kh, kw, sh, sw, dh, dw):
    """Weight gradient for any stride, one output row at a time."""
    n, c_in = xp.shape[0], xp.shape[1]
    c_out, oh, ow = gy.shape[1], gy.shape[2], gy.shape[3]
    grad_w = np.empty((c_out, c_in, kh, kw), dtype=gy.dtype)
    for task in prange(c_out * c_in):
        co, ci = task // c_in, task % c_in
        for i in range(kh):
            for j in range(kw):
                total = 0.0  # float64 across samples
                for s in range(n):
                    for r in range(oh):
                        row = xp[s, ci, r * sh + i * dh]
                        for q in range(ow):
                            total += gy[s, co, r, q] * row[q * sw + j * dw]
                grad_w[co, ci, i, j] = total
    return grad_w


def conv2d_grad_weight(gy, xp, kh, kw, sh, sw, dh, dw):
    """Gradients of a conv with respect to its weight, shape (C_out, C, kH, kW), and its bias."""
    work = gy.size * xp.shape[1] * kh * kw
    if sh != 1 or sw != 1:
        return sized(_grad_weight_strided, work)(gy, xp, kh, kw, sh, sw, dh, dw), channel_sums(gy)
    hp, wp = xp.shape[2:]
    reach = _reach(kh, kw, wp, dh, dw)
    xr = _runs(xp, hp, wp, "input runs", tail=reach)
    gr = _runs(gy, hp, wp, "grad runs", head=reach)  # the input gradient's layout, so the two share the runs
    return sized(_grad_weight_wide, work)(gr, reach, xr, kh, kw, wp, dh, dw)


@parallel_kernel
def _grad_input_wide(gr, head, w, xr, grad_xp, dh, dw):
    """Stride-1 input gradient in the wide layout: ``grad[p] = sum(w[i, j] * gy[p - i*dh*Wp - j*dw])``.

    The gradient's runs cover every padded-input position, and the shifted reads of ``gy`` land on its
    zero scratch positions or zero head wherever they fall outside the output.
    """
    n, c_in, hp, wp = grad_xp.shape
    c_out, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    total = n * hp * wp
    taps = np.empty((c_in, c_out, kh, kw), dtype=w.dtype)  # each kernel row reversed
    for ci in range(c_in):
        for co in range(c_out):
            for i in range(kh):
                for j in range(kw):
                    taps[ci, co, i, j] = w[co, ci, i, kw - 1 - j]
    zero = np.zeros(c_in, dtype=xr.dtype)
    blocks, groups = (total + _BLOCK - 1) // _BLOCK, (c_in + 3) // 4
    for task in prange(groups * blocks):
        g, b0 = task // blocks, (task % blocks) * _BLOCK
        _correlate_group(xr, zero, gr, 4 * g, min(4 * g + 4, c_in), b0, min(b0 + _BLOCK, total),
                         head + b0 - (kw - 1) * dw, -dh * wp, taps, dw)
    for task in prange(n * c_in):
        s, ci = task // c_in, task % c_in
        _copy(grad_xp[s, ci].reshape(hp * wp), xr[ci, s * hp * wp :])


@parallel_kernel
def _grad_input_strided(gy, w, hp, wp, sh, sw, dh, dw):
    """Input gradient for any stride, scattering one output row at a time."""
    n, c_out, oh, ow = gy.shape
    c_in, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    grad_xp = np.zeros((n, c_in, hp, wp), dtype=gy.dtype)
    for task in prange(n * c_in):
        s, ci = task // c_in, task % c_in
        for co in range(c_out):
            for i in range(kh):
                for r in range(oh):
                    row = grad_xp[s, ci, r * sh + i * dh]
                    for q in range(ow):
                        g = gy[s, co, r, q]
                        for j in range(kw):
                            row[q * sw + j * dw] += w[co, ci, i, j] * g
    return grad_xp


def conv2d_grad_input(gy, w, hp, wp, sh, sw, dh, dw):
    """Gradient of a conv with respect to its padded input, shape (N, C, hp, wp)."""
    work = gy.size * w.shape[1] * w.shape[2] * w.shape[3]
    if sh != 1 or sw != 1:
        return sized(_grad_input_strided, work)(gy, w, hp, wp, sh, sw, dh, dw)
    n, c_in, kh, kw = gy.shape[0], w.shape[1], w.shape[2], w.shape[3]
    head = _reach(kh, kw, wp, dh, dw)
    gr = _runs(gy, hp, wp, "grad runs", head=head)
    grad_xp = np.empty((n, c_in, hp, wp), dtype=gy.dtype)
    sized(_grad_input_wide, work)(gr, head, w, scratch("wide out", (c_in, n * hp * wp), gy.dtype), grad_xp, dh, dw)
    return grad_xp
