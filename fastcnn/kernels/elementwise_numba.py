"""Element-wise training steps as Numba loops: ReLU and its gradient, and the Adam update."""
from __future__ import annotations

import math

import numpy as np

from ._jit import parallel_kernel, prange, serial_kernel


@parallel_kernel
def relu_forward(x):
    """``max(x, 0)``, keeping NaN."""
    flat = x.reshape(x.size)
    y = np.empty_like(flat)
    for i in prange(flat.size):
        v = flat[i]
        y[i] = 0 if v <= 0 else v
    return y.reshape(x.shape)


@parallel_kernel
def relu_backward(grad, y):
    """``grad`` where the ReLU output ``y`` is positive, else 0."""
    g, yf = grad.reshape(grad.size), y.reshape(y.size)
    out = np.empty_like(g)
    for i in prange(g.size):
        out[i] = g[i] if yf[i] > 0 else 0
    return out.reshape(grad.shape)


@serial_kernel
def adam_update(param, grad, m, v, b1, b2, step_size, bias2, eps):
    """One Adam step in place: ``m``, ``v`` and ``param`` are updated (see :class:`fastcnn.optim.Adam`)."""
    p, g, mf, vf = param.reshape(param.size), grad.reshape(grad.size), m.reshape(m.size), v.reshape(v.size)
    for i in range(p.size):
        mi = b1 * mf[i] + (1 - b1) * g[i]
        vi = b2 * vf[i] + (1 - b2) * g[i] * g[i]
        mf[i] = mi
        vf[i] = vi
        p[i] -= step_size * mi / (math.sqrt(vi / bias2) + eps)
