"""ONNX export and import of :class:`~fastcnn.model.Sequential` models (needs ``pip install 'fastcnn[onnx]'``).

Export writes one node (or none) per layer, through a table of converters keyed by the layer's type
name: a new layer type is one function registered with ``@_exports("TypeName")``. Import reads a
chain of ONNX nodes through a second table keyed by op type (``@_imports("OpType")``); each importer
turns one node into a fastcnn layer (or into nothing, for Identity and Constant).

Naming: the graph's input is ``input`` with a symbolic batch axis ``N``, its output ``output``; the
initializers are named as :meth:`Sequential.state_dict` names the parameters (``"0.weight"``), and
each node as its layer (``"0.Conv2D"``).

Import never runs code from the file and never allocates what the file merely claims: the file's size
is bounded before it is parsed, every tensor's declared size is checked against the bytes that
actually hold it before an array is made, and layers hold placeholders (``weights_follow``) until
their checked arrays go in; tensors stored outside the file (external data) and weights holding NaN
or infinity (as :func:`fastcnn.load_model` refuses them) are refused.
This module is named ``onnx_io`` so that ``import onnx`` inside fastcnn means the ONNX package.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import _files, _untrusted
from ._checks import check_allocation, conv_geometry
from ._version import __version__
from .layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU,
                     Sigmoid, Softmax, Tanh, weights_follow)

__all__ = ["OPSET", "MAX_FILE_BYTES", "export_onnx", "load_onnx"]

OPSET = 17
"""The default-domain opset that export writes (ONNX Runtime 1.14 and later run it)."""

MAX_FILE_BYTES = 2**31 - 1
"""Largest file import reads: protobuf's own limit for one message."""

_INPUT, _OUTPUT = "input", "output"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX support needs the onnx package: pip install 'fastcnn[onnx]'") from None
    return onnx


# ====================================================================== export
@dataclass
class _Builder:
    """The graph being written: nodes, initializers and the name of the tensor the next node reads."""

    onnx: Any
    dtype: np.dtype
    current: str = _INPUT
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def tensor(self, name: str, array: np.ndarray) -> str:
        """Store ``array`` once as initializer ``name``; returns the name."""
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def param(self, index: int, layer: Layer, key: str) -> list[str]:
        """``[name]`` of the layer's parameter or buffer ``key`` stored as an initializer; ``[]`` if absent."""
        store = layer.params if key in layer.params else layer.buffers
        return [self.tensor(f"{index}.{key}", store[key])] if key in store else []

    def node(self, index: int, layer: Layer, op_type: str, extra_inputs: list[str], suffix: str = "", **attrs) -> None:
        """Append ``op_type`` reading the current tensor and ``extra_inputs``; its output becomes current.
        A layer written as several nodes gives each but the last a ``suffix`` (e.g. ``".sigmoid"``)."""
        name = f"{index}.{type(layer).__name__}{suffix}"
        self.nodes.append(self.onnx.helper.make_node(op_type, [self.current, *extra_inputs], [name], name=name, **attrs))
        self.current = name


_Exporter = Callable[[_Builder, int, Any, tuple], None]
_EXPORTERS: dict[str, _Exporter] = {}


def _exports(type_name: str) -> Callable[[_Exporter], _Exporter]:
    """Register the converter for fastcnn layers of type ``type_name``: ``fn(builder, index, layer, input_shape)``."""
    def register(fn: _Exporter) -> _Exporter:
        _EXPORTERS[type_name] = fn
        return fn
    return register


def _onnx_pads(pads) -> list[int]:
    """``((top, bottom), (left, right))`` as ONNX's ``[top, left, bottom, right]``."""
    (t, b), (l, r) = pads
    return [t, l, b, r]


@_exports("Conv2D")
def _export_conv(g: _Builder, i: int, layer: Conv2D, shape: tuple) -> None:
    w = layer.params["weight"]
    geo = conv_geometry((1,) + shape, w.shape, layer.stride, layer.padding, layer.dilation)
    g.node(i, layer, "Conv", g.param(i, layer, "weight") + g.param(i, layer, "bias"), kernel_shape=list(w.shape[2:]),
           strides=list(geo.stride), pads=_onnx_pads(geo.padding), dilations=list(geo.dilation), group=1)


def _pool_attrs(layer) -> dict:
    ph, pw = layer.padding
    return dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw], ceil_mode=0)


@_exports("MaxPool2D")
def _export_max_pool(g: _Builder, i: int, layer: MaxPool2D, shape: tuple) -> None:
    g.node(i, layer, "MaxPool", [], **_pool_attrs(layer))


@_exports("AvgPool2D")
def _export_avg_pool(g: _Builder, i: int, layer: AvgPool2D, shape: tuple) -> None:
    g.node(i, layer, "AveragePool", [], count_include_pad=1, **_pool_attrs(layer))


@_exports("Dense")
def _export_dense(g: _Builder, i: int, layer: Dense, shape: tuple) -> None:
    g.node(i, layer, "Gemm", g.param(i, layer, "weight") + g.param(i, layer, "bias"), transB=1)


@_exports("Flatten")
def _export_flatten(g: _Builder, i: int, layer: Flatten, shape: tuple) -> None:
    g.node(i, layer, "Flatten", [], axis=1)


@_exports("Dropout")
def _export_dropout(g: _Builder, i: int, layer: Dropout, shape: tuple) -> None:
    """An inference-mode Dropout (identity; ONNX Runtime removes it) that keeps ``p`` for import."""
    g.node(i, layer, "Dropout", [g.tensor(f"{i}.ratio", np.array(layer.p, g.dtype))])


def _elementwise(op_type: str, **attrs) -> _Exporter:
    """The converter of a layer that is one ONNX op without weights."""
    def convert(g: _Builder, i: int, layer: Layer, shape: tuple) -> None:
        g.node(i, layer, op_type, [], **attrs)
    return convert


_exports("ReLU")(_elementwise("Relu"))
_exports("Tanh")(_elementwise("Tanh"))
_exports("Sigmoid")(_elementwise("Sigmoid"))
_exports("Softmax")(_elementwise("Softmax", axis=-1))


@_exports("BatchNorm2D")
@_exports("BatchNorm1D")
def _export_batch_norm(g: _Builder, i: int, layer, shape: tuple) -> None:
    inputs = [name for key in ("weight", "bias", "running_mean", "running_var") for name in g.param(i, layer, key)]
    # ONNX's momentum weighs the running statistic, PyTorch's (and fastcnn's) the new batch.
    g.node(i, layer, "BatchNormalization", inputs, epsilon=layer.eps, momentum=1.0 - layer.momentum)


def export_onnx(model, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> None:
    """Write ``model`` as an ONNX file (opset :data:`OPSET`, batch axis ``N`` dynamic), atomically.

    Parameters
    ----------
    model : Sequential
    path : path-like
    input_shape : tuple of int, optional
        Per-sample input shape; defaults to ``model.input_shape``.

    Raises
    ------
    ValueError
        No input shape, or a layer with no ONNX converter.
    ImportError
        The ``onnx`` package is not installed.
    """
    onnx = _onnx()
    shape = tuple(input_shape or model.input_shape or ())
    if not shape:
        raise ValueError("export_onnx needs the per-sample input shape: pass input_shape, or build the model with it")
    shapes = [shape] + model.output_shapes(shape)
    missing = [type(layer).__name__ for layer in model.layers if type(layer).__name__ not in _EXPORTERS]
    if missing:
        raise ValueError(f"cannot export layers of type {', '.join(sorted(set(missing)))} to ONNX; "
                         f"exportable: {', '.join(sorted(_EXPORTERS))}")
    g = _Builder(onnx, model.dtype)
    for i, layer in enumerate(model.layers):
        _EXPORTERS[type(layer).__name__](g, i, layer, shapes[i])
    elem = onnx.helper.np_dtype_to_tensor_dtype(model.dtype)
    if g.nodes:
        g.nodes[-1].output[0] = _OUTPUT
    else:
        g.nodes.append(onnx.helper.make_node("Identity", [_INPUT], [_OUTPUT], name="identity"))
    graph = onnx.helper.make_graph(
        g.nodes, "fastcnn",
        [onnx.helper.make_tensor_value_info(_INPUT, elem, ["N", *shape])],
        [onnx.helper.make_tensor_value_info(_OUTPUT, elem, ["N", *shapes[-1]])],
        g.initializers)
    proto = onnx.helper.make_model(graph, producer_name="fastcnn", producer_version=__version__,
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    proto.ir_version = min(proto.ir_version, 8)  # what opset 17 needs; older runtimes refuse newer IR versions
    data = proto.SerializeToString()
    with _files.atomic_write(path) as fh:
        fh.write(data)


# ====================================================================== import
_NP_TYPES = {1: np.float32, 11: np.float64, 6: np.int32, 7: np.int64}  # TensorProto's FLOAT, DOUBLE, INT32, INT64
_FIELDS = {1: "float_data", 11: "double_data", 6: "int32_data", 7: "int64_data"}


@dataclass
class _Reader:
    """The chain being read: the tensor the next node must read, its per-sample shape, the layers so
    far, and the constant tensors (initializers and Constant nodes) by name."""

    path: str
    file_size: int
    opset: int
    dtype: np.dtype
    current: str
    shape: tuple
    constants: dict[str, Any]
    layers: list = field(default_factory=list)

    def fail(self, node, message: str) -> ValueError:
        return ValueError(f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type}): {message}")

    def constant(self, node, index: int, what: str, dtype=None) -> np.ndarray | None:
        """Input ``index`` of ``node`` as an array (None if absent); it must be a constant tensor."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.constants:
            raise self.fail(node, f"its {what} ({name!r}) must be a constant tensor (an initializer), "
                                  "not computed in the graph")
        value = self.constants[name]
        if not isinstance(value, np.ndarray):
            value = self.constants[name] = tensor_array(value, self.file_size, f"{self.path}: tensor {name!r}")
        if dtype is not None and value.dtype.kind != np.dtype(dtype).kind:
            raise self.fail(node, f"its {what} ({name!r}) has dtype {value.dtype}, expected {np.dtype(dtype).kind}")
        return value

    def assign(self, node, layer: Layer, key: str, value: np.ndarray) -> None:
        """Copy ``value`` into the layer's parameter or buffer ``key`` after checking its shape."""
        store = layer.params if key in layer.params else layer.buffers
        if value.shape != store[key].shape:
            raise self.fail(node, f"{key} has shape {value.shape}; {layer.describe()} needs {store[key].shape}")
        if value.dtype.kind != "f":
            raise self.fail(node, f"{key} must be floating point, got {value.dtype}")
        if _untrusted.first_non_finite([(key, value)]):
            raise self.fail(node, f"{key} holds NaN or infinity; a trained model's weights are finite")
        store[key] = value.astype(self.dtype)


def tensor_array(tensor, file_size: int, what: str) -> np.ndarray:
    """A TensorProto as an array, after checking that its declared size fits the file and matches the
    bytes that hold it (nothing is allocated for a size the file merely claims)."""
    if tensor.data_location == 1 or len(tensor.external_data):
        raise ValueError(f"{what} is stored outside the file (external data); fastcnn reads self-contained files only")
    dtype = _NP_TYPES.get(tensor.data_type)
    if dtype is None:
        raise ValueError(f"{what} has element type {tensor.data_type}; fastcnn reads float, double, int32 and int64")
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} declares negative dimensions {dims}")
    count = math.prod(dims)
    itemsize = np.dtype(dtype).itemsize
    if count * itemsize > file_size:
        raise ValueError(f"{what} declares shape {dims} ({count * itemsize:,} bytes), more than the whole file "
                         f"({file_size:,} bytes)")
    if tensor.HasField("raw_data"):
        raw = tensor.raw_data
        if len(raw) != count * itemsize:
            raise ValueError(f"{what} declares shape {dims} ({count * itemsize:,} bytes) but holds {len(raw):,} bytes")
        return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(dims)
    values = getattr(tensor, _FIELDS[tensor.data_type])
    if len(values) != count:
        raise ValueError(f"{what} declares shape {dims} ({count:,} values) but holds {len(values):,}")
    return np.array(values, dtype=dtype).reshape(dims)


_Importer = Callable[[_Reader, Any, dict], "Layer | None"]
_IMPORTERS: dict[str, _Importer] = {}


def _imports(*op_types: str) -> Callable[[_Importer], _Importer]:
    """Register the importer of ONNX nodes ``op_types``: ``fn(reader, node, attrs)`` returns the layer
    (None adds none); ``attrs`` maps attribute names to Python values."""
    def register(fn: _Importer) -> _Importer:
        for op in op_types:
            _IMPORTERS[op] = fn
        return fn
    return register


def _ints(r: _Reader, node, attrs: dict, name: str, length: int, default) -> tuple[int, ...]:
    value = attrs.get(name, default)
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(isinstance(v, int) for v in value):
        raise r.fail(node, f"attribute {name} must be {length} integers, got {value!r}")
    return tuple(value)


def _spatial(r: _Reader, node) -> tuple[int, int]:
    if len(r.shape) != 3:
        raise r.fail(node, f"needs an (N, C, H, W) input, got (N, {', '.join(map(str, r.shape))})")
    return r.shape[1], r.shape[2]


def _pads(r: _Reader, node, attrs: dict, kernel: tuple[int, int], stride, dilation) -> tuple[tuple, tuple]:
    """``((top, bottom), (left, right))`` from ``pads`` or ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", "VALID"):
        t, l, b, rr = _ints(r, node, attrs, "pads", 4, [0, 0, 0, 0]) if auto == "NOTSET" else (0, 0, 0, 0)
        return (t, b), (l, rr)
    if auto in ("SAME_UPPER", "SAME_LOWER") and tuple(stride) == (1, 1):
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((tot // 2, tot - tot // 2) if auto == "SAME_UPPER" else (tot - tot // 2, tot // 2) for tot in totals)
    raise r.fail(node, f"auto_pad={auto!r} with strides {tuple(stride)} is not supported")


def _check_attrs(r: _Reader, node, attrs: dict, allowed: dict) -> None:
    """Refuse attributes fastcnn cannot honour: ``allowed`` maps a name to its only accepted value
    (``...``: any value, handled by the importer)."""
    for name, value in attrs.items():
        if name not in allowed:
            raise r.fail(node, f"attribute {name}={value!r} is not supported")
        if allowed[name] is not ... and value != allowed[name]:
            raise r.fail(node, f"attribute {name}={value!r} is not supported (only {allowed[name]!r})")


@_imports("Conv")
def _import_conv(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., dilations=..., auto_pad=..., group=1))
    _spatial(r, node)
    w = r.constant(node, 1, "weight", np.float32)
    b = r.constant(node, 2, "bias", np.float32)
    if w is None or w.ndim != 4:
        raise r.fail(node, f"needs a 4-D weight (C_out, C_in, kH, kW), got {None if w is None else w.shape}")
    kernel = _ints(r, node, attrs, "kernel_shape", 2, list(w.shape[2:]))
    if kernel != w.shape[2:]:
        raise r.fail(node, f"kernel_shape {kernel} does not match the weight {w.shape}")
    stride = _ints(r, node, attrs, "strides", 2, [1, 1])
    dilation = _ints(r, node, attrs, "dilations", 2, [1, 1])
    pads = _pads(r, node, attrs, kernel, stride, dilation)
    if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
        padding: Any = (pads[0][0], pads[1][0])
    elif stride == (1, 1) and conv_geometry((1, w.shape[1], 1 + sum(pads[0]), 1 + sum(pads[1])), w.shape, 1, "same",
                                            dilation).padding == pads:
        padding = "same"
    else:
        raise r.fail(node, f"asymmetric pads {pads} other than 'same' padding are not supported")
    layer = Conv2D(w.shape[1], w.shape[0], kernel, stride, padding, dilation, bias=b is not None, rng=0)
    r.assign(node, layer, "weight", w)
    if b is not None:
        r.assign(node, layer, "bias", b)
    return layer


def _pool_args(r: _Reader, node, attrs: dict) -> tuple:
    _spatial(r, node)
    kernel = _ints(r, node, attrs, "kernel_shape", 2, None)
    stride = _ints(r, node, attrs, "strides", 2, [1, 1])
    (t, b), (left, right) = _pads(r, node, attrs, kernel, stride, (1, 1))
    if t != b or left != right:
        raise r.fail(node, f"asymmetric pads {((t, b), (left, right))} are not supported")
    return kernel, stride, (t, left)


@_imports("MaxPool")
def _import_max_pool(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., auto_pad=..., ceil_mode=0,
                                      dilations=[1, 1], storage_order=0))
    return MaxPool2D(*_pool_args(r, node, attrs))


@_imports("AveragePool")
def _import_avg_pool(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., auto_pad=..., ceil_mode=0,
                                      dilations=[1, 1], count_include_pad=...))
    kernel, stride, padding = _pool_args(r, node, attrs)
    if padding != (0, 0) and attrs.get("count_include_pad", 0) != 1:
        raise r.fail(node, "padded average pooling must count the padding (count_include_pad=1), as fastcnn does")
    return AvgPool2D(kernel, stride, padding)


@_imports("GlobalAveragePool", "GlobalMaxPool")
def _import_global_pool(r: _Reader, node, attrs: dict) -> Layer:
    """A pool whose window is the whole (static) plane."""
    _check_attrs(r, node, attrs, {})
    hw = _spatial(r, node)
    return (AvgPool2D if node.op_type == "GlobalAveragePool" else MaxPool2D)(hw)


@_imports("Gemm")
def _import_gemm(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(alpha=1.0, beta=1.0, transA=0, transB=...))
    w = r.constant(node, 1, "weight", np.float32)
    b = r.constant(node, 2, "bias", np.float32)
    if w is None or w.ndim != 2:
        raise r.fail(node, f"needs a 2-D weight, got {None if w is None else w.shape}")
    w = w if attrs.get("transB", 0) else w.T
    if b is not None and b.ndim == 2 and b.shape[0] == 1:
        b = b[0]
    return _dense(r, node, w, b)


def _dense(r: _Reader, node, w: np.ndarray, b: np.ndarray | None) -> Layer:
    layer = Dense(w.shape[1], w.shape[0], bias=b is not None, rng=0)
    r.assign(node, layer, "weight", w)
    if b is not None:
        r.assign(node, layer, "bias", b)
    return layer


@_imports("MatMul")
def _import_matmul(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, {})
    w = r.constant(node, 1, "weight", np.float32)
    if w is None or w.ndim != 2:
        raise r.fail(node, f"needs a 2-D constant right operand, got {None if w is None else w.shape}")
    return _dense(r, node, w.T, None)


@_imports("Add")
def _import_add(r: _Reader, node, attrs: dict) -> None:
    """The bias after a MatMul: the Dense before it gains the bias."""
    _check_attrs(r, node, attrs, {})
    if len(node.input) != 2:
        raise r.fail(node, f"takes {len(node.input)} inputs; Add takes two")
    other = 1 if node.input[0] == r.current else 0
    if node.input[other] not in r.constants:
        raise r.fail(node, "adds two computed tensors (a residual connection or other branch), which fastcnn "
                           "cannot represent in a Sequential yet")
    b = r.constant(node, other, "bias", np.float32)
    last = r.layers[-1] if r.layers else None
    if not (type(last) is Dense and "bias" not in last.params):
        raise r.fail(node, "adds a constant other than a bias after a bias-free MatMul or Gemm")
    r.layers[-1] = _dense(r, node, last.params["weight"], b.reshape(-1) if b.ndim == 2 and b.shape[0] == 1 else b)
    return None  # the Dense before it now has the bias; the shape is unchanged


@_imports("Flatten")
def _import_flatten(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(axis=1))
    return Flatten()


@_imports("Reshape")
def _import_reshape(r: _Reader, node, attrs: dict) -> Layer:
    """A reshape to ``(N, everything else)``: a Flatten."""
    _check_attrs(r, node, attrs, dict(allowzero=0))
    target = r.constant(node, 1, "shape", np.int64)
    size = math.prod(r.shape)
    if target is None or target.ndim != 1 or len(target) != 2 or int(target[0]) not in (0, -1) or \
            int(target[1]) not in (-1, size) or tuple(target) == (-1, -1):
        raise r.fail(node, f"reshapes to {None if target is None else target.tolist()}; fastcnn reads only a "
                           f"flatten to (N, {size}) ([0, -1], [-1, {size}] or [0, {size}])")
    return Flatten()


@_imports("Relu", "Tanh", "Sigmoid")
def _import_activation(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, {})
    return {"Relu": ReLU, "Tanh": Tanh, "Sigmoid": Sigmoid}[node.op_type]()


@_imports("Softmax")
def _import_softmax(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(axis=...))
    rank = len(r.shape) + 1
    axis = attrs.get("axis", -1 if r.opset >= 13 else 1)
    axis = axis + rank if isinstance(axis, int) and axis < 0 else axis
    if axis != rank - 1 or (r.opset < 13 and rank != 2):
        raise r.fail(node, f"softmax over axis {attrs.get('axis')} of a rank-{rank} tensor (opset {r.opset}); "
                           "fastcnn's Softmax is over the last axis")
    return Softmax()


@_imports("BatchNormalization")
def _import_batch_norm(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(epsilon=..., momentum=..., training_mode=0, spatial=1))
    names = ("weight", "bias", "running_mean", "running_var")
    values = [r.constant(node, k + 1, name, np.float32) for k, name in enumerate(names)]
    if any(v is None for v in values):
        raise r.fail(node, "needs scale, bias, mean and variance")
    kind = {2: BatchNorm2D, 0: BatchNorm1D}.get(len(r.shape) - 1)
    if kind is None:
        raise r.fail(node, f"needs an (N, C) or (N, C, H, W) input, got (N, {', '.join(map(str, r.shape))})")
    # Float attributes are float32 in ONNX: read back as the shortest decimal that float32 gives (1e-5, not 9.99e-6).
    eps, momentum = (float(str(np.float32(attrs.get(k, d)))) for k, d in (("epsilon", 1e-5), ("momentum", 0.9)))
    if not (eps > 0 and math.isfinite(eps) and 0 <= momentum <= 1):
        raise r.fail(node, f"epsilon must be finite and > 0 and momentum in [0, 1], got {eps} and {momentum}")
    layer = kind(r.shape[0], eps=eps, momentum=round(1.0 - momentum, 9))
    for name, value in zip(names, values):
        r.assign(node, layer, name, value)
    return layer


@_imports("Dropout")
def _import_dropout(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(ratio=..., seed=...))
    ratio = r.constant(node, 1, "ratio", np.float32)
    if len(node.input) > 2 and node.input[2]:
        mode = r.constant(node, 2, "training_mode")
        if mode.size != 1 or bool(mode.reshape(-1)[0]):
            raise r.fail(node, "dropout in training mode is not an inference graph")
    p = float(ratio.reshape(-1)[0]) if ratio is not None and ratio.size == 1 else float(attrs.get("ratio", 0.5))
    return Dropout(p, rng=0)


@_imports("Identity")
def _import_identity(r: _Reader, node, attrs: dict) -> None:
    _check_attrs(r, node, attrs, {})


def _attributes(r: _Reader, node, onnx) -> dict:
    attrs = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            attrs[a.name] = a.t
        elif a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING,
                        onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
            attrs[a.name] = onnx.helper.get_attribute_value(a)
            if isinstance(attrs[a.name], bytes):
                attrs[a.name] = attrs[a.name].decode("utf-8", "replace")
        else:
            raise r.fail(node, f"attribute {a.name!r} has a type fastcnn does not read ({a.type})")
    return attrs


def _read_proto(path: str, onnx):
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such ONNX file: {path}") from None
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, more than an ONNX file can hold ({MAX_FILE_BYTES:,}); "
                         "files with external data are not read")
    check_allocation(f"{path}: the ONNX file read into memory", (size,), np.uint8)
    data = _untrusted.read_limited(path, MAX_FILE_BYTES, "ONNX file")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and its relatives, whatever the backend
        raise ValueError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    return proto, len(data)


def _input_spec(path: str, graph, constants: dict) -> tuple[str, np.dtype, tuple]:
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1:
        raise ValueError(f"{path}: the graph has {len(inputs)} inputs ({[v.name for v in inputs]}); fastcnn reads one")
    value = inputs[0]
    ttype = value.type.tensor_type
    dtype = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}.get(ttype.elem_type)
    if dtype is None:
        raise ValueError(f"{path}: input {value.name!r} has element type {ttype.elem_type}; fastcnn reads float or double")
    dims = list(ttype.shape.dim)
    per_sample = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value < 1:
            raise ValueError(f"{path}: input {value.name!r} has shape "
                             f"{[x.dim_param or x.dim_value for x in dims]}: every axis but the batch axis must "
                             "be a fixed positive size (fastcnn plans for static image sizes)")
        per_sample.append(int(d.dim_value))
    if len(per_sample) not in (1, 3):
        raise ValueError(f"{path}: input {value.name!r} has rank {len(dims)}; fastcnn reads (N, C, H, W) or (N, F)")
    return value.name, dtype, tuple(per_sample)


def load_onnx(path: str | os.PathLike):
    """Read an ONNX model that is a chain of supported operators into a :class:`~fastcnn.model.Sequential`.

    Supported: Conv (groups 1), BatchNormalization (inference), Relu, Tanh, Sigmoid, Softmax (last
    axis), MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool (as pools over the whole plane),
    Flatten, Reshape to (N, features), Gemm, MatMul followed by Add, Dropout and Identity. The input
    must be (N, C, H, W) or (N, F) with a fixed size on every axis but N. This is what
    ``torch.onnx.export`` writes for a ``torch.nn.Sequential`` of the equivalent layers in eval mode.

    Raises
    ------
    ValueError
        The file is not ONNX, is damaged or oversized, stores tensors outside itself, or holds a graph
        fastcnn cannot represent; the message names the first node that cannot be read and its op type.
    ImportError
        The ``onnx`` package is not installed.
    """
    from .model import Sequential

    onnx = _onnx()
    path = os.fspath(path)
    proto, size = _read_proto(path, onnx)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"{path}: default-domain opset {opset}; fastcnn reads opsets 7 to {onnx.defs.onnx_opset_version()}")
    constants: dict[str, Any] = {t.name: t for t in graph.initializer}
    name, dtype, shape = _input_spec(path, graph, constants)
    r = _Reader(path, size, opset, dtype, name, shape, constants)  # r.shape follows the chain; shape stays
    consumed = [i for node in graph.node for i in node.input] + [o.name for o in graph.output]
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise r.fail(node, f"op {node.domain}::{node.op_type} is not supported")
        if node.op_type == "Constant":
            value = _attributes(r, node, onnx).get("value")
            if value is None or len(node.output) != 1:
                raise r.fail(node, "only Constant nodes holding a tensor are supported")
            r.constants[node.output[0]] = value
            continue
        importer = _IMPORTERS.get(node.op_type)
        if importer is None:
            raise r.fail(node, f"op type {node.op_type} is not supported; supported: {', '.join(sorted(_IMPORTERS))}")
        if r.current not in node.input[:2] or (node.input[0] != r.current and node.op_type != "Add"):
            raise r.fail(node, f"reads {list(node.input)}, not the output of the node before ({r.current!r}): "
                               "the graph is not a chain, which a Sequential needs")
        if not node.output or any(o in consumed for o in node.output[1:] if o):
            raise r.fail(node, "its second output is used; fastcnn reads inference graphs with one output per node")
        try:
            with weights_follow(dtype):  # placeholders until the file's arrays, checked, are put in
                layer = importer(r, node, _attributes(r, node, onnx))
            out_shape = r.shape if layer is None else tuple(layer.output_shape(r.shape))
        except (ValueError, TypeError) as exc:
            if str(exc).startswith(f"{path}: node "):
                raise
            raise r.fail(node, str(exc)) from None
        if layer is not None:
            r.layers.append(layer)
        r.current, r.shape = node.output[0], out_shape
    outputs = [o.name for o in graph.output]
    if outputs != [r.current]:
        raise ValueError(f"{path}: the graph's outputs are {outputs}; fastcnn reads one output, the end of the chain "
                         f"({r.current!r})")
    return Sequential(r.layers, input_shape=shape)
