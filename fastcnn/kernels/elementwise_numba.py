"""Element-wise training steps as Numba loops: ReLU and LeakyReLU and their gradients, a sum (through a
ReLU: a residual block's output), tanh, the
gradients of tanh and the sigmoid (from their outputs: no library call), dropout, and the Adam update.

SiLU and tanh-GELU have no Numba kernels: ``exp`` and ``tanh`` compile to scalar library calls (see
:mod:`.loss_numba`), and a parallel loop of them was no faster than NumPy's vectorised versions on 2
cores (float32, 1.4M elements: SiLU 11.5 against 7.5 ms forward, GELU-tanh 122 against 16 ms;
LeakyReLU, which needs no library call, 0.6 against 17 ms). GELU's ``erf`` is, for float32, the
rational function of :mod:`._erf`, which vectorises; float64 keeps ``math.erf``. So is tanh's
(:func:`tanh_forward`).
"""
from __future__ import annotations

import math

import numpy as np

from .jit import kernel_helper, parallel_kernel, prange, sized
from ._erf import ERF_CLAMP, erf_rational
from ._mask import kept


def relu_forward(x, out=None):
    """``max(x, 0)``, keeping NaN; into ``out`` (C-contiguous, ``x``'s shape; ``x`` itself for in place) if given."""
    return sized(_relu_forward, x.size)(x, np.empty_like(x) if out is None else out)


def relu_backward(grad, y):
    """``grad`` where the ReLU output ``y`` is positive, else 0."""
    return sized(_relu_backward, grad.size)(grad, y)


def add_forward(a, b, relu, out=None):
    """``a + b`` (C-contiguous, one shape and dtype), through a ReLU (NaN kept) with ``relu``, in one
    pass; into ``out`` (C-contiguous, their shape; ``a`` or ``b`` itself for in place) if given."""
    return sized(_add, a.size)(a, b, relu, np.empty_like(a) if out is None else out)


def tanh_forward(x, out=None):
    """``tanh(x)``, NaN kept; into ``out`` (C-contiguous, ``x``'s shape; ``x`` itself for in place) if given.
    For float32 a rational function, which vectorises (Eigen's ``generic_fast_tanh_float``: at most
    4e-7 from tanh, tested); float64 ``math.tanh``."""
    return sized(_tanh_forward, x.size)(x, np.empty_like(x) if out is None else out, x.dtype == np.float32)


def tanh_backward(grad, y):
    """Gradient of tanh from its output ``y``: ``grad * (1 - y**2)``, in one pass (NumPy's makes two
    temporaries)."""
    return sized(_from_output, grad.size)(grad, y, grad.dtype.type(1), False)


def sigmoid_backward(grad, y):
    """Gradient of the sigmoid from its output ``y``: ``grad * y * (1 - y)``, in one pass."""
    return sized(_from_output, grad.size)(grad, y, grad.dtype.type(1), True)


def dropout(x, seed, threshold, scale):
    """``x`` times ``scale`` where the element survives (see :func:`._mask.kept`), else 0; also the
    gradient (the same mask, drawn again from ``seed``)."""
    return sized(_dropout, x.size)(x, seed, threshold, scale)


@parallel_kernel
def _relu_forward(x, out):
    """:func:`relu_forward`, element by element."""
    flat, y = x.reshape(x.size), out.reshape(out.size)
    for i in prange(flat.size):
        v = flat[i]
        y[i] = 0 if v <= 0 else v
    return out


@parallel_kernel
def _add(a, b, relu, out):
    """:func:`add_forward`, element by element."""
    af, bf, y = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    for i in prange(af.size):
        v = af[i] + bf[i]
        y[i] = (0 if v <= 0 else v) if relu else v
    return out


_TANH_CLAMP = np.float32(7.90531110763549805)  # where the rational function reaches +-1 in float32
_TANH_NUMERATOR = tuple(np.float32(a) for a in (  # x^1, x^3, ..., x^13
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08, -8.60467152213735e-11,
    2.00018790482477e-13, -2.76076847742355e-16))
_TANH_DENOMINATOR = tuple(np.float32(b) for b in (  # x^0, x^2, ..., x^6
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))


@parallel_kernel
def _tanh_forward(x, out, fast):
    """:func:`tanh_forward`, element by element."""
    flat, y = x.reshape(x.size), out.reshape(out.size)
    for i in prange(flat.size):
        y[i] = _tanh(flat[i], fast)
    return out


@kernel_helper
def _tanh(v, fast):
    """``tanh(v)``: the rational function with ``fast`` (float32, in float32 arithmetic: float64's division
    is several times slower), else the library's."""
    if not fast:
        return math.tanh(v)
    c = _TANH_CLAMP if v > _TANH_CLAMP else (-_TANH_CLAMP if v < -_TANH_CLAMP else v)  # NaN stays NaN
    x2 = c * c
    a1, a3, a5, a7, a9, a11, a13 = _TANH_NUMERATOR
    b0, b2, b4, b6 = _TANH_DENOMINATOR
    p = ((((((a13 * x2 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2 + a1) * c
    q = ((b6 * x2 + b4) * x2 + b2) * x2 + b0
    return p / q


@parallel_kernel
def _relu_backward(grad, y):
    """:func:`relu_backward`, element by element."""
    g, yf = grad.reshape(grad.size), y.reshape(y.size)
    out = np.empty_like(g)
    for i in prange(g.size):
        out[i] = g[i] if yf[i] > 0 else 0
    return out.reshape(grad.shape)


@parallel_kernel
def _from_output(grad, y, one, sigmoid):
    """:func:`tanh_backward`, or with ``sigmoid`` :func:`sigmoid_backward`, element by element (``one``
    in the dtype: a literal 1 would make float32 arithmetic float64)."""
    g, yf = grad.reshape(grad.size), y.reshape(y.size)
    out = np.empty_like(g)
    for i in prange(g.size):
        v = yf[i]
        out[i] = g[i] * (v * (one - v) if sigmoid else one - v * v)
    return out.reshape(grad.shape)


def adam_update(param, grad, m, v, rates):
    """One Adam step in place on the 1-D arrays ``param``, ``m`` and ``v``; ``rates`` are this step's
    ``(b1, 1 - b1, b2, 1 - b2, step_size, bias2, eps)`` as scalars of the parameters' dtype (see
    :class:`fastcnn.optim.Adam`): a Python float would turn a float32 update into float64 arithmetic,
    which does not vectorise as well (about 3.5x slower)."""
    sized(_adam_update, param.size)(param, grad, m, v, *rates)


@parallel_kernel
def _adam_update(param, grad, m, v, b1, c1, b2, c2, step_size, bias2, eps):
    """:func:`adam_update`, element by element (``c1 = 1 - b1``, ``c2 = 1 - b2``)."""
    for i in prange(param.size):
        g = grad[i]
        mi = b1 * m[i] + c1 * g
        vi = b2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= step_size * mi / (np.sqrt(vi / bias2) + eps)


_kept = kernel_helper(kept)


@parallel_kernel
def _dropout(x, seed, threshold, scale):
    """:func:`dropout`, element by element."""
    flat = x.reshape(x.size)
    y = np.empty_like(flat)
    for i in prange(flat.size):
        y[i] = flat[i] * scale if _kept(seed, i, threshold) else 0
    return y.reshape(x.shape)



def leaky_relu_forward(x, slope):
    """``x`` where positive, else ``slope * x``."""
    return sized(_leaky_relu_forward, x.size)(x, x.dtype.type(slope))


def leaky_relu_backward(grad, x, slope):
    """``grad`` where the input ``x`` is positive, else ``slope * grad``."""
    return sized(_leaky_relu_backward, x.size)(grad, x, x.dtype.type(slope))


@parallel_kernel
def _leaky_relu_forward(x, slope):
    """:func:`leaky_relu_forward`, element by element."""
    flat = x.reshape(x.size)
    y = np.empty_like(flat)
    for i in prange(flat.size):
        v = flat[i]
        y[i] = v if v > 0 else v * slope
    return y.reshape(x.shape)


@parallel_kernel
def _leaky_relu_backward(grad, x, slope):
    """:func:`leaky_relu_backward`, element by element."""
    g, xf = grad.reshape(grad.size), x.reshape(x.size)
    out = np.empty_like(g)
    for i in prange(g.size):
        out[i] = g[i] if xf[i] > 0 else g[i] * slope
    return out.reshape(grad.shape)


_erf_rational = kernel_helper(erf_rational)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@kernel_helper
def _erf(v, fast):
    """``erf(v)``: the rational function with ``fast`` (float32), else the library's."""
    if fast:
        c = min(max(v, -ERF_CLAMP), ERF_CLAMP)
        return _erf_rational(c, c * c)
    return math.erf(v)


def gelu_forward(x):
    """``x * Phi(x)``, Phi the standard normal CDF."""
    return sized(_gelu_forward, x.size)(x, x.dtype == np.float32)


def gelu_backward(grad, x):
    """``grad`` times the derivative of :func:`gelu_forward` at ``x``."""
    return sized(_gelu_backward, x.size)(grad, x, x.dtype == np.float32)


@parallel_kernel
def _gelu_forward(x, fast):
    flat = x.reshape(x.size)
    y = np.empty_like(flat)
    for i in prange(flat.size):
        v = flat[i]
        y[i] = 0.5 * v * (1 + _erf(v * _SQRT_HALF, fast))
    return y.reshape(x.shape)


@parallel_kernel
def _gelu_backward(grad, x, fast):
    g, xf = grad.reshape(grad.size), x.reshape(x.size)
    out = np.empty_like(g)
    for i in prange(g.size):
        v = xf[i]
        out[i] = g[i] * (0.5 * (1 + _erf(v * _SQRT_HALF, fast)) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)
    return out.reshape(grad.shape)
