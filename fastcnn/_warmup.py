"""Compile a model's kernels in two processes at once, for a first run on a cold Numba cache.

Numba compiles one kernel at a time per process, and on a cold cache compiling is most of a first
``fastcnn train``. The largest kernels are the convolutions' gradients, which a step needs only after
its forward pass. So while :func:`gradients_compiled_beside` runs the forward pass, the first kernel
that the calling thread has to compile (rather than load from the on-disk cache) starts a second
Python process that compiles the gradients, with the same thread count, into the shared cache; the
block then waits for it. On a warm cache nothing compiles and no second process starts.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from . import dispatch, threads
from .kernels import jit
from .layers import Conv2D, FusedConv
from .model import Sequential


@contextmanager
def gradients_compiled_beside(model: Sequential, batch_size: int, timeout: float = 300.0) -> Iterator[None]:
    """Run the block (the forward pass, for batches of ``batch_size``); if it makes the calling thread
    compile a Numba kernel, start compiling the gradients of ``model``'s convolutions in a second
    process at that moment, and wait for it (at most ``timeout`` seconds) when the block ends. Nothing
    starts without Numba, without an on-disk cache for the kernels, under the NumPy backend, for a
    model without convolutions, or if the process cannot be started. If the block raises (Ctrl-C), the
    second process is stopped."""
    calls = [] if not (jit.NUMBA_AVAILABLE and jit.kernels_cached()) or dispatch.get_backend() == "numpy" else \
        _conv_gradient_calls(model, batch_size)
    if not calls:
        yield
        return
    from numba.core import event

    owner = threading.get_ident()

    class StartOnFirstCompile(event.Listener):
        helper: subprocess.Popen | None = None
        tried = False

        def on_start(self, ev):
            if not self.tried and threading.get_ident() == owner:
                self.tried = True
                try:
                    self.helper = start(calls)
                except OSError:  # no second process (no memory, no executable): this one compiles alone
                    pass

        def on_end(self, ev):
            pass

    listener = StartOnFirstCompile()
    try:
        with event.install_listener("numba:compile", listener):
            yield
        if listener.helper is not None:
            try:
                listener.helper.wait(timeout)
            except subprocess.TimeoutExpired:  # stopped below: training compiles what is left itself
                pass
    finally:
        helper = listener.helper
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()


def start(calls: list[dict]) -> subprocess.Popen:
    """A second process that runs the convolution gradients ``calls`` (see :func:`_conv_gradient_calls`)
    on the Numba backend with this process's thread count (one thread runs serial compiles of the
    kernels, see :func:`.kernels.jit.sized`), so that the kernels training will run land in the
    on-disk cache."""
    spec = {"threads": threads.get_num_threads(), "calls": calls}
    return subprocess.Popen([sys.executable, "-m", __name__, json.dumps(spec)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    _spec = json.loads(sys.argv[1])
    threads.set_num_threads(_spec["threads"])
    _compile(_spec["calls"])
