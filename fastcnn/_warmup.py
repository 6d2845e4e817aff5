"""Compile a model's kernels in two processes at once, for a first run on a cold Numba cache.

Numba compiles one kernel at a time per process, and on a cold cache compiling is most of a first
``fastcnn train``. The largest kernels are the convolutions' gradients, which a step needs only after
its forward pass. So :func:`start` hands them to a second Python process, whose compiles land in the
shared on-disk cache, while this process compiles the forward kernels; :func:`finish` then waits for
that process if the cache was cold, and stops it if it was warm.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from . import dispatch
from .kernels import jit
from .layers import Conv2D, FusedConv


def start(model, batch_size: int) -> subprocess.Popen | None:
    """Start compiling the gradients of ``model``'s convolutions for batches of ``batch_size``, in the
    background; None when there is nothing to compile (no Numba, the NumPy backend, no convolution)."""
    if not jit.NUMBA_AVAILABLE or dispatch.get_backend() == "numpy":
        return None
    calls = _conv_gradient_calls(model, batch_size)
    if not calls:
        return None
    return subprocess.Popen([sys.executable, "-m", __name__, json.dumps(calls)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(helper: subprocess.Popen | None, timeout: float = 300.0) -> None:
    """Wait for ``helper`` if this process had to compile its convolutions (a cold cache); else stop it."""
    if helper is None:
        return
    from .kernels import conv_numba

    cold = jit.cache_misses(*conv_numba.forward_kernels()) > 0
    try:
        if cold:
            helper.wait(timeout)
            return
    except subprocess.TimeoutExpired:
        pass
    helper.kill()
    helper.wait()


def _conv_gradient_calls(model, batch_size: int) -> list[dict]:
    """The arguments of every convolution's backward (alone or with its max-pool) in a training step
    of ``model``, inside its blocks too."""
    if model.input_shape is None:
        return []
    return _container_calls(model, (batch_size,) + tuple(model.input_shape), input_grad=False)


def _container_calls(container, shape: tuple[int, ...], input_grad: bool) -> list[dict]:
    """:func:`_conv_gradient_calls` for the steps of ``container`` (a model, or a block's container) on
    batches of ``shape``; ``input_grad``: whether the container's own input gradient is needed."""
    steps = container.steps()
    first = -1 if input_grad else container.first_trained_step()
    calls = []
    for i, step in enumerate(steps):
        out = (shape[0],) + tuple(step.output_shape(shape[1:]))
        conv = step.conv if isinstance(step, FusedConv) else step
        if isinstance(conv, Conv2D) and conv.fuses:  # (grouped and padding-mode convs compile on first use)
            calls.append(dict(x=shape, y=out, weight=conv.params["weight"].shape,
                              stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                              pooled=conv is not step and step.pool is not None, input_grad=i != first, dtype=container.dtype.str))
        for inner in step.containers():
            calls += _container_calls(inner, shape, input_grad=i != first)
        shape = out
    return calls


def _compile(calls: list[dict]) -> None:
    from . import functional as F

    for c in calls:
        x, grad_y, weight = (np.zeros(c[k], c["dtype"]) for k in ("x", "y", "weight"))
        params = {k: c[k] if isinstance(c[k], str) else tuple(c[k]) for k in ("stride", "padding", "dilation")}
        if c["pooled"]:
            F.conv2d_max_pool2d_backward(grad_y, np.zeros(grad_y.shape, np.int64), x, weight, **params,
                                         input_grad=c["input_grad"], backend="numba")
        else:
            F.conv2d_backward(grad_y, x, weight, **params, input_grad=c["input_grad"], backend="numba")


if __name__ == "__main__":
    _compile(json.loads(sys.argv[1]))
