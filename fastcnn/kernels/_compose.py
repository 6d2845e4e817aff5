"""A conv's max-pool (and ReLU) as a backend's separate kernels: for the NumPy backend, and for the
cases the Numba backend does not fuse (see :func:`.conv_numba.conv2d_max_pool2d_forward`).

``pool`` and ``elementwise`` are a backend's modules (e.g. :mod:`.pool_numpy`, :mod:`.elementwise_numpy`).
"""
from __future__ import annotations

from .scratch import shared


def pooled(pool, elementwise, y, geometry, relu):
    """``max_pool2d(y)`` with the windows of ``geometry`` (a PoolGeometry), with ``relu`` through a ReLU
    after it: (pooled, argmax)."""
    out, idx = pool.max_pool2d_forward(y, geometry)
    return (elementwise.relu_forward(out, out) if relu else out), idx


def unpooled(pool, elementwise, gp, argmax, gate, oh, ow):
    """The gradient of :func:`pooled`'s input (N, C, oh, ow) from that of its output, ``gp``; ``gate``
    is the pooled output if :func:`pooled` applied its ReLU, else None. Made once per
    :class:`.scratch.shared_inputs` block: the conv's two gradients both ask for it."""
    sources = (gp, argmax) if gate is None else (gp, argmax, gate)
    return shared("unpooled", sources, (pool.__name__, oh, ow),
                  lambda: pool.max_pool2d_backward(gated(elementwise, gp, gate), argmax, oh, ow))


def gated(elementwise, grad, gate):
    """``grad`` through the ReLU whose output is ``gate`` (``grad`` itself if ``gate`` is None), made once
    per :class:`.scratch.shared_inputs` block."""
    if gate is None:
        return grad
    return shared("relu gated", (grad, gate), (elementwise.__name__,), lambda: elementwise.relu_backward(grad, gate))
