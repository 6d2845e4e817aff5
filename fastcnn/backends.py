"""The registry: every op's kernels, one line per op.

Each line names the op (what :func:`fastcnn.dispatch.run` is called with), the kernel module pair it
lives in and the kernel's name in both modules. The NumPy kernel always exists; the Numba one is
registered when Numba is installed. A missing or misspelt kernel fails here, at import, naming the op.

To add an op: write its kernel in ``kernels/<family>_numpy.py`` (and ``kernels/<family>_numba.py``
where a compiled loop pays: ``None`` below means NumPy's vectorised code is as fast, e.g. for
``exp``, which Numba compiles to one scalar library call per value), add one line below, and call ``dispatch.run("<op>", signature, args)``
from a validating wrapper in :mod:`fastcnn.functional`.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, NamedTuple

from .kernels import (conv_numpy, depthwise_numpy, elementwise_numpy, jit, linear_numpy, loss_numpy, norm_numpy,
                      pool_numpy, warp_numpy)

if jit.NUMBA_AVAILABLE:
    from .kernels import (conv_numba, depthwise_numba, elementwise_numba, linear_numba, loss_numba, norm_numba,
                          pool_numba, warp_numba)
else:
    conv_numba = depthwise_numba = elementwise_numba = linear_numba = loss_numba = norm_numba = pool_numba = None
    warp_numba = None


class Op(NamedTuple):
    """An op's kernels by backend name, and whether it changes its arguments in place (then ``auto``
    cannot time it by running it twice)."""

    kernels: dict[str, Callable[..., Any]]
    in_place: bool


OPS: dict[str, Op] = {}


def _op(name: str, numpy: ModuleType, numba: ModuleType | None, kernel: str, in_place: bool = False) -> None:
    """Register op ``name``: ``numpy.<kernel>``, and ``numba.<kernel>`` when Numba is installed and
    ``numba`` is not None."""
    if name in OPS:
        raise RuntimeError(f"op {name!r} is registered twice in fastcnn.backends")
    kernels = {}
    for backend, module in (("numba", numba), ("numpy", numpy)):
        if module is None:
            continue
        fn = getattr(module, kernel, None)
        if fn is None:
            raise ImportError(f"fastcnn.backends: op {name!r} names {module.__name__}.{kernel}, which does not exist")
        if backend == "numba" and jit.SERIALIZE_KERNELS:
            fn = jit.serialized(fn)
        kernels[backend] = fn
    OPS[name] = Op(kernels, in_place)


#   op                                numpy kernels      numba kernels      kernel name
_op("conv2d",                         conv_numpy,        conv_numba,        "conv2d_forward")
_op("conv2d_grad_weight",             conv_numpy,        conv_numba,        "conv2d_grad_weight")
_op("conv2d_grad_input",              conv_numpy,        conv_numba,        "conv2d_grad_input")
_op("depthwise_conv2d",               depthwise_numpy,   depthwise_numba,   "conv2d_forward")
_op("depthwise_conv2d_grad_weight",   depthwise_numpy,   depthwise_numba,   "conv2d_grad_weight")
_op("depthwise_conv2d_grad_input",    depthwise_numpy,   depthwise_numba,   "conv2d_grad_input")
_op("depthwise_conv2d_relu",          depthwise_numpy,   depthwise_numba,   "conv2d_relu_forward")
_op("conv2d_relu",                    conv_numpy,        conv_numba,        "conv2d_relu_forward")
_op("conv2d_relu_grad_weight",        conv_numpy,        conv_numba,        "conv2d_relu_grad_weight")
_op("conv2d_relu_grad_input",         conv_numpy,        conv_numba,        "conv2d_relu_grad_input")
_op("conv2d_max_pool2d",              conv_numpy,        conv_numba,        "conv2d_max_pool2d_forward")
_op("conv2d_max_pool2d_grad_weight",  conv_numpy,        conv_numba,        "conv2d_max_pool2d_grad_weight")
_op("conv2d_max_pool2d_grad_input",   conv_numpy,        conv_numba,        "conv2d_max_pool2d_grad_input")
_op("max_pool2d",                     pool_numpy,        pool_numba,        "max_pool2d_forward")
_op("max_pool2d_backward",            pool_numpy,        pool_numba,        "max_pool2d_backward")
_op("avg_pool2d",                     pool_numpy,        pool_numba,        "avg_pool2d_forward")
_op("avg_pool2d_backward",            pool_numpy,        pool_numba,        "avg_pool2d_backward")
_op("global_avg_pool2d",              pool_numpy,        pool_numba,        "global_avg_pool2d_forward")
_op("global_avg_pool2d_backward",     pool_numpy,        pool_numba,        "global_avg_pool2d_backward")
_op("global_max_pool2d",              pool_numpy,        pool_numba,        "global_max_pool2d_forward")
_op("global_max_pool2d_backward",     pool_numpy,        pool_numba,        "global_max_pool2d_backward")
_op("linear",                         linear_numpy,      linear_numba,      "linear_forward")
_op("linear_grad_weight",             linear_numpy,      linear_numba,      "linear_grad_weight")
_op("linear_grad_input",              linear_numpy,      linear_numba,      "linear_grad_input")
_op("relu",                           elementwise_numpy, elementwise_numba, "relu_forward")
_op("relu_backward",                  elementwise_numpy, elementwise_numba, "relu_backward")
_op("add",                            elementwise_numpy, elementwise_numba, "add_forward")
_op("tanh",                           elementwise_numpy, elementwise_numba, "tanh_forward")
_op("tanh_backward",                  elementwise_numpy, elementwise_numba, "tanh_backward")
_op("sigmoid",                        elementwise_numpy, None,              "sigmoid_forward")
_op("sigmoid_backward",               elementwise_numpy, elementwise_numba, "sigmoid_backward")
_op("softmax",                        elementwise_numpy, None,              "softmax_forward")
_op("softmax_backward",               elementwise_numpy, None,              "softmax_backward")
_op("leaky_relu",                     elementwise_numpy, elementwise_numba, "leaky_relu_forward")
_op("leaky_relu_backward",            elementwise_numpy, elementwise_numba, "leaky_relu_backward")
_op("silu",                           elementwise_numpy, None,              "silu_forward")
_op("silu_backward",                  elementwise_numpy, None,              "silu_backward")
_op("gelu",                           elementwise_numpy, elementwise_numba, "gelu_forward")
_op("gelu_backward",                  elementwise_numpy, elementwise_numba, "gelu_backward")
_op("gelu_tanh",                      elementwise_numpy, None,              "gelu_tanh_forward")
_op("gelu_tanh_backward",             elementwise_numpy, None,              "gelu_tanh_backward")
_op("dropout",                        elementwise_numpy, elementwise_numba, "dropout")
_op("softmax_cross_entropy",          loss_numpy,        loss_numba,        "softmax_cross_entropy")
_op("soft_cross_entropy",             loss_numpy,        None,              "soft_cross_entropy")
_op("mse",                            loss_numpy,        None,              "mse")
_op("bce",                            loss_numpy,        None,              "bce")
_op("batch_norm_stats",               norm_numpy,        norm_numba,        "batch_norm_stats")
_op("batch_norm_apply",               norm_numpy,        norm_numba,        "batch_norm_apply")
_op("batch_norm_backward",            norm_numpy,        norm_numba,        "batch_norm_backward")
_op("batch_norm_grad_sums",           norm_numpy,        norm_numba,        "batch_norm_grad_sums")
_op("batch_norm_input_grad",          norm_numpy,        norm_numba,        "batch_norm_input_grad")
_op("adam_update",                    elementwise_numpy, elementwise_numba, "adam_update", in_place=True)
_op("rotate_shift",                   warp_numpy,        warp_numba,        "rotate_shift")
