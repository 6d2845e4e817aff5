"""The compiled inference plan behind :meth:`Sequential.predict` and :meth:`Sequential.evaluate`.

A plan is the model's steps prepared for inference:

- Dropout is dropped (it is the identity outside training);
- a BatchNorm2D directly after a Conv2D (zero padding; ungrouped or depthwise), or a BatchNorm1D
  directly after a Dense, is folded into it:
  ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, computed in
  float64 once per predict call (not per batch; one kernel pass into arrays kept per thread), so
  training or edits in place are always seen;
- then the steps are fused as :func:`fastcnn.steps.fuse` fuses them for training (a Conv2D, the
  MaxPool2D and the ReLU after it run as one ``conv2d_max_pool2d`` op), so a folded conv fuses too,
  a ReLU after a Dense runs in the ``linear`` kernel (its ``relu`` argument), and a ReLU after a conv
  that no pool follows in the conv's step (in the prepared conv's kernel or the ``conv2d_relu`` op,
  ``depthwise_conv2d_relu`` for a depthwise conv, see :class:`_Conv`);
- a residual block (:class:`fastcnn.blocks.Residual`) runs its body and its shortcut as plans of their
  own, so their batch norms fold and their steps fuse the same way, and adds their outputs (the
  ``add`` op), through the ReLU after the block in the same pass;
- on the first call with an input shape (under a backend policy and thread count), each step is
  bound to that shape: the dispatcher's choice of kernel (:func:`fastcnn.dispatch.chosen`), the
  geometry and signature are resolved once, and later calls run the bound steps with no per-layer
  validation, no dispatcher lookups. The input is validated once per predict call, by ``predict``.
  A stride-1 conv (with its 2x2 pool; without a pool, where
  :func:`fastcnn.kernels.conv_channels.takes` does not take it) or a strided one without dilation or
  pool that :func:`fastcnn.kernels.conv_channels.takes` does not take runs as a
  :class:`fastcnn.kernels.conv_numba.PreparedConv` (one kernel launch, serial when the work is too
  small to repay waking Numba's threads, :func:`fastcnn.kernels.jit.sized`) or NumPy's kernel,
  whichever the policy picks (``auto``: the faster as measured, :func:`fastcnn.dispatch.fastest`, so
  under ``auto`` a conv may run a different backend here than in ``forward``: the same values to
  rounding, not always the same bits); but a 1x1 conv without padding or pool, of any stride, runs
  its own kernel, on the input as it lies or subsampled by the stride. Average pools run the
  ``avg_pool2d`` kernel with their geometry and divisors worked out once, global average pools the
  ``global_avg_pool2d`` kernel.

The plan is rebuilt when a layer, a backend or a parameter array is replaced (``load_state_dict``,
``astype``, batch norm's running statistics after a training step); parameters changed in place
(what optimizers do) are read live. Steps fastcnn has no fast path for run their layer's own
``forward(x, training=False)``.

Buffers are kept per thread (two threads may predict with one model at once): a prepared conv's
temporaries (a padded conv reads its input into them with the padding's zeros; large ones are one
scratch array that every prepared conv of the thread shares), and two buffers that
the outputs the next step consumes alternate between (:class:`_Outputs`). ReLU and Tanh run in place
on an array the plan made. The output of the last step that makes an array is always a new array, so
what ``predict`` returns is never overwritten by a later call. ``python -m bench.inference
--profile`` splits predict's time into its steps and its own Python.
"""
from __future__ import annotations

import copy
import functools
import threading
from typing import Callable

import numpy as np

from . import backends, dispatch
from . import functional as F
from ._checks import check_allocation, conv_geometry, pool_geometry
from .layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, FusedConv,
                     GlobalAvgPool2D, Layer, MaxPool2D, ReLU, Tanh)
from .kernels.jit import num_threads
from .kernels.scratch import KEEP_BYTES, aligned_bytes, zero_padded
from .steps import fuse

if backends.jit.NUMBA_AVAILABLE:
    from .kernels import conv_numba, linear_numba, norm_numba

__all__ = ["InferencePlan", "current_plan", "fold_batch_norm"]

Arrays = Callable[[], tuple[np.ndarray, np.ndarray]]

RESIDUAL_BLOCKS: set[type] = set()
"""Layer types whose output is the sum of what the layer lists of their ``residual_branches()`` give
(the body's, and the shortcut's or None for the identity); :mod:`fastcnn.blocks` registers
:class:`~fastcnn.blocks.Residual`. Exact types only: a subclass may compute something else."""


def fold_batch_norm(weight: np.ndarray, bias: np.ndarray | None, bn,
                    out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(weight', bias')`` of a conv or dense layer with the batch norm ``bn`` (eval mode) after it
    folded in; output channels on axis 0 of ``weight``. Computed in float64, returned in weight's dtype:
    in ``out`` (C-contiguous arrays of weight's shape and of ``(C,)``) if given, else in new arrays."""
    channels = weight.shape[0]
    w_out, b_out = out if out is not None else (np.empty_like(weight, order="C"), np.empty(channels, weight.dtype))
    bias = np.zeros(channels, weight.dtype) if bias is None else bias
    _check_fold(weight, bias, bn, w_out, b_out)
    return _fold_into(weight, bias, bn, w_out, b_out)


def _check_fold(weight: np.ndarray, bias: np.ndarray, bn, w_out: np.ndarray, b_out: np.ndarray) -> None:
    """The ValueError :func:`fold_batch_norm` raises for arrays that do not fit ``weight``."""
    channels = weight.shape[0]
    gamma, beta, mean, var = bn.params["weight"], bn.params["bias"], bn.buffers["running_mean"], bn.buffers["running_var"]
    for name, array, shape in (("bias", bias, (channels,)), ("batch norm weight", gamma, (channels,)),
                               ("batch norm bias", beta, (channels,)), ("running_mean", mean, (channels,)),
                               ("running_var", var, (channels,)), ("out[0]", w_out, weight.shape),
                               ("out[1]", b_out, (channels,))):
        if array.shape != shape:
            raise ValueError(f"fold_batch_norm: {name} must have shape {shape} for a weight of shape "
                             f"{weight.shape}, got {array.shape}")
    for name, array in (("out[0]", w_out), ("out[1]", b_out)):
        if not (array.flags.c_contiguous and array.flags.writeable and array.dtype == weight.dtype):
            raise ValueError(f"fold_batch_norm: {name} must be a writable C-contiguous {weight.dtype} array")


def _fold_into(weight: np.ndarray, bias: np.ndarray, bn, w_out: np.ndarray, b_out: np.ndarray) -> tuple:
    """:func:`fold_batch_norm` into ``w_out`` and ``b_out``, on arrays :func:`_check_fold` passed."""
    channels = weight.shape[0]
    gamma, beta, mean, var = bn.params["weight"], bn.params["bias"], bn.buffers["running_mean"], bn.buffers["running_var"]
    if backends.jit.NUMBA_AVAILABLE:  # one pass, no temporaries (a predict call folds every batch norm)
        norm_numba.fold_batch_norm(np.ascontiguousarray(weight).reshape(channels, -1), bias, gamma, beta, mean, var,
                                   float(bn.eps), w_out.reshape(channels, -1), b_out)
        return w_out, b_out
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + bn.eps)
    np.multiply(weight, scale.reshape((-1,) + (1,) * (weight.ndim - 1)), dtype=np.float64, out=w_out, casting="unsafe")
    b_out[...] = (bias.astype(np.float64) - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    return w_out, b_out


def _live(layer: Layer) -> Arrays:
    """The layer's own weight and bias (zeros when it has none): :data:`fixed` arrays."""
    zeros = np.zeros(layer.params["weight"].shape[0], layer.params["weight"].dtype)
    return _fixed(lambda: (layer.params["weight"], layer.params.get("bias", zeros)))


def _fixed(arrays: Arrays) -> Arrays:
    """``arrays``, marked as giving the same arrays as long as the plan is current (its parameter arrays
    are the same objects, :meth:`InferencePlan.is_current`): a plan calls it once, not per predict call."""
    arrays.fixed = True
    return arrays


def _no_arrays() -> tuple:
    return ()


def _folded(layer: Layer, bn) -> Arrays:
    """``layer``'s weight and bias with ``bn`` folded in, at each call, into arrays kept per thread:
    a predict call's steps use them before the thread's next call refolds them. The arrays are checked
    here, once: the plan is rebuilt when any of them is replaced, and nothing in place changes a shape."""
    weight = layer.params["weight"]
    bias = layer.params.get("bias", np.zeros(weight.shape[0], weight.dtype))
    _check_fold(weight, bias, bn, np.empty(weight.shape, weight.dtype), np.empty(weight.shape[0], weight.dtype))
    kept = threading.local()

    def arrays() -> tuple[np.ndarray, np.ndarray]:
        out = getattr(kept, "out", None)
        if out is None:
            out = kept.out = (np.empty(weight.shape, weight.dtype), np.empty(weight.shape[0], weight.dtype))
        return _fold_into(weight, bias, bn, *out)

    return arrays


Run = Callable[[np.ndarray, tuple], np.ndarray]
"""A step bound to one input shape, backend policy and thread count: ``run(x, arrays)``."""
Output = Callable[[], "np.ndarray | None"]
"""What gives a bound step the array to write its output into at each call (None: a new array)."""

_KEPT_OUTPUT_BYTES = 1 << 17  # smaller outputs come from the allocator's heap (glibc's first mmap threshold)
_VIEWS_KEPT = 32  # (buffer, shape) views kept per thread before they are made afresh


def _new_array() -> None:
    return None


class _Outputs:
    """The two buffers per thread that the outputs of a plan's steps alternate between, where the next
    step consumes them (a step's input is always in the other buffer, or elsewhere): each grown to the
    largest output asked of it, so that a predict call writes into memory the last one used (fresh
    memory costs a page fault per 4 KiB: without this, a MobileNet-style net spent over a third of its
    batch-256 inference in them). Outputs under :data:`_KEPT_OUTPUT_BYTES`, which the allocator serves
    from memory it keeps, and over :data:`~fastcnn.kernels.scratch.KEEP_BYTES` are new arrays.

    The plans of residual branches at the same depth share one (see :class:`_Residual`): blocks run one
    after another, so a pair of buffers per depth and branch serves them all."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._local = threading.local()

    def getter(self, slot: int | None, shape: tuple) -> Output:
        """What gives a step writing to buffer ``slot`` (None: a new array) its output of ``shape``."""
        nbytes = self.dtype.itemsize * int(np.prod(shape, dtype=np.float64))
        if slot is None or not _KEPT_OUTPUT_BYTES <= nbytes <= KEEP_BYTES:
            return _new_array
        key, local = (slot, shape), self._local

        def output() -> np.ndarray:
            view = getattr(local, "views", {}).get(key)
            return self._view(key) if view is None else view
        return output

    def _view(self, key: tuple) -> np.ndarray:
        local, (slot, shape) = self._local, key
        if not hasattr(local, "views"):
            local.views, local.buffers = {}, [np.empty(0, self.dtype)] * 2
        size = int(np.prod(shape))
        if local.buffers[slot].size < size:
            local.buffers[slot] = aligned_bytes(size * self.dtype.itemsize).view(self.dtype)
            local.views = {k: v for k, v in local.views.items() if k[0] != slot}
        if len(local.views) >= _VIEWS_KEPT:
            local.views.clear()
        view = local.views[key] = local.buffers[slot][:size].reshape(shape)
        return view


class _Step:
    """One step of a plan. :meth:`bind` prepares it for one input shape (and the backend policy and
    thread count in force), once: what it returns is called with the input and what :attr:`arrays`
    gave for this predict call. ``output(shape)`` gives the :data:`Output` for an output of ``shape``:
    a new array where nothing after the step makes one, else a buffer of the plan that the next call
    in the thread overwrites."""

    arrays: Arrays = staticmethod(_fixed(_no_arrays))
    makes_new_arrays = False  # whether the step's output never shares memory with its input

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)

    def bind(self, x: np.ndarray, arrays: tuple, policy: str, output: Callable[[tuple], Output]) -> Run:
        raise NotImplementedError


class _Conv(_Step):
    """A Conv2D, or a Conv2D with the MaxPool2D (and ReLU) after it, as ``conv2d`` / ``conv2d_max_pool2d``;
    a depthwise Conv2D as ``depthwise_conv2d``; with ``relu`` and no pool, the ReLU after the conv too.

    A stride-1 conv (with the pool the kernel fuses, if any), or a strided one without dilation or pool,
    can run as a :class:`~fastcnn.kernels.conv_numba.PreparedConv` (see its ``takes``): one kernel launch,
    serial for small work, temporaries per thread, the ReLU applied as it writes the output. The
    policy chooses between it and the NumPy kernel (``auto``: measured, each run as the step would run
    it); other convs run the kernel the dispatcher picks for the op, ``conv2d_relu`` for a conv with
    its ReLU (``depthwise_conv2d_relu`` for a depthwise one)."""

    makes_new_arrays = True

    def __init__(self, dtype, conv: Conv2D, arrays: Arrays, pool: MaxPool2D | None = None, relu: bool = False) -> None:
        super().__init__(dtype)
        self.conv, self.pool, self.relu, self.arrays = conv, pool, relu, arrays
        self.op = "depthwise_conv2d" if conv.groups > 1 else "conv2d" if pool is None else "conv2d_max_pool2d"

    def bind(self, x, arrays, policy, output):
        conv, w_shape = self.conv, self.conv.params["weight"].shape
        geo = conv_geometry(x.shape, w_shape, conv.stride, conv.padding, conv.dilation, conv.groups)
        check_allocation("conv2d input with its padding", (x.shape[0], x.shape[1]) + geo.padded_hw, self.dtype)
        check_allocation("conv2d output", (x.shape[0], w_shape[0]) + geo.out_hw, self.dtype)
        if self.pool is None:
            signature, args, p = F.conv_signature(x.shape, w_shape, geo, self.dtype), (geo,), None
        else:
            p = _pool_geometry((x.shape[0], w_shape[0]) + geo.out_hw, self.pool)
            signature = F.conv_signature(x.shape, w_shape, geo, self.dtype, p.kernel, p.stride, p.padding, p.dilation,
                                         p.out_hw, self.relu)
            args = (geo, p, self.relu)
        policy = conv.backend or policy
        if self.op != "depthwise_conv2d" and policy != "numpy" and _numba_kernel(self.op) is not None and \
                conv_numba.PreparedConv.takes(x.shape, w_shape, geo, p):
            # auto measures what the plan would run: the prepared conv, not the op's Numba kernel
            prepared = conv_numba.PreparedConv(x.shape, w_shape, self.dtype, geo, p, self.relu)
            out = output(prepared.out_shape)
            runs = {"numba": lambda x, arrays: prepared(x, *arrays, out()),
                    "numpy": self._unprepared(backends.OPS[self.op].kernels["numpy"], args, x.shape[0], geo, policy,
                                              output)}
            return dispatch.fastest(self.op, signature + ("prepared", self.relu), (x, arrays), runs, policy)
        if self.op in ("conv2d", "depthwise_conv2d") and self.relu:  # the ReLU applied as the output is written
            kernel = dispatch.chosen(self.op + "_relu", signature, (x, *arrays, *args), policy)
            out = output((x.shape[0], w_shape[0]) + geo.out_hw)
            return lambda x, arrays: kernel(x, *arrays, *args, out())
        kernel = dispatch.chosen(self.op, signature, (x, *arrays, *args), policy)
        return self._unprepared(kernel, args, x.shape[0], geo, policy, output)

    def _unprepared(self, kernel, args: tuple, n: int, geo, policy: str, output: Callable[[tuple], Output]) -> Run:
        """The step run by the op's ``kernel`` (the ReLU after it by the relu op in place, if the kernel
        cannot take it)."""
        if self.pool is not None:
            return lambda x, arrays: kernel(x, *arrays, *args)[0]
        out_shape = (n, self.conv.params["weight"].shape[0]) + geo.out_hw
        out = output(out_shape)
        if self.relu:
            relu = dispatch.chosen("relu", (out_shape, self.dtype.char), (np.zeros(out_shape, self.dtype),), policy)
            return lambda x, arrays: _in_place(relu, kernel(x, *arrays, *args, out()))
        return lambda x, arrays: kernel(x, *arrays, *args, out())


def _in_place(kernel, x: np.ndarray) -> np.ndarray:
    """``x`` with the element-wise ``kernel`` applied in place."""
    return kernel(x, x)


def _numba_kernel(op: str):
    """The Numba backend's kernel of ``op`` (None without Numba)."""
    return backends.OPS[op].kernels.get("numba")


class _Pool(_Step):
    """A MaxPool2D (``max_pool2d``, its argmax unused)."""

    makes_new_arrays = True

    def __init__(self, dtype, layer: MaxPool2D) -> None:
        super().__init__(dtype)
        self.layer = layer

    def bind(self, x, arrays, policy, output):
        geo = _pool_geometry(x.shape, self.layer)  # the signature as fastcnn.functional's max_pool2d gives it
        signature = (x.shape, geo.kernel, geo.stride, geo.padding, geo.dilation, geo.out_hw, self.dtype.char)
        kernel = dispatch.chosen("max_pool2d", signature, (x, geo), self.layer.backend or policy)
        return lambda x, arrays: kernel(x, geo)[0]


class _AvgPool(_Step):
    """An AvgPool2D (``avg_pool2d``), its geometry and divisors worked out once, or a GlobalAvgPool2D
    (``global_avg_pool2d``)."""

    makes_new_arrays = True

    def __init__(self, dtype, layer: AvgPool2D | GlobalAvgPool2D) -> None:
        super().__init__(dtype)
        self.layer = layer

    def bind(self, x, arrays, policy, output):
        layer = self.layer
        if type(layer) is GlobalAvgPool2D:
            layer.output_shape(x.shape[1:])  # its ValueError for an empty plane
            kernel = dispatch.chosen("global_avg_pool2d", (x.shape, self.dtype.char), (x,), layer.backend or policy)
            out = output(x.shape[:2])
            return lambda x, arrays: kernel(x, out())
        pads, signature, args = F.avg_pool_call(x.shape, self.dtype, layer.kernel_size, layer.stride, layer.padding,
                                                layer.ceil_mode, layer.count_include_pad, layer.divisor_override)
        kernel = dispatch.chosen("avg_pool2d", signature, (zero_padded(x, pads), *args), layer.backend or policy)
        out = output(x.shape[:2] + args[0].out_hw)
        return lambda x, arrays: kernel(zero_padded(x, pads), *args, out())


def _pool_geometry(shape, pool: MaxPool2D):
    """The geometry of the max-pool layer ``pool`` on inputs of ``shape``."""
    return pool_geometry(shape, pool.kernel_size, pool.stride, pool.padding, pool.dilation, int(pool.ceil_mode))


class _Linear(_Step):
    """A Dense layer (``linear``), with a batch norm after it folded in or not, and the ReLU after it
    applied by the same kernel with ``relu``."""

    makes_new_arrays = True

    def __init__(self, dtype, layer: Dense, arrays: Arrays, relu: bool = False) -> None:
        super().__init__(dtype)
        self.arrays, self.relu = arrays, relu
        self.w_shape = layer.params["weight"].shape

    def bind(self, x, arrays, policy, output):
        check_allocation("linear output", (x.shape[0], self.w_shape[0]), self.dtype)
        kernel = dispatch.chosen("linear", (x.shape, self.w_shape, self.dtype.char), (x, *arrays), policy)
        if backends.jit.NUMBA_AVAILABLE and kernel is linear_numba.linear_forward:  # its route chosen once
            kernel = linear_numba.forward_for(x.shape[0], self.w_shape, self.dtype.itemsize)
        relu = self.relu
        return lambda x, arrays: kernel(x, *arrays, relu)


class _Activation(_Step):
    """A ReLU or Tanh layer (its op, :data:`ACTIVATION_OPS`): in place where its input is an array the plan
    made (:attr:`in_place`, set by the plan), else into its output."""

    in_place = False

    def __init__(self, dtype, layer: Layer) -> None:
        super().__init__(dtype)
        self.op = ACTIVATION_OPS[type(layer)]

    @property
    def makes_new_arrays(self) -> bool:
        return not self.in_place

    def bind(self, x, arrays, policy, output):
        kernel = dispatch.chosen(self.op, (x.shape, self.dtype.char), (np.ascontiguousarray(x),), policy)
        if self.in_place:
            return lambda x, arrays: _in_place(kernel, x)
        out = output(x.shape)  # the input may come from any layer: a kernel takes C-contiguous arrays
        return lambda x, arrays: kernel(np.ascontiguousarray(x), out())


ACTIVATION_OPS: dict[type, str] = {ReLU: "relu", Tanh: "tanh"}
"""The activation layers the plan runs as :class:`_Activation` steps, and their ops (whose kernels take
``out``)."""


class _Flatten(_Step):
    def __init__(self, dtype, layer: Flatten) -> None:
        super().__init__(dtype)

    def bind(self, x, arrays, policy, output):
        shape = (x.shape[0], -1)
        return lambda x, arrays: x.reshape(shape)


def _passes_through(step: _Step) -> bool:
    """Whether ``step``'s output is its input, reshaped or changed in place."""
    return type(step) is _Flatten or (type(step) is _Activation and step.in_place)


class _Residual(_Step):
    """A residual block (a type in :data:`RESIDUAL_BLOCKS`): a plan of its body and one of its shortcut
    (none for the identity), whose outputs it adds (the ``add`` op), with ``relu`` through the ReLU
    after the block in the same pass. The branches' plans take their buffers from ``outputs``, one
    :class:`_Outputs` per depth and branch for the whole model."""

    makes_new_arrays = True
    relu = False

    def __init__(self, dtype, block: Layer, outputs: dict[tuple, _Outputs], depth: int) -> None:
        super().__init__(dtype)
        self.block = block
        self.plans = [InferencePlan(layers, dtype, owns_output=False, outputs=outputs, place=(depth + 1, branch))
                      for branch, layers in enumerate(block.residual_branches()) if layers is not None]
        self.arrays = lambda: [plan._step_arrays() for plan in self.plans]

    def is_current(self, dtype: np.dtype) -> bool:
        """Whether each branch's plan is current (:meth:`InferencePlan.is_current`) for the branch as it is now."""
        branches = [layers for layers in self.block.residual_branches() if layers is not None]
        return len(branches) == len(self.plans) and all(plan.is_current(layers, dtype)
                                                        for plan, layers in zip(self.plans, branches))

    def bind(self, x, arrays, policy, output):
        out_shape = (x.shape[0],) + self.block.output_shape(x.shape[1:])  # its ValueError if the branches' differ
        threads, (body, *shortcut), out = num_threads(), self.plans, output(out_shape)
        relu, sample = self.relu, np.zeros(out_shape, self.dtype)
        add = dispatch.chosen("add", (out_shape, self.dtype.char, relu), (sample, sample, relu), policy)
        if not shortcut:
            return lambda x, arrays: add(np.ascontiguousarray(body._run(x, arrays[0], policy, threads)),
                                         np.ascontiguousarray(x), relu, out())
        short = shortcut[0]
        return lambda x, arrays: add(np.ascontiguousarray(body._run(x, arrays[0], policy, threads)),
                                     np.ascontiguousarray(short._run(x, arrays[1], policy, threads)), relu, out())


class _Layer(_Step):
    """Any other layer: its own ``forward(x, training=False)``."""

    def __init__(self, dtype, layer: Layer) -> None:
        super().__init__(dtype)
        self.layer = layer

    def bind(self, x, arrays, policy, output):
        forward = self.layer.forward
        return lambda x, arrays: forward(x, False)


def _fast(layer: Layer) -> bool:
    """Whether the plan runs ``layer`` through its own steps: a Dense, or a Conv2D with zero padding
    that has no groups (it fuses with a pool or a ReLU) or is depthwise; other convs run their layer's forward."""
    return type(layer) is Dense or (type(layer) is Conv2D and layer.padding_mode == "zeros"
                                    and layer.groups in (1, layer.in_channels))


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
    owns_output : bool
        Whether what the plan returns goes to the caller (a new array), or to a step of an outer plan
        that makes a new array from it (a residual block's add: it may live in a kept buffer).
    outputs : dict, optional
        The model's output buffers by ``place``, shared with its residual branches' plans (a new
        dict for the model's own plan).
    place : tuple of int
        ``(depth, branch)``: ``(0, 0)`` for the model's plan; for the branches of a block in a plan at
        ``depth``, ``depth + 1`` and 0 for the body, 1 for the shortcut.
    """

    def __init__(self, layers: list[Layer], dtype, owns_output: bool = True, outputs: dict | None = None,
                 place: tuple[int, int] = (0, 0)) -> None:
        self.dtype = dtype = np.dtype(dtype)
        outputs = {} if outputs is None else outputs
        self._layers = list(layers)
        self._backends = [(layer, layer.backend) for layer in layers if hasattr(layer, "backend")]
        self._stores = [(store, len(store)) for layer in layers for store in (layer.params, layer.buffers) if store]
        self._arrays = [(store, key, value) for store, _ in self._stores for key, value in store.items()]
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
            fused = isinstance(step, FusedConv)
            conv = step.conv if fused else step
            if type(conv) is Conv2D and id(conv) in arrays:
                pool = step.pool if fused else None
                self.steps.append(_Conv(dtype, conv, arrays[id(conv)], pool, fused and step.relu is not None))
            elif type(step) is Dense and id(step) in arrays:
                self.steps.append(_Linear(dtype, step, arrays[id(step)]))
            elif type(step) is MaxPool2D:
                self.steps.append(_Pool(dtype, step))
            elif type(step) in (AvgPool2D, GlobalAvgPool2D):
                self.steps.append(_AvgPool(dtype, step))
            elif type(step) is ReLU and self.steps and type(self.steps[-1]) in (_Linear, _Conv, _Residual) \
                    and not self.steps[-1].relu:
                self.steps[-1].relu = True
            elif type(step) in ACTIVATION_OPS:
                self.steps.append(_Activation(dtype, step))
            elif type(step) is Flatten:
                self.steps.append(_Flatten(dtype, step))
            elif fused:  # parameters the fast path cannot take: run the layers themselves
                self.steps.extend(_Layer(dtype, layer) for layer in (step.conv, step.pool) if layer)
                if step.relu is not None:
                    self.steps.append(_Activation(dtype, step.relu))
            elif type(step) in RESIDUAL_BLOCKS:
                self.steps.append(_Residual(dtype, step, outputs, place[0]))
            else:
                self.steps.append(_Layer(dtype, step))

        owned = False  # whether the current step's input is an array this plan made
        for step in self.steps:
            if type(step) is _Activation:
                step.in_place = owned
            if type(step) is not _Flatten:
                owned = step.makes_new_arrays or type(step) is _Activation
        # a step's output must be a new array unless a later step (or the outer plan's, if the plan does
        # not own its output) makes one from it (a Flatten between them gives a view, an activation in
        # place works on it): an output handed to the caller is never overwritten by a later call. The
        # others alternate between two buffers.
        self._outputs, self._slots, made = outputs.setdefault(place, _Outputs(dtype)), [], 0
        for k, step in enumerate(self.steps):
            fresh = not next((s.makes_new_arrays for s in self.steps[k + 1 :] if not _passes_through(s)),
                             not owns_output)
            self._slots.append(None if fresh or not step.makes_new_arrays else made % 2)
            made += step.makes_new_arrays
        self._bound: dict[tuple, list[Run]] = {}
        self._residuals = [step for step in self.steps if type(step) is _Residual]
        fixed = [getattr(step.arrays, "fixed", False) for step in self.steps]
        self._fixed_arrays = [step.arrays() if is_fixed else None for step, is_fixed in zip(self.steps, fixed)]
        self._changing_arrays = [(k, step.arrays) for k, (step, is_fixed) in enumerate(zip(self.steps, fixed))
                                 if not is_fixed]

    def is_current(self, layers: list[Layer], dtype) -> bool:
        """Whether the plan was built for these layers (the same objects), their backends, ``dtype`` and
        the same parameter and buffer arrays (compared by identity: a few microseconds), and each
        residual block's plans for its branches as they are now."""
        if dtype != self.dtype or layers != self._layers:  # layers compare by identity
            return False
        for layer, backend in self._backends:
            if layer.backend != backend:
                return False
        for store, size in self._stores:
            if len(store) != size:
                return False
        for store, key, value in self._arrays:
            if store.get(key) is not value:
                return False
        for step in self._residuals:
            if not step.is_current(dtype):
                return False
        return True

    def predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Outputs for ``x`` (already validated: the model's dtype and per-sample shape), in batches."""
        arrays = self._step_arrays()  # batch norm folded once per call
        policy, threads = dispatch.get_backend(), num_threads()
        if len(x) <= batch_size:
            return self._run(x if x.flags.c_contiguous else np.ascontiguousarray(x), arrays, policy, threads)
        return np.concatenate([self._run(np.ascontiguousarray(x[start : start + batch_size]), arrays, policy, threads)
                               for start in range(0, len(x), batch_size)])

    def _step_arrays(self) -> list:
        """What each step's ``arrays`` gives now (batch norm folded): for one predict call of a current plan."""
        arrays = self._fixed_arrays.copy()
        for k, changing in self._changing_arrays:
            arrays[k] = changing()
        return arrays

    def _run(self, h: np.ndarray, arrays: list[tuple], policy: str, threads: int) -> np.ndarray:
        runs = self._bound.get((h.shape, policy, threads))
        if runs is None:
            return self._bind(h, arrays, policy, threads)
        for run, step_arrays in zip(runs, arrays):
            h = run(h, step_arrays)
        return h

    def bound(self, shape: tuple) -> list[Run] | None:
        """The steps as bound for inputs of ``shape`` under the policy and thread count in force (None
        before the first predict call with them): for profiling."""
        return self._bound.get((shape, dispatch.get_backend(), num_threads()))

    def _bind(self, h: np.ndarray, arrays: list[tuple], policy: str, threads: int) -> np.ndarray:
        """Bind every step to ``h``'s shape, running them on ``h`` as it goes; return the outputs."""
        key, runs = (h.shape, policy, threads), []
        for k, (step, step_arrays) in enumerate(zip(self.steps, arrays)):
            runs.append(step.bind(h, step_arrays, policy, functools.partial(self._outputs.getter, self._slots[k])))
            h = runs[-1](h, step_arrays)
        if len(self._bound) >= 8:  # a caller cycling through batch sizes: keep memory bounded
            self._bound.clear()
        self._bound[key] = runs
        return h


def current_plan(plan: InferencePlan | None, layers: list[Layer], dtype) -> InferencePlan:
    """``plan`` if it was built for these layers, backends, dtype and parameter arrays; else a new plan."""
    if plan is None or not plan.is_current(layers, dtype):
        plan = InferencePlan(layers, dtype)
    return plan
