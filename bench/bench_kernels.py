"""Conv2D and pooling kernels, forward and backward, per backend (float32)."""
import numpy as np
import pytest

import fastcnn.functional as F

from ._common import param_backends, rand, run_measured, torch

# (N, C_in, H, W, C_out, k, stride, padding)
CONV_SHAPES = [
    (64, 1, 28, 28, 32, 3, 1, 0),
    (64, 32, 26, 26, 64, 3, 1, 0),
    (64, 8, 13, 13, 16, 3, 1, 0),
    (1, 32, 26, 26, 64, 3, 1, 0),
    (256, 1, 28, 28, 8, 5, 1, 2),
    (64, 64, 14, 14, 128, 3, 2, 1),
]
POOL_SHAPES = [(64, 32, 26, 26), (64, 64, 24, 24), (256, 8, 26, 26)]


def _conv_id(s):
    n, c, h, w, co, k, st, p = s
    return f"conv {c}->{co} {k}x{k} s{st} p{p} on {n}x{h}x{w}"


def _conv_callables(shape, backend):
    n, c, h, w, co, k, st, p = shape
    x, wt, b = rand((n, c, h, w)), rand((co, c, k, k), 1) * 0.1, rand((co,), 2)
    if backend == "torch":
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(wt).requires_grad_()
        tb = torch.from_numpy(b).requires_grad_()

        def fwd():
            with torch.no_grad():
                return torch.nn.functional.conv2d(tx, tw, tb, st, p)

        def fwd_bwd():
            y = torch.nn.functional.conv2d(tx, tw, tb, st, p)
            y.backward(torch.ones_like(y))

        return fwd, fwd_bwd
    be = None if backend == "auto" else backend

    def fwd():
        return F.conv2d(x, wt, b, st, p, backend=be)

    gy = np.ones_like(fwd())

    def fwd_bwd():
        F.conv2d(x, wt, b, st, p, backend=be)
        return F.conv2d_backward(gy, x, wt, st, p, backend=be)

    return fwd, fwd_bwd


def _pool_callables(shape, backend):
    x = np.maximum(rand(shape), 0)  # post-ReLU: many ties
    if backend == "torch":
        tx = torch.from_numpy(x).requires_grad_()

        def fwd():
            with torch.no_grad():
                return torch.nn.functional.max_pool2d(tx, 2)

        def fwd_bwd():
            y = torch.nn.functional.max_pool2d(tx, 2)
            y.backward(torch.ones_like(y))

        return fwd, fwd_bwd
    be = None if backend == "auto" else backend

    def fwd():
        return F.max_pool2d(x, 2, backend=be)

    y, idx = fwd()
    gy = np.ones_like(y)

    def fwd_bwd():
        F.max_pool2d(x, 2, backend=be)
        return F.max_pool2d_backward(gy, idx, x.shape, backend=be)

    return fwd, fwd_bwd


@param_backends()
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=_conv_id)
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_conv2d(benchmark, shape, backend, phase):
    fwd, fwd_bwd = _conv_callables(shape, backend)
    run_measured(benchmark, f"conv2d {phase}: {_conv_id(shape)}", backend, fwd if phase == "fwd" else fwd_bwd)


@param_backends()
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "maxpool 2x2 on " + "x".join(map(str, s)))
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_max_pool2d(benchmark, shape, backend, phase):
    fwd, fwd_bwd = _pool_callables(shape, backend)
    label = "maxpool 2x2 on " + "x".join(map(str, shape))
    run_measured(benchmark, f"max_pool2d {phase}: {label}", backend, fwd if phase == "fwd" else fwd_bwd)
