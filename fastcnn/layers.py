"""Layers: each owns its parameters, caches what its backward needs, and knows its output shape.

Every layer has ``forward(x, training=False)`` and ``backward(grad)``; parameters and their gradients
are in the dicts ``params`` and ``grads`` under PyTorch's names (``weight``, ``bias``), and
non-trainable state (batch-norm statistics) in ``buffers``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import numpy as np

from . import functional as F
from .init import get_rng, glorot_uniform, he_normal
from ._checks import IntOrPair, check_grad, conv_geometry, conv_padding, conv_transpose_geometry, flag, float_array, pair, pool_geometry, positive_int

__all__ = [
    "Layer",
    "Conv2D",
    "ConvTranspose2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "GlobalMaxPool2D",
    "Dense",
    "Flatten",
    "Dropout",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "LeakyReLU",
    "SiLU",
    "GELU",
    "BatchNorm2D",
    "BatchNorm1D",
]


_placeholder_dtype: ContextVar[np.dtype | None] = ContextVar("fastcnn_placeholder_dtype", default=None)


@contextmanager
def weights_follow(dtype) -> Iterator[None]:
    """Layers built in this block hold placeholders of ``dtype`` instead of initial values: read-only
    zeros of the right shapes that take no memory (:func:`numpy.broadcast_to` of one zero) and draw no
    random numbers. For loaders, which compare the placeholders' shapes with a file's arrays, before
    reading those, and then put the arrays in (:func:`fastcnn.load_model`)."""
    token = _placeholder_dtype.set(np.dtype(dtype))
    try:
        yield
    finally:
        _placeholder_dtype.reset(token)


def fresh(shape: tuple[int, ...], make: Callable[[], np.ndarray], dtype=None) -> np.ndarray:
    """A new parameter, buffer or gradient: ``make()``, or inside :func:`weights_follow` its placeholder
    (of ``dtype`` if given, else the block's)."""
    placeholder = _placeholder_dtype.get()
    if placeholder is None:
        return make()
    return np.broadcast_to(np.zeros((), placeholder if dtype is None else dtype), shape)


def _zero_grads(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: fresh(v.shape, lambda v=v: np.zeros_like(v), v.dtype) for k, v in params.items()}


class Layer:
    """Base class. Subclasses set ``params``/``grads``/``buffers`` and implement the four methods.

    Subclasses create every parameter, buffer and gradient with :func:`fresh`, so that a loader can
    build them from a file's configuration without allocating or initialising anything
    (:func:`weights_follow`).
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward_params(self, grad: np.ndarray) -> None:
        """Fill ``grads`` from ``grad`` without computing the input gradient (nothing upstream needs it)."""
        self.backward(grad)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-sample output shape for a per-sample ``input_shape``; ValueError if it does not fit."""
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (JSON-serialisable)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Layer":
        """The layer :meth:`get_config` described (fresh weights)."""
        return cls(**config)

    def containers(self) -> list:
        """The containers (each a :class:`~fastcnn.model.Sequential`) of the layers inside this one, a
        block's; none for a plain layer."""
        return []

    def inner_rows(self, prefix: str, input_shape: tuple[int, ...]) -> list[tuple[str, str, tuple[int, ...], int]]:
        """Summary rows ``(name, description, output shape, parameters)`` of the layers inside this one
        (a block's), named from ``prefix``, for a per-sample ``input_shape``; none for a plain layer."""
        return []

    def astype(self, dtype) -> "Layer":
        """Convert parameters, gradients and float buffers to ``dtype`` in place; returns self."""
        for store in (self.params, self.grads, self.buffers):
            for k, v in store.items():
                if v.dtype.kind == "f":
                    store[k] = v.astype(dtype)
        return self

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def describe(self) -> str:
        """A short description for summaries, e.g. ``Conv2D(1->8, 3x3)``."""
        return repr(self)

    def _input(self, x, min_ndim: int = 1) -> np.ndarray:
        """``x`` as a float array with at least ``min_ndim`` dimensions, or a clear error."""
        x = float_array("x", x)
        if x.ndim < min_ndim:
            raise ValueError(f"{self!r} expects input with at least {min_ndim} dimensions (N, ...), got shape {x.shape}")
        return x

    def _cached(self, name: str):
        value = getattr(self, name, None)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward(..., training=True)")
        return value


def walk(layers: list[Layer]) -> Iterator[Layer]:
    """Every layer of ``layers``, each followed by the layers inside it (a block's), depth first."""
    for layer in layers:
        yield layer
        for container in layer.containers():
            yield from walk(container.layers)


class _WeightLayer(Layer):
    """A layer with ``weight`` and optional ``bias`` whose three gradients come from one functional op."""

    def backward(self, grad):
        return self._backward(grad, input_grad=True)

    def backward_params(self, grad):
        self._backward(grad, input_grad=False)

    def _backward(self, grad, input_grad):
        gx, gw, gb = self._gradients(grad, input_grad)
        self.grads["weight"] = gw
        if "bias" in self.params:
            self.grads["bias"] = gb
        return gx

    def _gradients(self, grad, input_grad: bool):
        raise NotImplementedError


def _expect(layer: Layer, input_shape, ndim: int, what: str) -> None:
    if len(input_shape) != ndim:
        raise ValueError(f"{layer!r} expects input of shape {what}, got (N, {', '.join(map(str, input_shape))})")


def _channels(in_channels, out_channels, groups) -> tuple[int, int, int]:
    """A (transposed) convolution's channel counts and groups, checked: positive ints, the groups
    dividing both counts."""
    in_channels, out_channels = positive_int("in_channels", in_channels), positive_int("out_channels", out_channels)
    groups = positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels ({in_channels}) and out_channels ({out_channels})")
    return in_channels, out_channels, groups


def _init_weight(kind: str, shape, fan_in: int, fan_out: int, rng) -> np.ndarray:
    if kind == "he":
        return he_normal(shape, fan_in, rng)
    if kind == "glorot":
        return glorot_uniform(shape, fan_in, fan_out, rng)
    raise ValueError(f"init must be 'he' or 'glorot', got {kind!r}")


class Conv2D(_WeightLayer):
    """2-D convolution over NCHW input, with weight ``(out_channels, in_channels, kH, kW)``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), (left, right, top, bottom), "valid" or "same"
        Zero padding; ``"same"`` gives ``ceil(H / stride)`` rows and columns (see :func:`fastcnn.functional.conv2d`).
    bias : bool
    init : {"he", "glorot"}
        He normal (for ReLU) or Glorot uniform initialisation of the weight; the bias starts at zero.
    groups : int
        Grouped convolution, weight ``(out_channels, in_channels // groups, kH, kW)``; ``groups ==
        in_channels`` is depthwise. It must divide both channel counts.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        What the padding holds, as ``torch.nn.Conv2d``'s (see :func:`fastcnn.functional.pad2d`).
    rng : numpy.random.Generator or int, optional
        Generator for the initial weights; defaults to the library generator (:func:`fastcnn.seed`).
    backend : {"auto", "numba", "numpy"}, optional
        Pin this layer's ops to one backend.

    Notes
    -----
    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H_out, W_out)`` with, per axis,
    ``H_out = floor((H + pad_top + pad_bottom - dilation * (kH - 1) - 1) / stride) + 1``
    (``padding=p`` pads ``p`` on each side; ``"same"`` keeps ``H_out = H`` and needs stride 1).

    Examples
    --------
    >>> Conv2D(1, 8, 3).output_shape((1, 28, 28))             # 28 - 3 + 1 = 26
    (8, 26, 26)
    >>> Conv2D(8, 16, 3, stride=2, padding=1).output_shape((8, 28, 28))  # floor((28 + 2 - 3) / 2) + 1
    (16, 14, 14)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: IntOrPair | str = 0, dilation: IntOrPair = 1, bias: bool = True, init: str = "he",
                 rng=None, backend: str | None = None, groups: int = 1, padding_mode: str = "zeros") -> None:
        super().__init__()
        if padding_mode not in F.PAD_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(map(repr, F.PAD_MODES))}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.in_channels, self.out_channels, self.groups = _channels(in_channels, out_channels, groups)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.padding = conv_padding(padding)
        self.dilation = pair("dilation", dilation, 1)
        self.init = init
        self.backend = backend
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels // groups, kh, kw)
        self.params["weight"] = fresh(shape, lambda: _init_weight(init, shape, shape[1] * kh * kw,
                                                                  out_channels // groups * kh * kw, get_rng(rng)))
        if bias:
            self.params["bias"] = fresh((out_channels,), lambda: np.zeros(out_channels, np.float32))
        self.grads = _zero_grads(self.params)
        self._x = None

    def geometry(self) -> dict[str, Any]:
        """``stride``, ``padding`` and ``dilation``, as the functional conv ops take them."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def fuses(self) -> bool:
        """Whether :class:`fastcnn.Sequential` may run this conv and a max-pool or a ReLU after it as one op."""
        return self.groups == 1 and self.padding_mode == "zeros"

    def _conv_args(self):
        args = self.geometry()
        if self.padding_mode != "zeros":
            args["padding"] = 0  # forward pads with pad2d first
        return dict(args, groups=self.groups) if self.groups > 1 else args

    def _pads(self, shape) -> tuple[int, int, int, int]:
        """The (left, right, top, bottom) padding of an input of ``shape`` (``"same"`` depends on it)."""
        (top, bottom), (left, right) = conv_geometry(shape, self.params["weight"].shape, **self.geometry(),
                                                     groups=self.groups).padding
        return (left, right, top, bottom)

    def forward(self, x, training=False):
        if self.padding_mode != "zeros":
            self._input_shape = np.shape(x)
            x = F.pad2d(x, self._pads(np.shape(x)), self.padding_mode)
        self._x = x if training else None
        return F.conv2d(x, self.params["weight"], self.params.get("bias"), backend=self.backend, **self._conv_args())

    def _gradients(self, grad, input_grad):
        gx, gw, gb = F.conv2d_backward(grad, self._cached("_x"), self.params["weight"], input_grad=input_grad,
                                       backend=self.backend, **self._conv_args())
        if gx is not None and self.padding_mode != "zeros":
            gx = F.pad2d_backward(gx, self._input_shape, self._pads(self._input_shape), self.padding_mode)
        return gx, gw, gb

    def output_shape(self, input_shape):
        _expect(self, input_shape, 3, "(N, C, H, W)")
        geo = conv_geometry((1,) + tuple(input_shape), self.params["weight"].shape, **self.geometry(),
                            groups=self.groups)
        return (self.out_channels,) + geo.out_hw

    def describe(self):
        extra = "".join(f", {k} {v}" for k, v, default in (("stride", self.stride, (1, 1)), ("padding", self.padding, (0, 0)),
                                                          ("dilation", self.dilation, (1, 1)),
                                                          ("groups", self.groups, 1),
                                                          ("padding_mode", self.padding_mode, "zeros")) if v != default)
        return f"Conv2D({self.in_channels}->{self.out_channels}, {self.kernel_size[0]}x{self.kernel_size[1]}{extra})"

    def get_config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=list(self.kernel_size),
                    stride=list(self.stride), padding=self.padding if isinstance(self.padding, str) else list(self.padding),
                    dilation=list(self.dilation), bias="bias" in self.params, init=self.init,
                    **({"groups": self.groups} if self.groups > 1 else {}),
                    **({"padding_mode": self.padding_mode} if self.padding_mode != "zeros" else {}))


class ConvTranspose2D(_WeightLayer):
    """2-D transposed convolution with weight ``(in_channels, out_channels // groups, kH, kW)``, as
    ``torch.nn.ConvTranspose2d``. See :func:`fastcnn.functional.conv_transpose2d`.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, output_padding, dilation : int or (int, int)
    groups : int
    bias : bool
    init : {"he", "glorot"}
    rng : numpy.random.Generator or int, optional
    backend : {"auto", "numba", "numpy"}, optional
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: IntOrPair = 0, output_padding: IntOrPair = 0, groups: int = 1, bias: bool = True,
                 dilation: IntOrPair = 1, init: str = "he", rng=None, backend: str | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = _channels(in_channels, out_channels, groups)
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.output_padding = pair("output_padding", output_padding, 0)
        self.dilation = pair("dilation", dilation, 1)
        self.init = init
        self.backend = backend
        kh, kw = self.kernel_size
        shape = (self.in_channels, self.out_channels // groups, kh, kw)
        self.params["weight"] = fresh(shape, lambda: _init_weight(init, shape, shape[1] * kh * kw,
                                                                  shape[0] // groups * kh * kw, get_rng(rng)))
        if bias:
            self.params["bias"] = fresh((out_channels,), lambda: np.zeros(out_channels, np.float32))
        self.grads = _zero_grads(self.params)
        self._x = None

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation)

    def forward(self, x, training=False):
        self._x = x if training else None
        return F.conv_transpose2d(x, self.params["weight"], self.params.get("bias"), backend=self.backend, **self._args())

    def _gradients(self, grad, input_grad):
        return F.conv_transpose2d_backward(grad, self._cached("_x"), self.params["weight"], input_grad=input_grad,
                                           backend=self.backend, **self._args())

    def output_shape(self, input_shape):
        _expect(self, input_shape, 3, "(N, C, H, W)")
        geo = conv_transpose_geometry((1,) + tuple(input_shape), self.params["weight"].shape, **self._args())
        return (self.out_channels,) + geo.out_hw

    def describe(self):
        extra = "".join(f", {k} {v}" for k, v in self._args().items() if v not in ((1, 1), (0, 0), 1))
        return f"ConvTranspose2D({self.in_channels}->{self.out_channels}, {self.kernel_size[0]}x{self.kernel_size[1]}{extra})"

    def get_config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=list(self.kernel_size),
                    **{k: v if isinstance(v, int) else list(v) for k, v in self._args().items()},
                    bias="bias" in self.params, init=self.init)


class _Pool2D(Layer):
    _options: tuple[str, ...] = ()  # the subclass's options beyond kernel_size, stride and padding

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 backend: str | None = None) -> None:
        super().__init__()
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.dilation = (1, 1)
        self.ceil_mode = False
        self.backend = backend
        self._input_shape = None

    def output_shape(self, input_shape):
        _expect(self, input_shape, 3, "(N, C, H, W)")
        geo = pool_geometry((1,) + tuple(input_shape), self.kernel_size, self.stride, self.padding, self.dilation,
                            int(self.ceil_mode))
        return (input_shape[0],) + geo.out_hw

    def get_config(self):
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in self._options)}
        return dict(kernel_size=list(self.kernel_size), stride=list(self.stride), padding=list(self.padding), **options)

    def describe(self):
        extra = "".join(f", {k} {v}" for k, v, default in (("stride", self.stride, self.kernel_size),
                                                          ("padding", self.padding, (0, 0))) if v != default)
        defaults = type(self)(1).get_config()
        extra += "".join(f", {k} {v}" for k, v in self.get_config().items() if k in self._options and v != defaults[k])
        return f"{type(self).__name__}({self.kernel_size[0]}x{self.kernel_size[1]}{extra})"


class MaxPool2D(_Pool2D):
    """2-D max pooling (implicit ``-inf`` padding; ties to the first maximum, a NaN to the last NaN), with
    ``dilation`` and ``ceil_mode`` as ``torch.nn.MaxPool2d``. See :func:`fastcnn.functional.max_pool2d`.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (windows side by side).
    padding : int or (int, int)
        At most half the window.
    dilation : int or (int, int)
        Spacing between a window's taps.
    ceil_mode : bool
        Round the output size up (a window must still start inside the input or its left padding).

    Notes
    -----
    Input ``(N, C, H, W)``, output ``(N, C, H_out, W_out)`` with, per axis,
    ``H_out = floor((H + 2 * padding - dilation * (kernel_size - 1) - 1) / stride) + 1`` (ceil with ``ceil_mode``).

    Examples
    --------
    >>> MaxPool2D(2).output_shape((8, 26, 26))                # floor((26 - 2) / 2) + 1
    (8, 13, 13)
    >>> MaxPool2D(3, stride=2, padding=1).output_shape((8, 28, 28))
    (8, 14, 14)
    """

    _options = ("dilation", "ceil_mode")

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 dilation: IntOrPair = 1, ceil_mode: bool = False, backend: str | None = None) -> None:
        super().__init__(kernel_size, stride, padding, backend)
        self.dilation = pair("dilation", dilation, 1)
        self.ceil_mode = bool(flag("ceil_mode", ceil_mode))

    def forward(self, x, training=False):
        y, argmax = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                 backend=self.backend)
        self._argmax, self._input_shape = (argmax, x.shape) if training else (None, None)
        return y

    def backward(self, grad):
        return F.max_pool2d_backward(grad, self._cached("_argmax"), self._input_shape, check_indices=False,
                                     backend=self.backend)


class FusedConv(_WeightLayer):
    """A :class:`Conv2D` and the layers after it that run with it as one op (``pool``, a
    :class:`MaxPool2D`, and ``relu``, a :class:`ReLU`, each None where absent): a step of
    :class:`fastcnn.Sequential`'s run order (see :func:`fastcnn.steps.fuse`), not a layer to add. The
    parameters and gradients are the convolution's own dicts."""

    def __init__(self, conv: Conv2D, pool: MaxPool2D | None, relu: ReLU | None) -> None:
        super().__init__()
        self.conv, self.pool, self.relu = conv, pool, relu
        self.params, self.grads = conv.params, conv.grads
        self._x = self._y = None

    def output_shape(self, input_shape):
        shape = self.conv.output_shape(input_shape)
        return shape if self.pool is None else self.pool.output_shape(shape)


class ConvMaxPool(FusedConv):
    """A :class:`Conv2D` and the :class:`MaxPool2D` after it, and optionally the :class:`ReLU` after
    that, run as one op, :func:`fastcnn.functional.conv2d_max_pool2d` (see :class:`FusedConv`)."""

    def __init__(self, conv: Conv2D, pool: MaxPool2D, relu: ReLU | None = None) -> None:
        super().__init__(conv, pool, relu)
        self._argmax = None

    def forward(self, x, training=False):
        conv, pool = self.conv, self.pool
        y, argmax = F.conv2d_max_pool2d(x, conv.params["weight"], conv.params.get("bias"), **conv.geometry(),
                                        pool_size=pool.kernel_size, pool_stride=pool.stride,
                                        pool_padding=pool.padding, relu=self.relu is not None,
                                        pool_dilation=pool.dilation, pool_ceil_mode=pool.ceil_mode, backend=conv.backend)
        self._x, self._argmax, self._y = (x, argmax, y) if training else (None, None, None)
        return y

    def _gradients(self, grad, input_grad):
        conv = self.conv
        argmax = self._cached("_argmax")
        return F.conv2d_max_pool2d_backward(grad, argmax, self._cached("_x"), conv.params["weight"],
                                            relu_output=self._y if self.relu is not None else None,
                                            input_grad=input_grad, check_indices=False, backend=conv.backend,
                                            **conv.geometry())

    def __repr__(self) -> str:
        return f"ConvMaxPool({self.conv!r}, {self.pool!r}, {self.relu!r})"


class ConvReLU(FusedConv):
    """A :class:`Conv2D` and the :class:`ReLU` after it, run as one op, :func:`fastcnn.functional.conv2d_relu`
    (see :class:`FusedConv`)."""

    def __init__(self, conv: Conv2D, relu: ReLU) -> None:
        super().__init__(conv, None, relu)

    def forward(self, x, training=False):
        conv = self.conv
        y = F.conv2d_relu(x, conv.params["weight"], conv.params.get("bias"), **conv.geometry(), backend=conv.backend)
        self._x, self._y = (x, y) if training else (None, None)
        return y

    def _gradients(self, grad, input_grad):
        conv = self.conv
        return F.conv2d_relu_backward(grad, self._cached("_y"), self._cached("_x"), conv.params["weight"],
                                      input_grad=input_grad, backend=conv.backend, **conv.geometry())

    def __repr__(self) -> str:
        return f"ConvReLU({self.conv!r}, {self.relu!r})"


class AvgPool2D(_Pool2D):
    """2-D average pooling with ``ceil_mode``, ``count_include_pad`` and ``divisor_override`` as
    ``torch.nn.AvgPool2d``. See :func:`fastcnn.functional.avg_pool2d`.

    Parameters and output size as :class:`MaxPool2D` (no dilation):
    ``H_out = floor((H + 2 * padding - kernel_size) / stride) + 1``; padded zeros count in the average
    unless ``count_include_pad=False``; ``divisor_override`` replaces the window size as the divisor.

    Examples
    --------
    >>> AvgPool2D(2).output_shape((16, 11, 11))               # floor((11 - 2) / 2) + 1: the last row is dropped
    (16, 5, 5)
    """

    _options = ("ceil_mode", "count_include_pad", "divisor_override")

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
                 backend: str | None = None) -> None:
        super().__init__(kernel_size, stride, padding, backend)
        self.ceil_mode = bool(flag("ceil_mode", ceil_mode))
        self.count_include_pad = bool(flag("count_include_pad", count_include_pad))
        if divisor_override is not None:
            positive_int("divisor_override", divisor_override)
        self.divisor_override = divisor_override

    def _options_args(self):
        return dict(ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override, backend=self.backend)

    def forward(self, x, training=False):
        self._input_shape = x.shape if training else None
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, **self._options_args())

    def backward(self, grad):
        return F.avg_pool2d_backward(grad, self._cached("_input_shape"), self.kernel_size, self.stride,
                                     self.padding, **self._options_args())


class _GlobalPool2D(Layer):
    """``(N, C, H, W) -> (N, C)``: one value per plane."""

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self._input_shape = None

    def output_shape(self, input_shape):
        _expect(self, input_shape, 3, "(N, C, H, W)")
        if min(input_shape) < 1:
            raise ValueError(f"{self!r} needs a non-empty (C, H, W), got (N, {', '.join(map(str, input_shape))})")
        return (input_shape[0],)


class GlobalAvgPool2D(_GlobalPool2D):
    """The mean of every channel's plane, ``(N, C, H, W) -> (N, C)``. See :func:`fastcnn.functional.global_avg_pool2d`."""

    def forward(self, x, training=False):
        self._input_shape = np.shape(x) if training else None
        return F.global_avg_pool2d(x, backend=self.backend)

    def backward(self, grad):
        return F.global_avg_pool2d_backward(grad, self._cached("_input_shape"), backend=self.backend)


class GlobalMaxPool2D(_GlobalPool2D):
    """The maximum of every channel's plane, ``(N, C, H, W) -> (N, C)``. See :func:`fastcnn.functional.global_max_pool2d`."""

    def forward(self, x, training=False):
        y, argmax = F.global_max_pool2d(x, backend=self.backend)
        self._argmax, self._input_shape = (argmax, np.shape(x)) if training else (None, None)
        return y

    def backward(self, grad):
        return F.global_max_pool2d_backward(grad, self._cached("_argmax"), self._input_shape, check_indices=False,
                                            backend=self.backend)


class Dense(_WeightLayer):
    """Fully connected layer ``y = x @ weight.T + bias`` with weight ``(out_features, in_features)``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    init : {"he", "glorot"}
    rng : numpy.random.Generator or int, optional

    Notes
    -----
    Input ``(N, in_features)``, output ``(N, out_features)``; after convolutions, put a
    :class:`Flatten` first and take ``in_features = C * H * W`` of the last conv or pool output
    (``Sequential.summary()`` shows it).

    Examples
    --------
    >>> Dense(400, 128).output_shape((400,))
    (128,)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he", rng=None) -> None:
        super().__init__()
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.init = init
        shape = (self.out_features, self.in_features)
        self.params["weight"] = fresh(shape, lambda: _init_weight(init, shape, in_features, out_features, get_rng(rng)))
        if bias:
            self.params["bias"] = fresh((out_features,), lambda: np.zeros(out_features, np.float32))
        self.grads = _zero_grads(self.params)
        self._x = None

    def forward(self, x, training=False):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input of shape (N, {self.in_features}), got {x.shape}")
        self._x = x if training else None
        return F.linear(x, self.params["weight"], self.params.get("bias"))

    def _gradients(self, grad, input_grad):
        return F.linear_backward(grad, self._cached("_x"), self.params["weight"], input_grad=input_grad)

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects input of shape (N, {self.in_features}), got (N, {', '.join(map(str, input_shape))})")
        return (self.out_features,)

    def describe(self):
        return f"Dense({self.in_features}->{self.out_features})"

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features, bias="bias" in self.params, init=self.init)


class Flatten(Layer):
    """Flatten every axis but the batch axis, in C order (as ``torch.nn.Flatten``).

    Input ``(N, C, H, W)`` (or any ``(N, ...)``), output ``(N, C * H * W)``.

    Examples
    --------
    >>> Flatten().output_shape((16, 5, 5))                    # 16 * 5 * 5
    (400,)
    """

    def forward(self, x, training=False):
        x = self._input(x, 2)
        self._shape, self._dtype = x.shape, x.dtype
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 cannot be inferred when N is 0

    def backward(self, grad):
        shape = self._cached("_shape")
        return check_grad("grad", grad, (shape[0], math.prod(shape[1:])), self._dtype).reshape(shape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    Each mask comes from a seed drawn from ``rng`` (a NumPy Generator), so a seed reproduces a run;
    see :func:`fastcnn.functional.dropout`. Outside training (``predict``, ``evaluate``) it passes its
    input through unchanged. The output has the input's shape.

    Examples
    --------
    >>> Dropout(0.25).output_shape((128,))
    (128,)
    """

    def __init__(self, p: float = 0.5, rng=None) -> None:
        super().__init__()
        if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
            raise ValueError(f"Dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = get_rng(rng)
        self._seed = None

    def forward(self, x, training=False):
        x = self._input(x)
        self._shape, self._dtype = x.shape, x.dtype
        if not training or self.p == 0.0:
            self._seed = None
            return x
        self._seed = int(self.rng.integers(2**64, dtype=np.uint64))  # the mask's seed: backward draws it again
        return F.dropout(x, self.p, self._seed)

    def backward(self, grad):
        grad = check_grad("grad", grad, self._cached("_shape"), self._dtype)
        return grad if self._seed is None else F.dropout(grad, self.p, self._seed)

    def get_config(self):
        return dict(p=self.p)


class _Activation(Layer):
    """An element-wise (or row-wise) function whose derivative is computed from its output ``y``."""

    def forward(self, x, training=False):
        y = self._apply(self._input(x))
        self._y = y if training else None
        return y

    def backward(self, grad):
        y = self._cached("_y")
        return self._grad(check_grad("grad", grad, y.shape, y.dtype), y)

    def _apply(self, x):
        raise NotImplementedError

    def _grad(self, grad, y):
        raise NotImplementedError


class ReLU(_Activation):
    """``max(x, 0)``."""

    def _apply(self, x):
        return F.relu(x)

    def _grad(self, grad, y):
        return F.relu_backward(grad, y)


class Tanh(_Activation):
    """Hyperbolic tangent."""

    def _apply(self, x):
        return F.tanh(x)

    def _grad(self, grad, y):
        return F.tanh_backward(grad, y)


class Sigmoid(_Activation):
    """Logistic function ``1 / (1 + exp(-x))``, stable for any ``x``."""

    def _apply(self, x):
        return F.sigmoid(x)

    def _grad(self, grad, y):
        return F.sigmoid_backward(grad, y)


class Softmax(_Activation):
    """Softmax over the last axis. For training with cross-entropy, end the model in logits instead:
    :class:`fastcnn.losses.CrossEntropyLoss` fuses the softmax and is exact for logits of any size."""

    def _apply(self, x):
        return F.softmax(x)

    def _grad(self, grad, y):
        return F.softmax_backward(grad, y)


class _InputActivation(Layer):
    """An element-wise function whose derivative is computed from its input ``x``: the op ``_op`` and
    its gradient ``_op + "_backward"`` in :mod:`fastcnn.functional`, with :meth:`_args` after ``x``."""

    _op = ""

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self._x = None

    def _args(self) -> dict[str, Any]:
        return {}

    def forward(self, x, training=False):
        x = self._input(x)
        self._x = x if training else None
        return getattr(F, self._op)(x, **self._args(), backend=self.backend)

    def backward(self, grad):
        return getattr(F, self._op + "_backward")(grad, self._cached("_x"), **self._args(), backend=self.backend)

    def get_config(self):
        return self._args()


class LeakyReLU(_InputActivation):
    """``x`` where positive, else ``negative_slope * x``, as ``torch.nn.LeakyReLU``."""

    _op = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, backend: str | None = None) -> None:
        super().__init__(backend)
        F.leaky_relu(np.zeros(0, np.float32), negative_slope)  # checks negative_slope
        self.negative_slope = float(negative_slope)

    def _args(self):
        return dict(negative_slope=self.negative_slope)


class SiLU(_InputActivation):
    """``x * sigmoid(x)`` (swish), as ``torch.nn.SiLU``."""

    _op = "silu"


class GELU(_InputActivation):
    """``x * Phi(x)``, Phi the standard normal CDF, as ``torch.nn.GELU``; ``approximate="tanh"`` uses
    PyTorch's tanh approximation."""

    _op = "gelu"

    def __init__(self, approximate: str = "none", backend: str | None = None) -> None:
        super().__init__(backend)
        F.gelu(np.zeros(0, np.float32), approximate)  # checks approximate
        self.approximate = approximate

    def _args(self):
        return dict(approximate=self.approximate)


class BatchNorm(Layer):
    _axes: tuple[int, ...] = ()
    _ndim = 0
    stats_reducer = None
    """None, or while :meth:`fastcnn.Sequential.fit` trains with ``sync_batchnorm=True`` the
    :class:`fastcnn.distributed.BatchNormSync` that makes the batch statistics (and the input gradient)
    those of the global batch, over every process."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, backend: str | None = None) -> None:
        super().__init__()
        self.num_features = positive_int("num_features", num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        n = (self.num_features,)
        self.params = {"weight": fresh(n, lambda: np.ones(n, np.float32)), "bias": fresh(n, lambda: np.zeros(n, np.float32))}
        self.grads = _zero_grads(self.params)
        self.backend = backend
        self.buffers = {
            "running_mean": fresh(n, lambda: np.zeros(n, np.float32)),
            "running_var": fresh(n, lambda: np.ones(n, np.float32)),
            "num_batches_tracked": fresh((), lambda: np.zeros((), np.int64), np.int64),
        }

    def forward(self, x, training=False):
        return self._forward(x, training, relu=False)

    def _forward(self, x, training, relu):
        x = self._input(x)
        if x.ndim != self._ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects input with {self._ndim} dims and {self.num_features} channels, got {x.shape}")
        sync = self.stats_reducer if training else None
        count = x.size // self.num_features
        stats = () if training else (self.buffers["running_mean"], self.buffers["running_var"])
        if sync is not None:  # this process's statistics, combined with every other's
            stats, count = sync.statistics(*F.batch_norm_stats(x, backend=self.backend), count)
        if training and count < 2:
            raise ValueError(f"{type(self).__name__} needs more than one value per channel in training, got input {x.shape}"
                             + ("" if sync is None else f" ({count} values per channel over all processes)"))
        y, mean, var = F.batch_norm(x, self.params["weight"], self.params["bias"], *stats, eps=self.eps, relu=relu,
                                    backend=self.backend)
        if training:
            m = self.momentum
            self.buffers["running_mean"] = ((1 - m) * self.buffers["running_mean"] + m * mean).astype(x.dtype)
            self.buffers["running_var"] = ((1 - m) * self.buffers["running_var"] + m * var * count / (count - 1)).astype(x.dtype)
            self.buffers["num_batches_tracked"] = self.buffers["num_batches_tracked"] + 1
        self._cache = (x, mean, var, y if relu else None, sync, count) if training else None
        return y

    def backward(self, grad):
        x, mean, var, relu_output, sync, count = self._cached("_cache")
        weight, options = self.params["weight"], dict(eps=self.eps, relu_output=relu_output, backend=self.backend)
        if sync is None:
            gx, self.grads["weight"], self.grads["bias"] = F.batch_norm_backward(grad, x, weight, mean, var, **options)
            return gx
        self.grads["weight"], self.grads["bias"] = F.batch_norm_grad_sums(grad, x, mean, var, **options)
        sums = sync.gradient_sums(self.grads["weight"], self.grads["bias"], share=x.size // self.num_features / count)
        return F.batch_norm_input_grad(grad, x, weight, mean, var, *sums, **options)

    def output_shape(self, input_shape):
        if len(input_shape) != self._ndim - 1 or input_shape[0] != self.num_features:
            raise ValueError(f"{self!r} expects {self.num_features} channels in {self._ndim}-D input, got (N, {', '.join(map(str, input_shape))})")
        return input_shape

    def get_config(self):
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum)


class BatchNormReLU(Layer):
    """A batch norm and the :class:`ReLU` after it, run as one op (:func:`fastcnn.functional.batch_norm`
    with ``relu=True``): a step of :class:`fastcnn.Sequential`'s run order, not a layer to add. The
    parameters, gradients and buffers are the batch norm's own dicts."""

    def __init__(self, norm: BatchNorm, relu: ReLU) -> None:
        super().__init__()
        self.norm, self.relu = norm, relu
        self.params, self.grads, self.buffers = norm.params, norm.grads, norm.buffers

    def forward(self, x, training=False):
        return self.norm._forward(x, training, relu=True)

    def backward(self, grad):
        return self.norm.backward(grad)

    def output_shape(self, input_shape):
        return self.norm.output_shape(input_shape)

    def __repr__(self) -> str:
        return f"BatchNormReLU({self.norm!r}, {self.relu!r})"


class BatchNorm2D(BatchNorm):
    """Batch normalisation over (N, H, W) for each channel of NCHW input, as ``torch.nn.BatchNorm2d``.

    Parameters
    ----------
    num_features : int
    eps : float
        Added to the variance; a batch whose channel is constant normalises to zero instead of NaN.
    momentum : float
        Weight of the new batch in the running statistics.

    Notes
    -----
    The output has the input's shape ``(N, num_features, H, W)``.

    Examples
    --------
    >>> BatchNorm2D(8).output_shape((8, 26, 26))
    (8, 26, 26)
    """

    _axes = (0, 2, 3)
    _ndim = 4


class BatchNorm1D(BatchNorm):
    """Batch normalisation over N for each feature of (N, C) input, as ``torch.nn.BatchNorm1d``; the
    output has the input's shape.

    Examples
    --------
    >>> BatchNorm1D(128).output_shape((128,))
    (128,)
    """

    _axes = (0,)
    _ndim = 2


LAYER_TYPES = {cls.__name__: cls for cls in (Conv2D, ConvTranspose2D, MaxPool2D, AvgPool2D, Dense, Flatten, Dropout, ReLU, Tanh,
                                            Sigmoid, Softmax, LeakyReLU, SiLU, GELU, BatchNorm2D, BatchNorm1D,
                                            GlobalAvgPool2D, GlobalMaxPool2D)}
