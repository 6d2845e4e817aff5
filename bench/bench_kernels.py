"""The dispatched kernels (Conv2D, max-pool, average-pool, Conv2D with its max-pool), per phase, shape
and backend (float32)."""
import numpy as np
import pytest

import fastcnn.functional as F

from ._common import fastcnn_backend, param_backends, rand, run_measured, torch

# (N, C_in, H, W, C_out, k, stride, padding): the MNIST nets' convs first, then larger ones.
CONV_SHAPES = [
    (64, 1, 28, 28, 32, 3, 1, 0),
    (64, 8, 13, 13, 16, 3, 1, 0),
    (64, 32, 26, 26, 64, 3, 1, 0),
    (64, 1, 28, 28, 8, 3, 1, 0),
    (1, 32, 26, 26, 64, 3, 1, 0),
    (256, 1, 28, 28, 8, 5, 1, 2),
    (64, 64, 14, 14, 128, 3, 2, 1),
]
MAX_POOL_SHAPES = [(64, 32, 26, 26), (64, 64, 24, 24), (64, 8, 26, 26), (256, 8, 26, 26)]
# A conv and the 2x2 max-pool after it, as Sequential runs them: lenet's two, pytorch_example's second.
CONV_POOL_SHAPES = [(64, 1, 28, 28, 8, 3, 1, 0), (64, 8, 13, 13, 16, 3, 1, 0), (64, 32, 26, 26, 64, 3, 1, 0)]
# (shape, kernel, stride, padding)
AVG_POOL_CASES = [((64, 32, 26, 26), 2, 2, 0), ((64, 64, 24, 24), 3, 2, 1)]
PHASES = ["fwd", "bwd", "fwd+bwd"]


def conv_label(s):
    n, c, h, w, co, k, st, p = s
    return f"{c}->{co} {k}x{k} s{st} p{p} on {n}x{h}x{w}"


def pool_label(shape, k=2, stride=2, padding=0):
    extra = f" s{stride} p{padding}" if (stride, padding) != (k, 0) else ""
    return f"{k}x{k}{extra} on ({', '.join(map(str, shape))})"


def _torch_phases(forward, inputs):
    """fwd (no graph), bwd (through a retained graph) and fwd+bwd callables for a torch function."""
    leaves = [torch.from_numpy(a).requires_grad_() for a in inputs]

    def fwd():
        with torch.no_grad():
            return forward(*leaves)

    y = forward(*leaves)
    gy = torch.ones_like(y)

    def bwd():
        y.backward(gy, retain_graph=True)

    def fwd_bwd():
        forward(*leaves).backward(gy)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def _conv_phases(shape, backend):
    n, c, h, w, co, k, st, p = shape
    x, wt, b = rand((n, c, h, w)), rand((co, c, k, k), 1) * 0.1, rand((co,), 2)
    if backend == "torch":
        return _torch_phases(lambda x, wt, b: torch.nn.functional.conv2d(x, wt, b, st, p), (x, wt, b))
    be = fastcnn_backend(backend)

    def fwd():
        return F.conv2d(x, wt, b, st, p, backend=be)

    gy = np.ones_like(fwd())

    def bwd():
        return F.conv2d_backward(gy, x, wt, st, p, backend=be)

    def fwd_bwd():
        fwd()
        return bwd()

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def _conv_pool_phases(shape, backend):
    n, c, h, w, co, k, st, p = shape
    x, wt, b = rand((n, c, h, w)), rand((co, c, k, k), 1) * 0.1, rand((co,), 2)
    if backend == "torch":
        return _torch_phases(lambda x, wt, b: torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(x, wt, b, st, p), 2),
                             (x, wt, b))
    be = fastcnn_backend(backend)

    def fwd():
        return F.conv2d_max_pool2d(x, wt, b, st, p, backend=be)

    y, idx = fwd()
    gy = np.ones_like(y)

    def bwd():
        return F.conv2d_max_pool2d_backward(gy, idx, x, wt, st, p, backend=be)

    def fwd_bwd():
        _, i = fwd()
        return F.conv2d_max_pool2d_backward(gy, i, x, wt, st, p, backend=be)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def _max_pool_phases(shape, backend):
    x = np.maximum(rand(shape), 0)  # post-ReLU: many ties
    if backend == "torch":
        return _torch_phases(lambda x: torch.nn.functional.max_pool2d(x, 2), (x,))
    be = fastcnn_backend(backend)

    def fwd():
        return F.max_pool2d(x, 2, backend=be)

    y, idx = fwd()
    gy = np.ones_like(y)

    def bwd():
        return F.max_pool2d_backward(gy, idx, x.shape, backend=be)

    def fwd_bwd():
        _, i = fwd()
        return F.max_pool2d_backward(gy, i, x.shape, backend=be)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def _avg_pool_phases(case, backend):
    shape, k, st, p = case
    x = rand(shape)
    if backend == "torch":
        return _torch_phases(lambda x: torch.nn.functional.avg_pool2d(x, k, st, p), (x,))
    be = fastcnn_backend(backend)

    def fwd():
        return F.avg_pool2d(x, k, st, p, backend=be)

    gy = np.ones_like(fwd())

    def bwd():
        return F.avg_pool2d_backward(gy, x.shape, k, st, p, backend=be)

    def fwd_bwd():
        fwd()
        return bwd()

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


@param_backends()
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=conv_label)
@pytest.mark.parametrize("phase", PHASES)
def bench_conv2d(benchmark, shape, backend, phase):
    fn = _conv_phases(shape, backend)[phase]
    run_measured(benchmark, op="conv2d", phase=phase, shape=conv_label(shape), backend=backend, fn=fn)


@param_backends()
@pytest.mark.parametrize("shape", CONV_POOL_SHAPES, ids=conv_label)
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_conv2d_max_pool2d(benchmark, shape, backend, phase):
    fn = _conv_pool_phases(shape, backend)[phase]
    run_measured(benchmark, op="conv2d_max_pool2d", phase=phase, shape=conv_label(shape) + ", 2x2 pool", backend=backend,
                 fn=fn)


@param_backends()
@pytest.mark.parametrize("shape", MAX_POOL_SHAPES, ids=pool_label)
@pytest.mark.parametrize("phase", PHASES)
def bench_max_pool2d(benchmark, shape, backend, phase):
    fn = _max_pool_phases(shape, backend)[phase]
    run_measured(benchmark, op="max_pool2d", phase=phase, shape=pool_label(shape), backend=backend, fn=fn)


@param_backends()
@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=lambda c: pool_label(*c))
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_avg_pool2d(benchmark, case, backend, phase):
    fn = _avg_pool_phases(case, backend)[phase]
    run_measured(benchmark, op="avg_pool2d", phase=phase, shape=pool_label(*case), backend=backend, fn=fn)


# Issue 16's ops. (N, C_in, H, W, C_out, k, stride, padding, groups): MobileNet-style depthwise convs, then
# grouped ones.
GROUPED_SHAPES = [
    (64, 32, 26, 26, 32, 3, 1, 1, 32),
    (64, 64, 14, 14, 64, 3, 2, 1, 64),
    (64, 32, 26, 26, 64, 3, 1, 1, 4),
]
# (N, C_in, H, W, C_out, k, stride, padding, output_padding): a decoder's upsampling steps.
TRANSPOSED_SHAPES = [(64, 32, 7, 7, 16, 3, 2, 1, 1), (64, 16, 14, 14, 8, 4, 2, 1, 0)]
GLOBAL_POOL_SHAPES = [(64, 32, 14, 14), (64, 128, 7, 7)]
ACTIVATIONS = [("tanh", {}), ("leaky_relu", {}), ("silu", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"})]
ACTIVATION_SHAPE = (64, 16, 26, 26)


def grouped_label(s):
    n, c, h, w, co, k, st, p, g = s
    return f"{c}->{co} {k}x{k} s{st} p{p} groups {g} on {n}x{h}x{w}"


def _phases(fwd, bwd_of):
    """fwd, bwd (from one forward's result) and fwd+bwd callables from ``fwd()`` and ``bwd_of(forward result)``."""
    first = fwd()
    return {"fwd": fwd, "bwd": lambda: bwd_of(first), "fwd+bwd": lambda: bwd_of(fwd())}


def _grouped_phases(shape, backend):
    n, c, h, w, co, k, st, p, g = shape
    x, wt, b = rand((n, c, h, w)), rand((co, c // g, k, k), 1) * 0.1, rand((co,), 2)
    if backend == "torch":
        return _torch_phases(lambda x, wt, b: torch.nn.functional.conv2d(x, wt, b, st, p, groups=g), (x, wt, b))
    be = fastcnn_backend(backend)
    gy = np.ones((n, co) + F.conv2d(x[:1], wt, b, st, p, groups=g).shape[2:], np.float32)
    return _phases(lambda: F.conv2d(x, wt, b, st, p, groups=g, backend=be),
                   lambda _: F.conv2d_backward(gy, x, wt, st, p, groups=g, backend=be))


def transposed_label(s):
    n, c, h, w, co, k, st, p, op = s
    return f"{c}->{co} {k}x{k} s{st} p{p} op{op} on {n}x{h}x{w}"


def _transposed_phases(shape, backend):
    n, c, h, w, co, k, st, p, op = shape
    x, wt, b = rand((n, c, h, w)), rand((c, co, k, k), 1) * 0.1, rand((co,), 2)
    if backend == "torch":
        return _torch_phases(lambda x, wt, b: torch.nn.functional.conv_transpose2d(x, wt, b, st, p, op), (x, wt, b))
    be = fastcnn_backend(backend)
    gy = np.ones_like(F.conv_transpose2d(x, wt, b, st, p, op))
    return _phases(lambda: F.conv_transpose2d(x, wt, b, st, p, op, backend=be),
                   lambda _: F.conv_transpose2d_backward(gy, x, wt, st, p, op, backend=be))


def _global_pool_phases(kind, shape, backend):
    x = np.maximum(rand(shape), 0)
    if backend == "torch":
        reduce = (lambda x: torch.amax(x, dim=(2, 3))) if kind == "max" else (lambda x: x.mean(dim=(2, 3)))
        return _torch_phases(reduce, (x,))
    be = fastcnn_backend(backend)
    gy = np.ones(shape[:2], np.float32)
    if kind == "max":
        return _phases(lambda: F.global_max_pool2d(x, backend=be),
                       lambda out: F.global_max_pool2d_backward(gy, out[1], shape, backend=be))
    return _phases(lambda: F.global_avg_pool2d(x, backend=be),
                   lambda _: F.global_avg_pool2d_backward(gy, shape, backend=be))


def _activation_phases(op, kwargs, backend):
    x = rand(ACTIVATION_SHAPE)
    if backend == "torch":
        return _torch_phases(lambda x: getattr(torch.nn.functional, op)(x, **kwargs), (x,))
    be = fastcnn_backend(backend)
    gy = np.ones_like(x)
    if op == "tanh":  # its gradient is taken from its output
        return _phases(lambda: F.tanh(x, backend=be), lambda y: F.tanh_backward(gy, y, backend=be))
    return _phases(lambda: getattr(F, op)(x, **kwargs, backend=be),
                   lambda _: getattr(F, op + "_backward")(gy, x, **kwargs, backend=be))


def _activation_name(case):
    op, kwargs = case
    return op + "".join(f" {v}" for v in kwargs.values())


@param_backends()
@pytest.mark.parametrize("shape", GROUPED_SHAPES, ids=grouped_label)
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_grouped_conv2d(benchmark, shape, backend, phase):
    fn = _grouped_phases(shape, backend)[phase]
    op = "depthwise conv2d" if shape[1] == shape[8] else "grouped conv2d"
    run_measured(benchmark, op=op, phase=phase, shape=grouped_label(shape), backend=backend, fn=fn)


@param_backends()
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("shape", GLOBAL_POOL_SHAPES, ids=str)
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_global_pool2d(benchmark, kind, shape, backend, phase):
    fn = _global_pool_phases(kind, shape, backend)[phase]
    run_measured(benchmark, op=f"global_{kind}_pool2d", phase=phase, shape=str(shape), backend=backend, fn=fn)


@param_backends()
@pytest.mark.parametrize("case", ACTIVATIONS, ids=_activation_name)
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_activation(benchmark, case, backend, phase):
    fn = _activation_phases(*case, backend)[phase]
    run_measured(benchmark, op=_activation_name(case), phase=phase, shape=str(ACTIVATION_SHAPE), backend=backend, fn=fn)


@param_backends()
@pytest.mark.parametrize("shape", TRANSPOSED_SHAPES, ids=transposed_label)
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def bench_conv_transpose2d(benchmark, shape, backend, phase):
    fn = _transposed_phases(shape, backend)[phase]
    run_measured(benchmark, op="conv_transpose2d", phase=phase, shape=transposed_label(shape), backend=backend, fn=fn)
