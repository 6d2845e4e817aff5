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
from .kernels import _jit
from .layers import Conv2D


def start(model, batch_size: int) -> subprocess.Popen | None:
    """Start compiling the gradients of ``model``'s convolutions for batches of ``batch_size``, in the
    background; None when there is nothing to compile (no Numba, the NumPy backend, no convolution)."""
    if not _jit.NUMBA_AVAILABLE or dispatch.get_backend() == "numpy":
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

    cold = any(sum(k.stats.cache_misses.values()) for k in (conv_numba._conv_wide, conv_numba._conv_strided))
    try:
        if cold:
            helper.wait(timeout)
            return
    except subprocess.TimeoutExpired:
        pass
    helper.kill()
    helper.wait()


def _conv_gradient_calls(model, batch_size: int) -> list[dict]:
    """The arguments of every ``conv2d_backward`` a training step of ``model`` makes."""
    if model.input_shape is None:
        return []
    shapes = [tuple(model.input_shape)] + model.output_shapes()
    first = next((i for i, layer in enumerate(model.layers) if layer.params), None)
    return [dict(x=(batch_size,) + shapes[i], y=(batch_size,) + shapes[i + 1], weight=layer.params["weight"].shape,
                 stride=layer.stride, padding=layer.padding, dilation=layer.dilation, input_grad=i != first,
                 dtype=model.dtype.str)
            for i, layer in enumerate(model.layers) if isinstance(layer, Conv2D)]


def _compile(calls: list[dict]) -> None:
    from . import functional as F

    for c in calls:
        x, grad_y, weight = (np.zeros(c[k], c["dtype"]) for k in ("x", "y", "weight"))
        params = {k: c[k] if isinstance(c[k], str) else tuple(c[k]) for k in ("stride", "padding", "dilation")}
        F.conv2d_backward(grad_y, x, weight, **params, input_grad=c["input_grad"], backend="numba")


if __name__ == "__main__":
    _compile(json.loads(sys.argv[1]))
