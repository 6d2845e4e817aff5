"""Element-wise training steps in NumPy: a sum (through a ReLU: a residual block's output), the
activations (ReLU, LeakyReLU, SiLU, GELU, tanh, sigmoid, softmax) and their gradients, dropout, and the
Adam update."""
from __future__ import annotations

import math

import numpy as np

from ._erf import ERF_CLAMP, erf_rational
from ._mask import kept


def relu_forward(x, out=None):
    """``max(x, 0)``, keeping NaN; into ``out`` (``x``'s shape; ``x`` itself for in place) if given."""
    return np.maximum(x, 0, out=out)


def add_forward(a, b, relu, out=None):
    """``a + b`` (one shape and dtype), through a ReLU (NaN kept) with ``relu``; into ``out`` (their
    shape; ``a`` or ``b`` itself for in place) if given."""
    out = np.add(a, b, out=out)
    return np.maximum(out, 0, out=out) if relu else out


def relu_backward(grad, y):
    """``grad`` where the ReLU output ``y`` is positive, else 0."""
    return masked(grad, y > 0)


_SAME_WIDTH_INTS = {4: np.int32, 8: np.int64}


def masked(values, keep):
    """``values`` (float) where the boolean array ``keep`` (same shape) is True, else +0.0: the bits of
    ``np.where(keep, values, 0)``, by masking the values' bits instead of a branch per element (several
    times faster on a mask as random as a ReLU's gate or dropout's: 4 against 30 ms on 4M values)."""
    ints = _SAME_WIDTH_INTS[values.dtype.itemsize]
    out = np.asarray(keep).astype(ints)  # (a 0-d comparison gives a NumPy scalar, not an array)
    np.negative(out, out=out)  # every bit set where kept
    np.bitwise_and(out, values.view(ints), out=out)
    return out.view(values.dtype)


def adam_update(param, grad, m, v, rates):
    """One Adam step in place on the 1-D arrays ``param``, ``m`` and ``v``; ``rates`` are this step's
    ``(b1, 1 - b1, b2, 1 - b2, step_size, bias2, eps)`` as scalars of the parameters' dtype (see
    :class:`fastcnn.optim.Adam`)."""
    b1, c1, b2, c2, step_size, bias2, eps = rates
    m *= b1
    m += c1 * grad
    v *= b2
    v += c2 * grad * grad
    denom = np.sqrt(v / bias2)
    denom += eps
    param -= step_size * m / denom


def dropout(x, seed, threshold, scale):
    """``x`` times ``scale`` where the element survives (see :func:`._mask.kept`), else 0."""
    mask = kept(seed, np.arange(x.size, dtype=np.uint64), threshold).reshape(x.shape)
    return masked(x * scale, mask)


def tanh_forward(x, out=None):
    """``tanh(x)``; into ``out`` (``x``'s shape; ``x`` itself for in place) if given."""
    return np.tanh(x, out=out)


def tanh_backward(grad, y):
    """Gradient of tanh from its output ``y``: ``grad * (1 - y**2)``."""
    return grad * (1 - y * y)


def sigmoid_forward(x):
    """``1 / (1 + exp(-x))`` without overflow for any ``x`` (``exp`` only ever of ``-|x|``)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(grad, y):
    """Gradient of the sigmoid from its output ``y``: ``grad * y * (1 - y)``."""
    return grad * y * (1 - y)


def softmax_forward(x):
    """Softmax over the last axis, shifted by each row's maximum so any finite values are safe."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(grad, y):
    """Gradient of the softmax over the last axis from its output ``y``."""
    return y * (grad - (grad * y).sum(axis=-1, keepdims=True))


def leaky_relu_forward(x, slope):
    """``x`` where positive, else ``slope * x``."""
    return np.where(x > 0, x, x * slope)


def leaky_relu_backward(grad, x, slope):
    """``grad`` where the input ``x`` is positive, else ``slope * grad``."""
    return np.where(x > 0, grad, grad * slope)


def _sigmoid(x):
    """``1 / (1 + exp(-x))``; ``exp`` overflowing to inf for very negative ``x`` gives the right 0."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def silu_forward(x):
    """``x * sigmoid(x)``."""
    return x * _sigmoid(x)


def silu_backward(grad, x):
    """``grad * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    s = _sigmoid(x)
    return grad * (s * (1 + x * (1 - s)))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_CUBIC = 0.044715


def _erf(x):
    """The error function element-wise: for float32 the rational function of :mod:`._erf`; for float64
    SciPy's where SciPy is installed, else :func:`math.erf` per element (NumPy has no ``erf``)."""
    if x.dtype == np.float32:
        c = np.clip(x, -ERF_CLAMP, ERF_CLAMP)
        return erf_rational(c, c * c)
    try:
        from scipy.special import erf
    except ImportError:
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
    return erf(x).astype(x.dtype, copy=False)


def _tanh_form(x):
    t = x.dtype.type
    return np.tanh(t(_SQRT_2_OVER_PI) * (x + t(_GELU_CUBIC) * x * x * x))


def gelu_forward(x):
    """``x * Phi(x)``, Phi the standard normal CDF."""
    t = x.dtype.type
    return t(0.5) * x * (1 + _erf(x * t(1 / math.sqrt(2))))


def gelu_backward(grad, x):
    """``grad`` times the derivative of :func:`gelu_forward` at ``x``."""
    t = x.dtype.type
    return grad * (t(0.5) * (1 + _erf(x * t(1 / math.sqrt(2)))) + x * np.exp(t(-0.5) * x * x) * t(_INV_SQRT_2PI))


def gelu_tanh_forward(x):
    """PyTorch's tanh approximation of GELU: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    t = x.dtype.type
    return t(0.5) * x * (1 + _tanh_form(x))


def gelu_tanh_backward(grad, x):
    """``grad`` times the derivative of :func:`gelu_tanh_forward` at ``x``."""
    t = x.dtype.type
    th = _tanh_form(x)
    return grad * (t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * t(_SQRT_2_OVER_PI) * (1 + t(3 * _GELU_CUBIC) * x * x))
