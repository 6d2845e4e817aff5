"""The compiled inference plan behind :meth:`Sequential.predict` and :meth:`Sequential.evaluate`.

A plan is the model's steps prepared for inference:

- Dropout is dropped (it is the identity outside training);
- a BatchNorm2D directly after a Conv2D, or a BatchNorm1D directly after a Dense, is folded into it:
  ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, computed in
  float64 once per predict call (not per batch), so training or edits in place are always seen;
- then the steps are fused as :func:`fastcnn.steps.fuse` fuses them for training (a Conv2D, the
  MaxPool2D and the ReLU after it run as one ``conv2d_max_pool2d`` op), so a folded conv fuses too;
- each step calls the dispatcher's kernel directly with arguments prepared once per input shape: no
  per-layer validation. The input is validated once per predict call, by ``predict``.

The plan is rebuilt when a layer, a backend or a parameter array is replaced (``load_state_dict``,
``astype``, batch norm's running statistics after a training step); parameters changed in place
(what optimizers do) are read live. Steps fastcnn has no fast path for run their layer's own
``forward(x, training=False)``.

Kernels allocate their outputs, so no activation is shared between calls (two threads may predict
with one model at once); what is reused is everything that depends only on the shapes, and the
zero-padded copies of padded convs' and pools' inputs (per thread). ``python -m bench.inference
--profile`` splits predict's time into its steps and its own Python.
"""
from __future__ import annotations

import copy
import threading
from typing import Any, Callable

import numpy as np

from . import dispatch
from ._checks import check_allocation, conv_geometry, pool_geometry
from .layers import BatchNorm1D, BatchNorm2D, Conv2D, ConvMaxPool, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU
from .steps import fuse

__all__ = ["InferencePlan", "current_plan", "fold_batch_norm"]

Arrays = Callable[[], tuple[np.ndarray, np.ndarray]]


def fold_batch_norm(weight: np.ndarray, bias: np.ndarray | None, bn) -> tuple[np.ndarray, np.ndarray]:
    """``(weight', bias')`` of a conv or dense layer with the batch norm ``bn`` (eval mode) after it
    folded in; output channels on axis 0 of ``weight``. Computed in float64, returned in weight's dtype."""
    var = bn.buffers["running_var"].astype(np.float64)
    scale = bn.params["weight"].astype(np.float64) / np.sqrt(var + bn.eps)
    shift = bn.params["bias"].astype(np.float64) - bn.buffers["running_mean"].astype(np.float64) * scale
    w = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    b = shift if bias is None else bias.astype(np.float64) * scale + shift
    return w.astype(weight.dtype), b.astype(weight.dtype)


def _live(layer: Layer) -> Arrays:
    """The layer's own weight and bias (zeros when it has none), read at each call."""
    zeros = np.zeros(layer.params["weight"].shape[0], layer.params["weight"].dtype)
    return lambda: (layer.params["weight"], layer.params.get("bias", zeros))


def _folded(layer: Layer, bn) -> Arrays:
    return lambda: fold_batch_norm(layer.params["weight"], layer.params.get("bias"), bn)


class _Step:
    """One step of a plan: ``run(x, arrays, policy)``, ``arrays`` being what :attr:`arrays` gave for
    this predict call and ``policy`` the backend policy in force (read once per call: reading it costs
    microseconds); what depends only on the input shape is prepared once per shape."""

    arrays: Arrays = staticmethod(lambda: ())

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._prepared: dict[tuple, Any] = {}

    def prepared(self, shape: tuple) -> Any:
        found = self._prepared.get(shape)
        if found is None:
            if len(self._prepared) >= 8:  # a caller cycling through batch sizes: keep memory bounded
                self._prepared.clear()
            found = self._prepared[shape] = self.prepare(shape)
        return found

    def prepare(self, shape: tuple) -> Any:
        raise NotImplementedError

    def run(self, x: np.ndarray, arrays, policy: str) -> np.ndarray:
        raise NotImplementedError


_KEEP_PADDED_BYTES = 64 << 20  # padded inputs up to this size are kept for the next call


def _padder(shape: tuple, pads, dtype: np.dtype) -> tuple[Callable[[np.ndarray], np.ndarray] | None, tuple]:
    """A function that zero-pads ``(N, C, H, W)`` input by ``((top, bottom), (left, right))`` (None
    when there is no padding), and the padded shape.

    The padded array is kept per thread and reused by the next call with this shape: only its
    interior is written again, its border stays zero. Fresh memory of this size costs a page fault
    per 4 KiB on every call (see the README's "Memory"); the kernel reads the array before the step
    returns, so no later call can see it changed.
    """
    (t, b), (l, r) = pads
    n, c, h, w = shape
    padded = (n, c, h + t + b, w + l + r)
    if not (t or b or l or r):
        return None, padded
    check_allocation("padded input", padded, dtype)
    keep = np.prod(padded, dtype=np.float64) * np.dtype(dtype).itemsize <= _KEEP_PADDED_BYTES
    local = threading.local()

    def pad(x: np.ndarray) -> np.ndarray:
        xp = getattr(local, "xp", None)
        if xp is None:
            xp = np.zeros(padded, dtype)
            if keep:
                local.xp = xp
        xp[:, :, t : t + h, l : l + w] = x
        return xp

    return pad, padded


class _Conv(_Step):
    """A Conv2D, or a Conv2D with the MaxPool2D (and ReLU) after it, as ``conv2d`` / ``conv2d_max_pool2d``."""

    def __init__(self, dtype, conv: Conv2D, arrays: Arrays, pool: MaxPool2D | None = None, relu: bool = False) -> None:
        super().__init__(dtype)
        self.conv, self.pool, self.relu, self.arrays = conv, pool, relu, arrays
        self.op = "conv2d" if pool is None else "conv2d_max_pool2d"

    def prepare(self, shape):
        conv, w_shape = self.conv, self.conv.params["weight"].shape
        geo = conv_geometry(shape, w_shape, conv.stride, conv.padding, conv.dilation)
        pad, xp_shape = _padder(shape, geo.padding, self.dtype)
        out = (shape[0], w_shape[0]) + geo.out_hw
        check_allocation("conv2d output", out, self.dtype)
        if self.pool is None:  # the signatures as fastcnn.functional's conv2d and conv2d_max_pool2d give them
            return pad, (xp_shape, w_shape, geo.stride, geo.dilation, self.dtype.char), (geo,)
        p = _pool_geometry(out, self.pool)
        signature = (xp_shape, w_shape, geo.stride, geo.dilation, p.kernel, p.stride, p.padding, p.dilation, p.out_hw,
                     self.relu, self.dtype.char)
        return pad, signature, (geo, p, self.relu)

    def run(self, x, arrays, policy):
        pad, signature, args = self.prepared(x.shape)
        y = dispatch.run(self.op, signature, (x if pad is None else pad(x), *arrays, *args), self.conv.backend or policy)
        return y if self.pool is None else y[0]


class _Pool(_Step):
    """A MaxPool2D (``max_pool2d``, its argmax unused)."""

    def __init__(self, dtype, layer: MaxPool2D) -> None:
        super().__init__(dtype)
        self.layer = layer

    def prepare(self, shape):
        geo = _pool_geometry(shape, self.layer)  # the signature as fastcnn.functional's max_pool2d gives it
        return (shape, geo.kernel, geo.stride, geo.padding, geo.dilation, geo.out_hw, self.dtype.char), geo

    def run(self, x, arrays, policy):
        signature, geo = self.prepared(x.shape)
        return dispatch.run("max_pool2d", signature, (x, geo), self.layer.backend or policy)[0]


def _pool_geometry(shape, pool: MaxPool2D):
    """The geometry of the max-pool layer ``pool`` on inputs of ``shape``."""
    return pool_geometry(shape, pool.kernel_size, pool.stride, pool.padding, pool.dilation, int(pool.ceil_mode))


class _Linear(_Step):
    """A Dense layer (``linear``), with a batch norm after it folded in or not."""

    def __init__(self, dtype, layer: Dense, arrays: Arrays) -> None:
        super().__init__(dtype)
        self.arrays = arrays
        self.w_shape = layer.params["weight"].shape

    def prepare(self, shape):
        check_allocation("linear output", (shape[0], self.w_shape[0]), self.dtype)
        return (shape, self.w_shape, self.dtype.char)

    def run(self, x, arrays, policy):
        return dispatch.run("linear", self.prepared(x.shape), (x, *arrays), policy)


class _Relu(_Step):
    def __init__(self, dtype, layer: ReLU) -> None:
        super().__init__(dtype)

    def run(self, x, arrays, policy):
        return dispatch.run("relu", (x.shape, self.dtype.char), (x,), policy)


class _Flatten(_Step):
    def __init__(self, dtype, layer: Flatten) -> None:
        super().__init__(dtype)

    def run(self, x, arrays, policy):
        return x.reshape(x.shape[0], -1)


class _Layer(_Step):
    """Any other layer: its own ``forward(x, training=False)``."""

    def __init__(self, dtype, layer: Layer) -> None:
        super().__init__(dtype)
        self.layer = layer

    def run(self, x, arrays, policy):
        return self.layer.forward(x, False)


def _fast(layer: Layer) -> bool:
    """Whether the plan runs ``layer`` through its own steps: a Dense, or a Conv2D that fuses with a
    pool (no groups, zero padding); other convs run their layer's forward."""
    return type(layer) is Dense or (type(layer) is Conv2D and layer.fuses_pool)


def _folds(layer: Layer, after: Layer | None) -> bool:
    return _fast(layer) and type(after) is {Conv2D: BatchNorm2D, Dense: BatchNorm1D}[type(layer)]


def _fusable_params(layer: Layer, dtype: np.dtype) -> bool:
    """The fast path passes parameters to kernels as they are: they must be C-contiguous, of the
    model's dtype (else the layer runs its own, checking, forward)."""
    return all(p.dtype == dtype and p.flags.c_contiguous for p in layer.params.values())


class InferencePlan:
    """The steps that compute a model's outputs in inference; see the module docstring.

    Parameters
    ----------
    layers : list of Layer
        The model's layers (the plan keeps references, not copies).
    dtype : numpy.dtype
        The model's dtype.
    """

    def __init__(self, layers: list[Layer], dtype) -> None:
        self.dtype = dtype = np.dtype(dtype)
        self._layers = list(layers)
        self._backends = [getattr(layer, "backend", None) for layer in layers]
        self._arrays = [(store, dict(store)) for layer in layers for store in (layer.params, layer.buffers) if store]
        arrays: dict[int, Arrays] = {}  # id(layer in the fusion list) -> where its weights come from
        virtual: list[Layer] = []
        kept = [layer for layer in layers if type(layer) is not Dropout]
        for i, layer in enumerate(kept):
            if i and _folds(kept[i - 1], layer) and id(virtual[-1]) in arrays:
                stand_in = copy.copy(kept[i - 1])  # the same geometry and backend; weights from the fold
                virtual[-1] = stand_in
                arrays[id(stand_in)] = _folded(kept[i - 1], layer)
                continue
            virtual.append(layer)
            if _fast(layer) and _fusable_params(layer, dtype):
                arrays[id(layer)] = _live(layer)
        self.steps: list[_Step] = []
        for step in fuse(virtual):
            conv = step.conv if type(step) is ConvMaxPool else step
            if type(conv) is Conv2D and id(conv) in arrays:
                pool = step.pool if type(step) is ConvMaxPool else None
                relu = type(step) is ConvMaxPool and step.relu is not None
                self.steps.append(_Conv(dtype, conv, arrays[id(conv)], pool, relu))
            elif type(step) is Dense and id(step) in arrays:
                self.steps.append(_Linear(dtype, step, arrays[id(step)]))
            elif type(step) is MaxPool2D:
                self.steps.append(_Pool(dtype, step))
            elif type(step) is ReLU:
                self.steps.append(_Relu(dtype, step))
            elif type(step) is Flatten:
                self.steps.append(_Flatten(dtype, step))
            elif type(step) is ConvMaxPool:  # parameters the fast path cannot take: run the layers themselves
                self.steps.extend(_Layer(dtype, layer) for layer in (step.conv, step.pool, step.relu) if layer)
            else:
                self.steps.append(_Layer(dtype, step))

    def is_current(self, layers: list[Layer], dtype) -> bool:
        """Whether the plan was built for these layers (the same objects), their backends, ``dtype`` and
        the same parameter and buffer arrays (compared by identity: a few microseconds)."""
        if dtype != self.dtype or len(layers) != len(self._layers):
            return False
        for layer, built, backend in zip(layers, self._layers, self._backends):
            if layer is not built or getattr(layer, "backend", None) != backend:
                return False
        for store, arrays in self._arrays:
            if len(store) != len(arrays):
                return False
            for key, value in arrays.items():
                if store.get(key) is not value:
                    return False
        return True

    def predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Outputs for ``x`` (already validated: the model's dtype and per-sample shape), in batches."""
        bound = [(step, step.arrays()) for step in self.steps]  # batch norm folded once per call
        policy = dispatch.get_backend()
        outputs = []
        for start in range(0, len(x), batch_size):
            h = np.ascontiguousarray(x[start : start + batch_size])
            for step, arrays in bound:
                h = step.run(h, arrays, policy)
            outputs.append(h)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def current_plan(plan: InferencePlan | None, layers: list[Layer], dtype) -> InferencePlan:
    """``plan`` if it was built for these layers, backends, dtype and parameter arrays; else a new plan."""
    if plan is None or not plan.is_current(layers, dtype):
        plan = InferencePlan(layers, dtype)
    return plan
