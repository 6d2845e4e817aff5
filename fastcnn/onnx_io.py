"""ONNX export and import of :class:`~fastcnn.model.Sequential` models (needs ``pip install 'fastcnn[onnx]'``).

Export writes one node (or a few) per layer, through a table of converters keyed by the layer's type
name: a new layer type is one function registered with ``@_exports("TypeName")``; a
:class:`~fastcnn.blocks.Residual` writes its body and shortcut as two branches joined by an Add. Import
walks the graph from its input through a second table keyed by op type (``@_imports("OpType")``);
each importer turns one node into a fastcnn layer (or into nothing, for Identity and Constant). Where
a tensor is read by several nodes, the walk recognises the activations written as small graphs
(``_PATTERNS``: SiLU as Sigmoid and Mul, GELU before opset 20) or else a residual block: two branches
from the tensor that meet again in an Add, read as ``Residual(body, shortcut)``.

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

import heapq
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import _files, _untrusted
from ._checks import check_allocation, conv_geometry, pool_geometry, whole_windows
from ._version import __version__
from .functional import PAD_MODES
from .layers import (GELU, LAYER_TYPES, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, ConvTranspose2D, Dense, Dropout, Flatten,
                     GlobalAvgPool2D, GlobalMaxPool2D, Layer, LeakyReLU, MaxPool2D, ReLU, Sigmoid, SiLU, Softmax, Tanh,
                     weights_follow)

__all__ = ["OPSET", "MAX_FILE_BYTES", "MAX_SAMPLE_VALUES", "export_onnx", "read_onnx"]

OPSET = 20
"""The default-domain opset that export writes (ONNX Runtime 1.17 and later run it): 19 for Pad's
``wrap`` mode (circular padding), 20 for the Gelu op."""

MAX_FILE_BYTES = 2**31 - 1
"""Largest file import reads: protobuf's own limit for one message."""

MAX_SAMPLE_VALUES = 2**31
"""Most values a sample may have in the input or in any tensor import computes (a 64-channel 4096x4096
activation has 2**30); a file claiming more is refused, as a claim fastcnn will not plan for."""

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

    def param(self, index: str, layer: Layer, key: str) -> list[str]:
        """``[name]`` of the layer's parameter or buffer ``key`` stored as an initializer; ``[]`` if absent."""
        store = layer.params if key in layer.params else layer.buffers
        return [self.tensor(f"{index}.{key}", store[key])] if key in store else []

    def node(self, index: str, layer: Layer, op_type: str, extra_inputs: list[str], suffix: str = "", **attrs) -> None:
        """Append ``op_type`` reading the current tensor and ``extra_inputs``; its output becomes current.
        A layer written as several nodes gives each but the last a ``suffix`` (e.g. ``".sigmoid"``)."""
        name = f"{index}.{type(layer).__name__}{suffix}"
        self.nodes.append(self.onnx.helper.make_node(op_type, [self.current, *extra_inputs], [name], name=name, **attrs))
        self.current = name


_Exporter = Callable[[_Builder, str, Any, tuple], None]
_EXPORTERS: dict[str, _Exporter] = {}


def _exports(type_name: str) -> Callable[[_Exporter], _Exporter]:
    """Register the converter for fastcnn layers of type ``type_name``: ``fn(builder, name, layer, input_shape)``,
    ``name`` the layer's state-dict prefix (``"3"``, or ``"3.body.0"`` inside a block)."""
    def register(fn: _Exporter) -> _Exporter:
        _EXPORTERS[type_name] = fn
        return fn
    return register


def _onnx_pads(pads) -> list[int]:
    """``((top, bottom), (left, right))`` as ONNX's ``[top, left, bottom, right]``."""
    (t, b), (l, r) = pads
    return [t, l, b, r]


@_exports("Conv2D")
def _export_conv(g: _Builder, i: str, layer: Conv2D, shape: tuple) -> None:
    """A Conv; a padding mode other than zeros is a Pad node before it (``i.pads`` its pads)."""
    w = layer.params["weight"]
    geo = conv_geometry((1,) + shape, w.shape, layer.stride, layer.padding, layer.dilation, layer.groups)
    pads = _onnx_pads(geo.padding)
    if layer.padding_mode != "zeros":
        t, l, b, r = pads
        g.node(i, layer, "Pad", [g.tensor(f"{i}.pads", np.array([0, 0, t, l, 0, 0, b, r], np.int64))], suffix=".pad",
               mode=PAD_MODES[layer.padding_mode])  # NumPy's pad modes, which are ONNX's
        pads = [0, 0, 0, 0]
    g.node(i, layer, "Conv", g.param(i, layer, "weight") + g.param(i, layer, "bias"), kernel_shape=list(w.shape[2:]),
           strides=list(geo.stride), pads=pads, dilations=list(geo.dilation), group=layer.groups)


@_exports("ConvTranspose2D")
def _export_conv_transpose(g: _Builder, i: str, layer: ConvTranspose2D, shape: tuple) -> None:
    ph, pw = layer.padding
    g.node(i, layer, "ConvTranspose", g.param(i, layer, "weight") + g.param(i, layer, "bias"),
           kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw],
           dilations=list(layer.dilation), output_padding=list(layer.output_padding), group=layer.groups)


def _pool_attrs(i: str, layer, shape: tuple) -> dict:
    """A pool's attributes. ``ceil_mode`` is written only where it changes the output size: ONNX's
    formula lacks PyTorch's rule that drops a last window starting in the right padding, so a pool
    where that rule applies is the same pool in floor mode (ONNX Runtime itself follows PyTorch)."""
    ph, pw = layer.padding
    ours = layer.output_shape(shape)[1:]
    dilation = getattr(layer, "dilation", (1, 1))
    spans = [size + 2 * p - d * (k - 1) - 1 for size, p, d, k in zip(shape[1:], layer.padding, dilation, layer.kernel_size)]
    floor = tuple(span // s + 1 for span, s in zip(spans, layer.stride))
    ceil = tuple(-(-span // s) + 1 for span, s in zip(spans, layer.stride))
    if ours not in (floor, ceil):
        raise ValueError(f"layer {i} ({layer.describe()}) on input (N, {', '.join(map(str, shape))}): ceil_mode gives "
                         f"{ours}, which ONNX's pools give in neither mode (floor {floor}, ceil {ceil})")
    return dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw],
                ceil_mode=int(ours != floor))


@_exports("MaxPool2D")
def _export_max_pool(g: _Builder, i: str, layer: MaxPool2D, shape: tuple) -> None:
    g.node(i, layer, "MaxPool", [], dilations=list(layer.dilation), **_pool_attrs(i, layer, shape))


@_exports("AvgPool2D")
def _export_avg_pool(g: _Builder, i: str, layer: AvgPool2D, shape: tuple) -> None:
    """An AveragePool; ``divisor_override`` d is an AveragePool counting the padding followed by a Mul
    by ``kH * kW / d`` (``i.divisor``), exact when every window is whole (else a ValueError)."""
    count_pad = layer.count_include_pad
    if layer.divisor_override is not None:
        geo = pool_geometry((1,) + shape, layer.kernel_size, layer.stride, layer.padding, 1, int(layer.ceil_mode))
        if not whole_windows(geo, shape[1:], True):
            raise ValueError(f"layer {i} ({layer.describe()}) on input (N, {', '.join(map(str, shape))}): "
                             "divisor_override with windows cut at the border (ceil_mode) has no exact ONNX form")
        count_pad = count_pad or layer.padding != (0, 0)
    g.node(i, layer, "AveragePool", [], count_include_pad=int(count_pad), **_pool_attrs(i, layer, shape),
           suffix=".pool" if layer.divisor_override is not None else "")
    if layer.divisor_override is not None:
        scale = layer.kernel_size[0] * layer.kernel_size[1] / layer.divisor_override
        g.node(i, layer, "Mul", [g.tensor(f"{i}.divisor", np.array(scale, g.dtype))])


def _global_pool(op_type: str) -> _Exporter:
    """``(N, C, H, W) -> (N, C)``: ONNX's global pool keeps the 1x1 plane, a Flatten drops it."""
    def convert(g: _Builder, i: str, layer: Layer, shape: tuple) -> None:
        g.node(i, layer, op_type, [], suffix=".pool")
        g.node(i, layer, "Flatten", [], axis=1)
    return convert


_exports("GlobalAvgPool2D")(_global_pool("GlobalAveragePool"))
_exports("GlobalMaxPool2D")(_global_pool("GlobalMaxPool"))


@_exports("Dense")
def _export_dense(g: _Builder, i: str, layer: Dense, shape: tuple) -> None:
    g.node(i, layer, "Gemm", g.param(i, layer, "weight") + g.param(i, layer, "bias"), transB=1)


@_exports("Flatten")
def _export_flatten(g: _Builder, i: str, layer: Flatten, shape: tuple) -> None:
    g.node(i, layer, "Flatten", [], axis=1)


@_exports("Dropout")
def _export_dropout(g: _Builder, i: str, layer: Dropout, shape: tuple) -> None:
    """An inference-mode Dropout (identity; ONNX Runtime removes it) that keeps ``p`` for import."""
    g.node(i, layer, "Dropout", [g.tensor(f"{i}.ratio", np.array(layer.p, g.dtype))])


def _elementwise(op_type: str, **attrs) -> _Exporter:
    """The converter of a layer that is one ONNX op without weights."""
    def convert(g: _Builder, i: str, layer: Layer, shape: tuple) -> None:
        g.node(i, layer, op_type, [], **attrs)
    return convert


_exports("ReLU")(_elementwise("Relu"))
_exports("Tanh")(_elementwise("Tanh"))
_exports("Sigmoid")(_elementwise("Sigmoid"))
_exports("Softmax")(_elementwise("Softmax", axis=-1))
_exports("GELU")(lambda g, i, layer, shape: g.node(i, layer, "Gelu", [], approximate=layer.approximate))
_exports("LeakyReLU")(lambda g, i, layer, shape: g.node(i, layer, "LeakyRelu", [], alpha=layer.negative_slope))


@_exports("SiLU")
def _export_silu(g: _Builder, i: str, layer: SiLU, shape: tuple) -> None:
    x = g.current
    g.node(i, layer, "Sigmoid", [], suffix=".sigmoid")
    g.node(i, layer, "Mul", [x])


@_exports("Residual")
def _export_residual(g: _Builder, i: str, layer, shape: tuple) -> None:
    """The body and the shortcut as two branches from the block's input, joined by ``Add(body, shortcut)``."""
    x = g.current
    _export_layers(g, f"{i}.body.", layer.body, shape)
    body, g.current = g.current, x
    if layer.shortcut is not None:
        _export_layers(g, f"{i}.shortcut.", layer.shortcut, shape)
    shortcut, g.current = g.current, body
    g.node(i, layer, "Add", [shortcut])


@_exports("BatchNorm2D")
@_exports("BatchNorm1D")
def _export_batch_norm(g: _Builder, i: str, layer, shape: tuple) -> None:
    inputs = [name for key in ("weight", "bias", "running_mean", "running_var") for name in g.param(i, layer, key)]
    # ONNX's momentum weighs the running statistic, PyTorch's (and fastcnn's) the new batch.
    g.node(i, layer, "BatchNormalization", inputs, epsilon=layer.eps, momentum=1.0 - layer.momentum)


def _export_layers(g: _Builder, prefix: str, container, shape: tuple) -> None:
    """Write the layers of a Sequential ``container`` (per-sample input ``shape``), named ``prefix + index``."""
    missing = sorted({type(layer).__name__ for layer in container.layers} - set(_EXPORTERS))
    if missing:
        raise ValueError(f"cannot export layers of type {', '.join(missing)} to ONNX; "
                         f"exportable: {', '.join(sorted(_EXPORTERS))}")
    shapes = [shape] + (container.output_shapes(shape) if container.layers else [])
    for j, layer in enumerate(container.layers):
        _EXPORTERS[type(layer).__name__](g, f"{prefix}{j}", layer, shapes[j])


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
    g = _Builder(onnx, model.dtype)
    _export_layers(g, "", model, shape)
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
    proto.ir_version = min(proto.ir_version, 9)  # what opset 20 needs; older runtimes refuse newer IR versions
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
    nodes: list = field(default_factory=list)          # the graph's nodes but Constants, in the file's order
    consumers: dict = field(default_factory=dict)      # tensor name -> indices of the nodes reading it
    producer: dict = field(default_factory=dict)       # tensor name -> index of the node writing it
    used: set = field(default_factory=set)             # indices of the nodes read so far
    pad: tuple | None = None                           # a Pad's ((left, right, top, bottom), mode) for the next Conv
    last_input: tuple = ()                             # the input shape of the last layer appended
    whole_plane: dict = field(default_factory=dict)    # id of a pool read from a global pool -> its fastcnn type

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


def _same_pads(r: _Reader, node, attrs: dict, kernel, stride, dilation) -> tuple[tuple, tuple]:
    """``((top, bottom), (left, right))`` from ``pads`` or ``auto_pad`` (SAME_*: ``ceil(size / stride)`` outputs)."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return _pads(r, node, attrs, kernel, stride, dilation)
    totals = [max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
              for size, s, d, k in zip(_spatial(r, node), stride, dilation, kernel)]
    return tuple((t // 2, t - t // 2) if auto == "SAME_UPPER" else (t - t // 2, t // 2) for t in totals)


@_imports("Conv")
def _import_conv(r: _Reader, node, attrs: dict) -> Layer:
    """A Conv, grouped or not; a Pad node just before it gives its padding and padding mode."""
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., dilations=..., auto_pad=..., group=...))
    _spatial(r, node)
    w = r.constant(node, 1, "weight", np.float32)
    b = r.constant(node, 2, "bias", np.float32)
    if w is None or w.ndim != 4:
        raise r.fail(node, f"needs a 4-D weight (C_out, C_in / group, kH, kW), got {None if w is None else w.shape}")
    kernel = _ints(r, node, attrs, "kernel_shape", 2, list(w.shape[2:]))
    if kernel != w.shape[2:]:
        raise r.fail(node, f"kernel_shape {kernel} does not match the weight {w.shape}")
    stride = _ints(r, node, attrs, "strides", 2, [1, 1])
    dilation = _ints(r, node, attrs, "dilations", 2, [1, 1])
    groups = attrs.get("group", 1)
    if not isinstance(groups, int) or groups < 1:
        raise r.fail(node, f"attribute group must be a positive integer, got {groups!r}")
    (t, b_), (left, right) = _same_pads(r, node, attrs, kernel, stride, dilation)
    mode = "zeros"
    if r.pad is not None:
        (pl, pr, pt, pb), mode = r.pad
        r.pad = None
        if mode != "zeros" and (t, b_, left, right) != (0, 0, 0, 0):
            raise r.fail(node, f"pads {[t, left, b_, right]} after a Pad in mode {mode!r}; fastcnn's Conv2D pads once")
        t, b_, left, right = t + pt, b_ + pb, left + pl, right + pr
    padding: Any = (t, left) if (t, left) == (b_, right) else (left, right, t, b_)
    layer = Conv2D(r.shape[0], w.shape[0], kernel, stride, padding, dilation, bias=b is not None, rng=0,
                   groups=groups, padding_mode=mode)
    r.assign(node, layer, "weight", w)
    if b is not None:
        r.assign(node, layer, "bias", b)
    return layer


@_imports("Pad")
def _import_pad(r: _Reader, node, attrs: dict) -> None:
    """The padding of the Conv that must follow: zeros, reflect, edge (replicate) or wrap (circular)."""
    _check_attrs(r, node, attrs, dict(mode=...))
    modes = {onnx_mode: ours for ours, onnx_mode in PAD_MODES.items()}
    mode = modes.get(attrs.get("mode", "constant"))
    if mode is None:
        raise r.fail(node, f"mode {attrs.get('mode')!r} is not supported (only {', '.join(modes)})")
    _spatial(r, node)
    pads = r.constant(node, 1, "pads", np.int64)
    value = r.constant(node, 2, "constant_value")
    if len(node.input) > 3 and node.input[3]:
        raise r.fail(node, "the axes input is not supported; pads must cover all four axes")
    if value is not None and (value.size != 1 or float(value.reshape(-1)[0]) != 0.0):
        raise r.fail(node, "pads with a value other than zero")
    if pads is None or pads.shape != (8,) or pads[[0, 1, 4, 5]].any() or (pads < 0).any():
        raise r.fail(node, f"pads {None if pads is None else pads.tolist()}: fastcnn pads height and width only, by "
                           "[0, 0, top, left, 0, 0, bottom, right] >= 0")
    if r.pad is not None:
        raise r.fail(node, "two Pads in a row; fastcnn's Conv2D pads once")
    t, left, b, right = (int(v) for v in pads[[2, 3, 6, 7]])
    r.pad = ((left, right, t, b), mode)


@_imports("ConvTranspose")
def _import_conv_transpose(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., dilations=..., auto_pad="NOTSET",
                                      group=..., output_padding=...))
    _spatial(r, node)
    w = r.constant(node, 1, "weight", np.float32)
    b = r.constant(node, 2, "bias", np.float32)
    if w is None or w.ndim != 4:
        raise r.fail(node, f"needs a 4-D weight (C_in, C_out / group, kH, kW), got {None if w is None else w.shape}")
    kernel = _ints(r, node, attrs, "kernel_shape", 2, list(w.shape[2:]))
    if kernel != w.shape[2:]:
        raise r.fail(node, f"kernel_shape {kernel} does not match the weight {w.shape}")
    groups = attrs.get("group", 1)
    if not isinstance(groups, int) or groups < 1:
        raise r.fail(node, f"attribute group must be a positive integer, got {groups!r}")
    t, left, bottom, right = _ints(r, node, attrs, "pads", 4, [0, 0, 0, 0])
    if (t, left) != (bottom, right):
        raise r.fail(node, f"asymmetric pads {[t, left, bottom, right]} are not supported")
    layer = ConvTranspose2D(r.shape[0], w.shape[1] * groups, kernel, _ints(r, node, attrs, "strides", 2, [1, 1]),
                            (t, left), _ints(r, node, attrs, "output_padding", 2, [0, 0]), groups, bias=b is not None,
                            dilation=_ints(r, node, attrs, "dilations", 2, [1, 1]), rng=0)
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


def _ceil_mode(r: _Reader, node, attrs: dict) -> bool:
    value = attrs.get("ceil_mode", 0)
    if value not in (0, 1):
        raise r.fail(node, f"attribute ceil_mode must be 0 or 1, got {value!r}")
    return bool(value)


@_imports("MaxPool")
def _import_max_pool(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., auto_pad=..., ceil_mode=...,
                                      dilations=..., storage_order=0))
    return MaxPool2D(*_pool_args(r, node, attrs), dilation=_ints(r, node, attrs, "dilations", 2, [1, 1]),
                     ceil_mode=_ceil_mode(r, node, attrs))


@_imports("AveragePool")
def _import_avg_pool(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(kernel_shape=..., strides=..., pads=..., auto_pad=..., ceil_mode=...,
                                      dilations=[1, 1], count_include_pad=...))
    count = attrs.get("count_include_pad", 0)
    if count not in (0, 1):
        raise r.fail(node, f"attribute count_include_pad must be 0 or 1, got {count!r}")
    return AvgPool2D(*_pool_args(r, node, attrs), ceil_mode=_ceil_mode(r, node, attrs), count_include_pad=bool(count))


@_imports("GlobalAveragePool", "GlobalMaxPool")
def _import_global_pool(r: _Reader, node, attrs: dict) -> Layer:
    """A pool whose window is the whole (static) plane, output (N, C, 1, 1); a Flatten after it makes it
    the global pool layer, output (N, C) (see :func:`_flatten`)."""
    _check_attrs(r, node, attrs, {})
    hw = _spatial(r, node)
    layer = (AvgPool2D if node.op_type == "GlobalAveragePool" else MaxPool2D)(hw)
    r.whole_plane[id(layer)] = GlobalAvgPool2D if node.op_type == "GlobalAveragePool" else GlobalMaxPool2D
    return layer


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
    """The bias after a MatMul: the Dense before it gains the bias. (An Add joining two branches is
    read by the walk as a residual block, see :func:`_read_fork`.)"""
    _check_attrs(r, node, attrs, {})
    if len(node.input) != 2:
        raise r.fail(node, f"takes {len(node.input)} inputs; Add takes two")
    other = 1 if node.input[0] == r.current else 0
    if node.input[other] not in r.constants:
        raise r.fail(node, "adds two computed tensors that are not the two branches of a residual block "
                           "(body and shortcut from one tensor)")
    b = r.constant(node, other, "bias", np.float32)
    last = r.layers[-1] if r.layers else None
    if not (type(last) is Dense and "bias" not in last.params):
        raise r.fail(node, "adds a constant other than a bias after a bias-free MatMul or Gemm")
    r.layers[-1] = _dense(r, node, last.params["weight"], b.reshape(-1) if b.ndim == 2 and b.shape[0] == 1 else b)
    return None  # the Dense before it now has the bias; the shape is unchanged


@_imports("Mul")
def _import_mul(r: _Reader, node, attrs: dict) -> None:
    """A scalar after an average pool whose windows are all whole: the pool's ``divisor_override``
    (``kH * kW / scalar``, which must be a whole number)."""
    _check_attrs(r, node, attrs, {})
    other = 1 if node.input[0] == r.current else 0
    if len(node.input) != 2 or node.input[other] not in r.constants:
        raise r.fail(node, "multiplies computed tensors outside the SiLU and GELU patterns fastcnn reads")
    c = r.constant(node, other, "scale", np.float32)
    last = r.layers[-1] if r.layers else None
    if type(last) is not AvgPool2D or last.divisor_override is not None or c.size != 1:
        raise r.fail(node, "multiplies by a constant; fastcnn reads that only as a scalar after an average pool "
                           "(its divisor_override)")
    k = last.kernel_size[0] * last.kernel_size[1]
    scale = float(c.reshape(-1)[0])
    divisor = round(k / scale) if scale > 0 and math.isfinite(k / scale) else 0
    geo = pool_geometry((1,) + r.last_input, last.kernel_size, last.stride, last.padding, 1, int(last.ceil_mode))
    whole = whole_windows(geo, r.last_input[1:], last.count_include_pad)
    if divisor < 1 or abs(divisor * scale - k) > 1e-6 * k or not whole:
        raise r.fail(node, f"scales an average pool by {scale}: not kH * kW / d for a whole divisor d over whole "
                           "windows (divisor_override)")
    r.layers[-1] = AvgPool2D(last.kernel_size, last.stride, last.padding, last.ceil_mode, last.count_include_pad,
                             divisor)


def _flatten(r: _Reader) -> Layer:
    """A Flatten; after a global pool (read as a pool over the whole plane), that pool's global layer."""
    last = r.layers[-1] if r.layers else None
    if id(last) in r.whole_plane:
        r.layers.pop()
        return r.whole_plane.pop(id(last))()  # its input (C, 1, 1) gives the same (C,)
    return Flatten()


@_imports("Flatten")
def _import_flatten(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(axis=1))
    return _flatten(r)


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
    return _flatten(r)


@_imports("LeakyRelu")
def _import_leaky_relu(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(alpha=...))
    return LeakyReLU(_float32_attr(attrs.get("alpha", 0.01)))


@_imports("Gelu")
def _import_gelu(r: _Reader, node, attrs: dict) -> Layer:
    _check_attrs(r, node, attrs, dict(approximate=...))
    if attrs.get("approximate", "none") not in ("none", "tanh"):
        raise r.fail(node, f"approximate={attrs['approximate']!r}; Gelu's are 'none' and 'tanh'")
    return GELU(attrs.get("approximate", "none"))


def _float32_attr(value) -> float:
    """A float attribute (float32 in ONNX) as the shortest decimal that float32 gives (0.01, not 0.0099999998)."""
    return float(str(np.float32(value)))


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


# ------------------------------------------------------------------ the walk through the graph
_MAX_NESTING = 64  # residual blocks inside residual blocks: a bound on the walk's recursion


def _walk(r: _Reader, start: str, stop: str, allowed: set | None, onnx, depth: int = 0) -> None:
    """Read the nodes from tensor ``start`` to tensor ``stop`` (only nodes in ``allowed``, if given) into
    ``r.layers``, following ``r.shape``; ``depth`` counts the residual blocks it is inside."""
    if depth > _MAX_NESTING:
        raise ValueError(f"{r.path}: residual blocks nested more than {_MAX_NESTING} deep at tensor {start!r}")
    r.current = start
    while r.current != stop:
        readers = [i for i in r.consumers.get(r.current, []) if allowed is None or i in allowed]
        if not readers:
            raise ValueError(f"{r.path}: tensor {r.current!r} is read by no node on the way to {stop!r}; "
                             "the graph is not a chain from its input to its output")
        if r.pad is not None and (len(readers) > 1 or r.nodes[readers[0]].op_type != "Conv"):
            raise r.fail(r.nodes[readers[0]], "follows a Pad; fastcnn reads a Pad only as the padding of a Conv")
        if len(readers) == 1:
            _read_node(r, readers[0], onnx)
        else:
            _read_fork(r, readers, allowed, onnx, depth)
    if r.pad is not None:
        raise ValueError(f"{r.path}: a Pad ends at {stop!r}; fastcnn reads a Pad only as the padding of a Conv")


def _read_node(r: _Reader, index: int, onnx) -> None:
    node = r.nodes[index]
    if index in r.used:
        raise r.fail(node, "is reached twice: the graph has a cycle")
    importer = _IMPORTERS.get(node.op_type)
    if importer is None:
        raise r.fail(node, f"op type {node.op_type} is not supported; supported: {', '.join(sorted(_IMPORTERS))}")
    if r.current not in node.input[:2] or (node.input[0] != r.current and node.op_type not in ("Add", "Mul")):
        raise r.fail(node, f"reads {list(node.input)}, not the output of the node before ({r.current!r}): "
                           "the graph is not a chain, which a Sequential needs")
    if not node.output or any(o in r.consumers for o in node.output[1:] if o):
        raise r.fail(node, "its second output is used; fastcnn reads inference graphs with one output per node")
    r.used.add(index)
    try:
        with weights_follow(r.dtype):  # placeholders until the file's arrays, checked, are put in
            layer = importer(r, node, _attributes(r, node, onnx))
        out_shape = r.shape if layer is None else tuple(layer.output_shape(r.shape))
        _check_sample(out_shape, "its output")
    except (ValueError, TypeError) as exc:
        if str(exc).startswith(f"{r.path}: "):
            raise
        raise r.fail(node, str(exc)) from None
    if layer is not None:
        r.layers.append(layer)
        r.last_input = r.shape
    r.current, r.shape = node.output[0], out_shape


# Activations that exporters write as small graphs: an expression over the input "X" and scalar constants
# ("C", value); Add and Mul match in either order. What PyTorch writes for SiLU, and for GELU before opset 20.
_SQRT2, _BETA, _KAPPA = math.sqrt(2.0), math.sqrt(2.0 / math.pi), 0.044715
_PATTERNS: dict[str, tuple[Any, Callable[[], Layer]]] = {
    "SiLU": (("Mul", "X", ("Sigmoid", "X")), SiLU),
    "GELU": (("Mul", ("Mul", "X", ("Add", ("Erf", ("Div", "X", ("C", _SQRT2))), ("C", 1.0))), ("C", 0.5)), GELU),
    "GELU tanh": (("Mul", ("C", 0.5), ("Mul", "X", ("Add", ("C", 1.0), ("Tanh", ("Mul", ("C", _BETA), ("Add", "X", (
        "Mul", ("C", _KAPPA), ("Mul", "X", ("Mul", "X", "X"))))))))), lambda: GELU("tanh")),
}


def _match(r: _Reader, pattern, tensor: str, x: str, allowed: set | None, found: set) -> bool:
    """Whether ``tensor`` is computed from ``x`` as ``pattern`` says; adds the nodes it takes to ``found``."""
    if pattern == "X":
        return tensor == x
    if pattern[0] == "C":
        if tensor not in r.constants:
            return False
        value = _scalar(r, tensor)
        return value is not None and abs(value - pattern[1]) <= 1e-6 * max(1.0, abs(pattern[1]))
    index = r.producer.get(tensor)
    if index is None or index in r.used or (allowed is not None and index not in allowed):
        return False
    node = r.nodes[index]
    operands = pattern[1:]
    if node.op_type != pattern[0] or len(node.attribute) or len(node.input) != len(operands):
        return False
    orders = [operands, operands[::-1]] if node.op_type in ("Add", "Mul") else [operands]
    for order in orders:
        taken: set = set()
        if all(_match(r, p, t, x, allowed, taken) for p, t in zip(order, node.input)):
            found |= taken | {index}
            return True
    return False


def _scalar(r: _Reader, name: str) -> float | None:
    value = r.constants[name]
    if not isinstance(value, np.ndarray):
        value = r.constants[name] = tensor_array(value, r.file_size, f"{r.path}: tensor {name!r}")
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


def _output(node) -> str:
    """The node's (first) output; ``""`` if it has none."""
    return node.output[0] if node.output else ""


def _meeting(r: _Reader, readers: list[int], allowed: set | None) -> tuple[int | None, set]:
    """The first node (in the file's order) that every one of ``readers`` reaches, and the nodes reached
    before it. Visits only the nodes up to that one, in order (a node is visited again only when more
    readers reach it, at most ``len(readers)`` times), so a long graph costs the branches' length."""
    reached: dict[int, int] = {i: 1 << k for k, i in enumerate(readers)}  # node -> bit mask of the readers reaching it
    full = (1 << len(readers)) - 1
    heap = sorted(readers)
    seen: set = set()
    while heap:
        index = heapq.heappop(heap)
        mask = reached[index]
        if mask == full:
            return index, seen
        seen.add(index)
        for consumer in r.consumers.get(_output(r.nodes[index]), []):
            if (allowed is None or consumer in allowed) and reached.get(consumer, 0) | mask != reached.get(consumer, 0):
                reached[consumer] = reached.get(consumer, 0) | mask
                heapq.heappush(heap, consumer)
    return None, seen


def _ancestors(r: _Reader, tensor: str, stop: str, within: set) -> set:
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        index = r.producer.get(t)
        if t == stop or index is None or index in seen or index not in within:
            continue
        seen.add(index)
        todo.extend(i for i in r.nodes[index].input if i and i not in r.constants)
    return seen


def _read_fork(r: _Reader, readers: list[int], allowed: set | None, onnx, depth: int) -> None:
    """The tensor ``r.current`` is read by several nodes: an activation of ``_PATTERNS``, or a residual
    block (two branches that meet in an Add)."""
    residual = LAYER_TYPES["Residual"]  # fastcnn.blocks registers it (blocks builds on the model, above this module)
    x = r.current
    if any(i in r.used for i in readers):
        raise r.fail(r.nodes[readers[0]], "is reached twice: the graph has a cycle")
    join, before = _meeting(r, readers, allowed)
    after = set() if join is None else {join, *r.consumers.get(_output(r.nodes[join]), [])}
    for root in sorted(before | after)[:16]:  # a pattern ends at the meeting or a node after it
        for pattern, make in _PATTERNS.values():
            found: set = set()
            if not _match(r, pattern, _output(r.nodes[root]), x, allowed, found) or not set(readers) <= found:
                continue
            inner = [r.nodes[i].output[0] for i in found if i != root]
            if all(set(r.consumers.get(t, [])) <= found for t in inner):
                r.used |= found
                r.layers.append(make())
                r.last_input = r.shape
                r.current = r.nodes[root].output[0]
                return
    if join is None:
        raise r.fail(r.nodes[readers[1]], f"reads {x!r} as node {r.nodes[readers[0]].name!r} does, and the "
                                          "branches never meet; fastcnn reads branches only as residual blocks")
    join_index, join = join, r.nodes[join]
    if join.op_type != "Add" or len(join.input) != 2 or not _output(join):
        raise r.fail(join, f"joins branches from {x!r}; fastcnn reads branches only as residual blocks joined by an "
                           "Add (or as the SiLU and GELU patterns)")
    branches = [_ancestors(r, t, x, before) for t in join.input]
    if branches[0] & branches[1] or not set(readers) <= branches[0] | branches[1] | {join_index}:
        raise r.fail(join, f"joins branches from {x!r} that share nodes or leave others out; fastcnn reads two "
                           "separate branches (body and shortcut)")
    saved, in_shape = r.layers, r.shape
    parts = []
    for tensor, branch in zip(join.input, branches):
        r.layers, r.shape = [], in_shape
        _walk(r, x, tensor, branch, onnx, depth + 1)
        parts.append(r.layers)
    body, shortcut = parts if parts[0] or not parts[1] else parts[::-1]
    r.layers = saved
    try:
        block = residual(body, shortcut or None, input_shape=in_shape)
    except (ValueError, TypeError) as exc:
        raise r.fail(join, str(exc)) from None
    r.used.add(join_index)
    r.layers.append(block)
    r.last_input = in_shape
    r.current, r.shape = join.output[0], tuple(block.output_shape(in_shape))


# ------------------------------------------------------------------ small constant computations
_MAX_FOLDED = 1024  # elements: the shape computations exporters leave in (PyTorch's Pad pads) are tiny


def _fold(r: _Reader, node, onnx) -> bool:
    """Compute a node of ``_FOLDERS`` whose inputs are all small constants, as a new constant (PyTorch
    writes a padding-mode conv's pads as ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast
    of constants). Returns whether it did; nothing is computed over more than ``_MAX_FOLDED`` elements."""
    folder = _FOLDERS.get(node.op_type)
    names = [name for name in node.input if name]
    if folder is None or len(node.output) != 1 or not all(name in r.constants for name in names):
        return False
    inputs = [r.constant(node, k, "input") if name else None for k, name in enumerate(node.input)]
    if any(a is not None and a.size > _MAX_FOLDED for a in inputs):
        return False
    try:
        value = np.asarray(folder(inputs, _attributes(r, node, onnx)))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise r.fail(node, f"cannot compute it from its constant inputs: {exc}") from None
    r.constants[node.output[0]] = value
    return True


def _constant_of_shape(inputs, attrs):
    shape = [int(d) for d in inputs[0].reshape(-1)]
    if any(d < 0 for d in shape) or math.prod(shape) > _MAX_FOLDED:
        raise ValueError(f"shape {shape} is negative or over {_MAX_FOLDED} elements")
    fill = attrs.get("value")
    fill = np.zeros(1, np.float32) if fill is None else tensor_array(fill, 64, "ConstantOfShape value")
    return np.full(shape, fill.reshape(-1)[0], fill.dtype)


def _reshape(inputs, attrs):
    data, target = inputs[0], [int(d) for d in inputs[1].reshape(-1)]
    if not attrs.get("allowzero", 0):
        target = [data.shape[k] if d == 0 and k < data.ndim else d for k, d in enumerate(target)]
    return data.reshape(target)


def _slice(inputs, attrs):
    data, starts, ends = inputs[:3]
    axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else np.arange(len(starts))
    steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ValueError("a slice step of 0")
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _cast(inputs, attrs):
    dtype = _NP_TYPES.get(attrs.get("to"))
    if dtype is None:
        raise ValueError(f"cast to element type {attrs.get('to')}")
    return inputs[0].astype(dtype)


_FOLDERS: dict[str, Callable[[list, dict], np.ndarray]] = {
    "ConstantOfShape": _constant_of_shape,
    "Concat": lambda inputs, attrs: np.concatenate([a for a in inputs if a is not None], axis=attrs.get("axis")),
    "Reshape": _reshape,
    "Slice": _slice,
    "Transpose": lambda inputs, attrs: np.transpose(inputs[0], attrs.get("perm")),
    "Cast": _cast,
}


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
    _check_sample(per_sample, f"{path}: input {value.name!r}")
    return value.name, dtype, tuple(per_sample)


def _check_sample(shape, what: str) -> None:
    """Refuse a per-sample ``shape`` of more than :data:`MAX_SAMPLE_VALUES` values: a ValueError naming ``what``."""
    if math.prod(shape) > MAX_SAMPLE_VALUES:
        raise ValueError(f"{what} has shape (N, {', '.join(map(str, shape))}): {math.prod(shape):,} values a sample, "
                         f"more than the {MAX_SAMPLE_VALUES:,} fastcnn reads")


def read_onnx(path: str | os.PathLike) -> tuple[list[Layer], tuple[int, ...]]:
    """Read an ONNX model that is a chain of supported operators: its layers and per-sample input shape
    (:func:`fastcnn.load_onnx` puts them in a :class:`~fastcnn.model.Sequential`).

    Supported: Conv (grouped, any pads or auto_pad; a Pad before it in mode constant, reflect, edge or
    wrap gives its padding mode), ConvTranspose, BatchNormalization (inference), Relu, LeakyRelu, Tanh,
    Sigmoid, Gelu, Softmax (last axis), MaxPool (dilations, ceil_mode), AveragePool (ceil_mode,
    count_include_pad; a Mul by a scalar after it as ``divisor_override``), GlobalAveragePool and
    GlobalMaxPool (the global pool layers when a Flatten follows, else pools over the whole plane),
    Flatten, Reshape to (N, features), Gemm, MatMul followed by Add, Dropout and Identity; SiLU as
    Sigmoid and Mul, GELU as PyTorch writes it before opset 20; and residual blocks: a tensor read by
    two branches that meet in an Add becomes ``Residual(body, shortcut)`` (the Add's first input the
    body, an empty branch the identity shortcut). The input must be (N, C, H, W) or (N, F) with a fixed
    size on every axis but N. This is what ``torch.onnx.export`` writes for the equivalent PyTorch
    modules in eval mode (a ``torch.nn.Sequential``, and blocks whose forward is ``body(x) + shortcut(x)``).
    ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast nodes whose inputs are all small
    constants (PyTorch's computation of a padding-mode conv's pads) are computed at load.

    Raises
    ------
    ValueError
        The file is not ONNX, is damaged or oversized, stores tensors outside itself, or holds a graph
        fastcnn cannot represent; the message names the first node that cannot be read and its op type.
    ImportError
        The ``onnx`` package is not installed.
    """
    onnx = _onnx()
    path = os.fspath(path)
    proto, size = _read_proto(path, onnx)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"{path}: default-domain opset {opset}; fastcnn reads opsets 7 to {onnx.defs.onnx_opset_version()}")
    constants: dict[str, Any] = {t.name: t for t in graph.initializer}
    name, dtype, shape = _input_spec(path, graph, constants)
    r = _Reader(path, size, opset, dtype, name, shape, constants)  # r.shape follows the walk; shape stays
    folded = set()
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise r.fail(node, f"op {node.domain}::{node.op_type} is not supported")
        if node.op_type == "Constant":
            value = _attributes(r, node, onnx).get("value")
            if value is None or len(node.output) != 1:
                raise r.fail(node, "only Constant nodes holding a tensor are supported")
            r.constants[node.output[0]] = value
            folded.add(index)
        elif _fold(r, node, onnx):
            folded.add(index)
    r.nodes = [node for index, node in enumerate(graph.node) if index not in folded]
    for index, node in enumerate(r.nodes):
        for tensor in dict.fromkeys(node.input):
            if tensor and tensor not in r.constants:
                r.consumers.setdefault(tensor, []).append(index)
        for tensor in node.output[:1]:
            r.producer.setdefault(tensor, index)
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1:
        raise ValueError(f"{path}: the graph's outputs are {outputs}; fastcnn reads one output")
    _walk(r, name, outputs[0], None, onnx)
    unused = [node for index, node in enumerate(r.nodes) if index not in r.used]
    if unused:
        raise r.fail(unused[0], "is not on the way from the input to the output; fastcnn reads a chain of nodes "
                                "(with residual branches)")
    return r.layers, tuple(shape)
