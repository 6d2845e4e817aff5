"""``Sequential``: a stack of layers with fit / evaluate / predict, summaries, state dicts and files."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from . import _untrusted, dispatch, inference, memory, onnx_io, saving
from ._checks import positive_int
from ._version import __version__
from .callbacks import Callback, CallbackList
from .distributed import training_context
from .kernels import blas
from .functional import softmax
from .layers import LAYER_TYPES, Dropout, Layer, Sigmoid, Softmax, walk, weights_follow
from .losses import CrossEntropyLoss, Loss, accuracy, get_loss
from .optim import Optimizer, get_optimizer
from .progress import ProgressBar
from .steps import fuse
from .tables import format_table

__all__ = ["Sequential", "TrainingDivergedError", "load_model", "load_onnx"]

FORMAT = "fastcnn.model"
FORMAT_VERSION = 1


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite during ``fit``; the model holds the last weights that gave a finite loss."""

    def __init__(self, message: str, history: dict[str, list[float]]) -> None:
        super().__init__(message)
        self.history = history


class Sequential:
    """Layers applied in order.

    Parameters
    ----------
    layers : sequence of Layer
    input_shape : tuple of int, optional
        Per-sample input shape, e.g. ``(1, 28, 28)``; lets :meth:`summary` and the first forward check
        every layer's shapes.
    """

    def __init__(self, layers: Sequence[Layer] = (), input_shape: tuple[int, ...] | None = None) -> None:
        self.layers: list[Layer] = []
        for layer in layers:
            self.add(layer)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self._checked_shapes: set[tuple[int, ...]] = set()
        self._plan: tuple[tuple, list[Layer]] = ((), [])  # (the layers and their backends, the steps)
        self._inference: inference.InferencePlan | None = None  # what predict runs, see fastcnn.inference
        self.loss: Loss | None = None
        self.recipe = None

    def __getstate__(self) -> dict:
        """The model's state for ``copy.deepcopy`` and pickle, without its inference plan (rebuilt on the
        copy's first predict): the plan's bound steps read the weights of the model that built it."""
        return {**self.__dict__, "_inference": None}

    def add(self, layer: Layer) -> None:
        """Append a layer."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes fastcnn layers, got {type(layer).__name__}")
        self.layers.append(layer)
        self._checked_shapes = set()

    # ---------------------------------------------------------------- shapes and parameters
    def output_shapes(self, input_shape: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
        """Per-sample output shape of every layer; ValueError naming the layer whose input does not fit."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("no input shape: pass input_shape to Sequential(...) or to this call")
        shapes = []
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as exc:
                source = f"layer {i - 1} ({type(self.layers[i - 1]).__name__})" if i else "the model input"
                raise ValueError(f"layer {i} ({type(layer).__name__}) cannot take the output of {source}, "
                                 f"shape (N, {', '.join(map(str, shape))}): {exc}") from None
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of layers, output shapes and parameter counts (returned; print it to show it)."""
        shapes = self.output_shapes(input_shape)
        rows = [("#", "layer", "output shape", "params")]
        inputs = [tuple(input_shape or self.input_shape)] + shapes[:-1]
        for i, (layer, shape) in enumerate(zip(self.layers, shapes)):
            rows.append((str(i), layer.describe(), "(N, " + ", ".join(map(str, shape)) + ")", f"{layer.num_params:,}"))
            rows.extend((name, "  " + text, "(N, " + ", ".join(map(str, out)) + ")", f"{count:,}")
                        for name, text, out, count in layer.inner_rows(str(i), inputs[i]))
        table = format_table(rows, right=[3], header_rule=True)
        total = sum(layer.num_params for layer in self.layers)
        return "\n".join([table, table.split("\n")[1], f"total parameters: {total:,} ({self.dtype.name})"])

    @property
    def dtype(self) -> np.dtype:
        for layer in self.layers:
            for p in layer.params.values():
                return p.dtype
        return np.dtype(np.float32)

    def astype(self, dtype) -> "Sequential":
        """Convert every layer to ``dtype`` (float32 or float64) in place; returns self."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def named_parameters(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(name, param, grad)`` for every trainable parameter, named as in PyTorch's ``nn.Sequential``."""
        return [(f"{i}.{k}", p, layer.grads[k]) for i, layer in enumerate(self.layers) for k, p in layer.params.items()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by name (``"0.weight"``, ``"3.running_mean"``, ...), as PyTorch names them
        for the equivalent ``nn.Sequential``; the arrays are copies."""
        state = {}
        for i, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for k, v in store.items():
                    state[f"{i}.{k}"] = v.copy()
        return state

    def _state_slots(self) -> dict[str, tuple[Layer, dict[str, np.ndarray], str]]:
        """``name: (layer, store, key)`` for every parameter and buffer, named as :meth:`state_dict` names them."""
        return {f"{i}.{k}": (layer, store, k) for i, layer in enumerate(self.layers)
                for store in (layer.params, layer.buffers) for k in store}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays from ``state`` (names and shapes as :meth:`state_dict`; PyTorch tensors work too)."""
        self._load_state(state, copy=True)

    def _load_state(self, state: dict[str, Any], copy: bool) -> None:
        """:meth:`load_state_dict`; with ``copy=False``, arrays of the model's dtype are taken as they are."""
        expected = self._state_slots()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state dict does not match the model: missing {missing}, unexpected {unexpected}")
        arrays = {}
        for name, (layer, store, k) in expected.items():
            value = state[name]
            value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
            if value.shape != store[k].shape:
                raise ValueError(f"{name}: shape {value.shape} in the state dict, {store[k].shape} in the model")
            arrays[name] = value.astype(store[k].dtype, copy=copy)
        for name, (layer, store, k) in expected.items():  # all checked: now change the model
            store[k] = arrays[name]
        self._checked_shapes = set()

    def get_config(self) -> list[dict[str, Any]]:
        """Each layer's type and constructor arguments: what :meth:`from_config` rebuilds the model from."""
        return [{"type": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]

    @classmethod
    def from_config(cls, config: list[dict[str, Any]], input_shape: tuple[int, ...] | None = None) -> "Sequential":
        """A new model with the layers :meth:`get_config` described (freshly initialised weights).

        Raises
        ------
        ValueError
            An unknown layer type or arguments its constructor refuses.
        """
        layers = []
        for spec in config:
            layer_type = LAYER_TYPES.get(spec.get("type")) if isinstance(spec, dict) else None
            if layer_type is None:
                raise ValueError(f"unknown layer type in {spec!r}; known: {', '.join(LAYER_TYPES)}")
            try:
                layers.append(layer_type.from_config(spec.get("config", {})))
            except (TypeError, KeyError, OverflowError) as exc:
                raise ValueError(f"cannot rebuild layer {spec!r}: {exc}") from None
        return cls(layers, input_shape=input_shape)

    # ---------------------------------------------------------------- computing
    def _prepare_input(self, x) -> np.ndarray:
        if type(x) is np.ndarray and x.dtype == self.dtype and x.shape[1:] in self._checked_shapes:
            return x  # what the checks below would pass as it is
        x = np.asarray(x)
        if x.dtype.kind not in "f":
            raise TypeError(f"x must be floating point (float32 images in [0, 1] for the MNIST models), got dtype "
                            f"{x.dtype}; for uint8 images use x.astype(np.float32) / 255")
        x = x.astype(self.dtype, copy=False)
        shape = x.shape[1:]
        if shape not in self._checked_shapes:
            try:
                self.output_shapes(shape)
            except ValueError as exc:
                raise ValueError(f"{exc}{_layout_hint(x.shape, self._sample_shape())}") from None
            self._checked_shapes.add(shape)
        return x

    def _sample_shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape if known, else ``(C,)`` from a first layer that has ``in_channels``."""
        if self.input_shape is not None:
            return self.input_shape
        channels = getattr(self.layers[0], "in_channels", None) if self.layers else None
        return None if channels is None else (channels,)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Run every layer on the batch ``x``; with ``training=True`` layers keep what backward needs."""
        return self._forward(self._prepare_input(x), training)

    def _forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """:meth:`forward` for a batch of an input that :meth:`_prepare_input` already checked (once
        per ``fit``/``predict`` call, not per batch)."""
        for layer in self._run_order():
            x = layer.forward(x, training)
        return x

    def _run_order(self) -> list[Layer]:
        """The steps forward runs (see :func:`fastcnn.steps.fuse`), made again whenever the layers or
        their backends change."""
        key = tuple((id(layer), getattr(layer, "backend", None)) for layer in self.layers)
        if self._plan[0] != key:
            self._plan = (key, fuse(self.layers))
        return self._plan[1]

    __call__ = forward

    def steps(self) -> list[Layer]:
        """The steps :meth:`forward` runs (see :meth:`_run_order`), for blocks that run a container's layers."""
        return self._run_order()

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Back-propagate ``grad`` (d loss / d output) through every layer; fills each layer's ``grads``.

        Returns the gradient with respect to the model's input, or None with ``input_grad=False``,
        which also skips the work that only that gradient needs (as training does).
        """
        layers = self._run_order()
        first = 0 if input_grad else self.first_trained_step()
        for layer in reversed(layers[first + 1 :]):
            grad = layer.backward(grad)
        if not input_grad:
            if first < len(layers):
                layers[first].backward_params(grad)
            return None
        return layers[0].backward(grad) if layers else grad

    def first_trained_step(self) -> int:
        """Where in :meth:`_run_order` the first step with parameters is (its length if none has any):
        training back-propagates no further than it."""
        return next((i for i, step in enumerate(self._run_order()) if step.params), len(self._run_order()))

    def predict(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The model's outputs for ``x``, computed in batches: what its last layer gives, so class scores
        (logits) for a classifier that ends in a Dense layer; see :meth:`predict_proba` for probabilities.

        Runs the model's inference plan (:mod:`fastcnn.inference`: batch norm folded, steps fused,
        the input checked once), which gives what :meth:`forward` gives: the same bits under a forced
        backend without batch norm; to rounding where a batch norm is folded, or where ``auto``
        measured a different backend for a conv step than for the op.
        """
        x = self._prepare_input(x)
        positive_int("batch_size", batch_size)
        if len(x) == 0:
            raise ValueError("x is empty: predict needs at least one sample")
        self._inference = inference.current_plan(self._inference, self.layers, self.dtype)
        return self._inference.predict(x, batch_size)

    def predict_proba(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Class probabilities for ``x``: the softmax over the last axis of :meth:`predict`'s outputs, or
        those outputs as they are when the model already ends in a Softmax or Sigmoid layer."""
        out = self.predict(x, batch_size)
        return out if self.layers and isinstance(self.layers[-1], (Softmax, Sigmoid)) else softmax(out)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 512, loss: Loss | None = None) -> tuple[float, float | None]:
        """Mean loss and accuracy (None for non-classifiers) over ``(x, y)``."""
        loss = loss or self.loss or CrossEntropyLoss()
        pred = self.predict(x, batch_size)
        y = loss.check_targets(y, pred.shape)
        return loss(pred, y), accuracy(pred, y)

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int = 1,
        batch_size: int = 32,
        *,
        optimizer: Optimizer | str | None = None,
        loss: Loss | str | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        verbose: int = 1,
        validation_split: float = 0.0,
        callbacks: Sequence[Callback] | None = None,
        distributed: bool = False,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        sync_batchnorm: bool = False,
    ) -> dict[str, list[float]]:
        """Train on ``(x, y)`` with mini-batches.

        Parameters
        ----------
        x : ndarray, shape (N, ...)
            Float inputs.
        y : ndarray
            Targets: integer labels ``(N,)`` or one-hot rows for :class:`CrossEntropyLoss`, values for MSE.
        epochs, batch_size : int
        optimizer : Optimizer or str, optional
            An instance, or a name with default settings: ``"adam"`` (``Adam(1e-3)``, the default) or
            ``"sgd"`` (``SGD(0.01)``); see :func:`fastcnn.optim.get_optimizer`.
        loss : Loss or str, optional
            An instance or a name: ``"cross_entropy"`` (the default), ``"mse"``, ``"bce"`` (or Keras's
            names); see :func:`fastcnn.losses.get_loss`.
        validation_data : (x_val, y_val), optional
            Evaluated after every epoch.
        shuffle : bool
        seed : int, optional
            Seeds the shuffling and the dropout masks, so a run can be repeated exactly.
        verbose : int
            1 shows a progress bar per epoch; 0 is silent.
        validation_split : float
            As Keras: this fraction of the samples, taken from the end of ``x`` and ``y`` before any
            shuffling, is held out and evaluated after every epoch instead of trained on.
        callbacks : list of Callback, optional
            Run at the start, after every epoch (and may stop training) and at the end; see
            :mod:`fastcnn.callbacks` (``EarlyStopping``, ``ModelCheckpoint``).
        distributed : bool
            Data-parallel training over MPI, in a script started by ``mpiexec -n N`` (needs
            ``pip install 'fastcnn[mpi]'``): every rank passes the same data, takes a share of each
            batch, and the gradients are averaged, so a run learns as one process with the same
            ``batch_size`` would; only rank 0 shows progress. See :mod:`fastcnn.distributed`.
        augment : callable, optional
            Applied to every training batch before the forward pass (e.g.
            :class:`fastcnn.augment.RandomShiftRotate`); returns a batch of the same shape.
        sync_batchnorm : bool
            With ``distributed=True``: every batch-norm layer normalises with the statistics of the
            global batch (all ranks' shares, as PyTorch's ``SyncBatchNorm``) instead of its rank's
            share, so a step is one process's step on the same batch; costs two small collective calls
            per batch-norm layer and step. ValueError without ``distributed=True``.

        Returns
        -------
        dict
            ``loss`` and ``accuracy`` per epoch, and ``val_loss``/``val_accuracy`` with validation data.

        Raises
        ------
        TrainingDivergedError
            When the loss stops being finite; the model keeps the last weights that gave a finite loss.

        Notes
        -----
        Under glibc, the first ``fit`` of a process has the allocator keep freed memory for reuse
        (:func:`fastcnn.memory.keep_freed_memory`; ``FASTCNN_KEEP_FREED_MEMORY=0`` leaves it alone).
        """
        x = self._prepare_input(x)
        positive_int("batch_size", batch_size)
        positive_int("epochs", epochs)
        if len(x) == 0:
            raise ValueError("x is empty: fit needs at least one sample")
        optimizer = get_optimizer(optimizer)
        self.loss = loss = get_loss(loss)
        memory.keep_freed_memory()  # each step's arrays in the memory the last one freed, not fresh pages
        if validation_split:
            x, y, validation_data = _split_validation(x, y, validation_split, validation_data)
        y = loss.check_targets(y, (len(x),) + self.output_shapes(x.shape[1:])[-1])
        for name, values in (("x", x), ("y", y)):
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                bad = np.unravel_index(np.flatnonzero(~np.isfinite(values))[0], values.shape)
                raise ValueError(f"{name} holds NaN or infinity (first at index {tuple(int(i) for i in bad)}); "
                                 "fit needs finite inputs and targets")
        ctx = training_context(distributed, sync_batchnorm)
        callbacks = CallbackList(c for c in callbacks or () if ctx.is_root or not getattr(c, "writes_files", False))
        seed = ctx.begin(self, seed, dict(x=x.shape, y=y.shape, epochs=epochs, batch_size=batch_size, shuffle=shuffle))
        rng = np.random.default_rng(seed)
        if seed is not None:
            for i, layer in enumerate(walk(self.layers)):
                if isinstance(layer, Dropout):
                    layer.rng = ctx.dropout_rng(seed, i)
        n = len(x)
        if optimizer.total_steps is None:
            optimizer.total_steps = epochs * math.ceil(n / batch_size)
        history: dict[str, list[float]] = {"loss": [], "accuracy": []}
        callbacks.train_begin(self)
        # the backend and BLAS's threads are settled once, not per op; an error on one process stops all
        with ctx.guard((TrainingDivergedError,)), ctx.attached(self), dispatch.use_backend(dispatch.get_backend()), \
                blas.held():
            for epoch in range(epochs):
                order = rng.permutation(n) if shuffle and batch_size < n else None  # full batch: order is moot
                bar = ProgressBar(n, f"epoch {epoch + 1}/{epochs}", enabled=verbose > 0 and ctx.is_root)
                try:
                    mean_loss, acc = self._train_epoch(x, y, order, batch_size, optimizer, loss, bar, ctx, augment)
                except TrainingDivergedError as exc:
                    bar.close("diverged")
                    exc.args = (f"epoch {epoch + 1}: {exc.args[0]}",)
                    exc.history = history
                    raise
                history["loss"].append(mean_loss)
                history["accuracy"].append(float("nan") if acc is None else acc)
                status = _status(mean_loss, acc)
                ctx.end_epoch(self)
                if validation_data is not None:
                    val_loss, val_acc = ctx.evaluate(self, *validation_data, loss=loss)
                    history.setdefault("val_loss", []).append(val_loss)
                    history.setdefault("val_accuracy", []).append(float("nan") if val_acc is None else val_acc)
                    status += f" - val_loss {val_loss:.4f}" + ("" if val_acc is None else f" val_acc {val_acc:.4f}")
                bar.close(status)
                if callbacks.epoch_end(self, epoch, history):
                    break
            ctx.end(self)
        callbacks.train_end(self, history)
        return history

    def _train_epoch(self, x, y, order, batch_size, optimizer, loss, bar, ctx, augment) -> tuple[float, float | None]:
        """One pass over ``x`` in ``order`` (None: as stored); returns the mean loss and accuracy.
        ``ctx`` (see :mod:`fastcnn.distributed`) says which share of each batch this process computes
        and averages the gradients, loss and right predictions over the processes.

        Before each update the weights are copied; if a loss is not finite they are put back and
        :class:`TrainingDivergedError` is raised.
        """
        params = [p for _, p, _ in self.named_parameters()]
        last_good = [p.copy() for p in params]
        total_loss, correct, seen = 0.0, 0, 0
        classifier = True
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught below, with a clear error
            for start in range(0, len(x), batch_size):
                stop = min(start + batch_size, len(x))
                lo, hi = ctx.share(start, stop)
                idx = slice(lo, hi) if order is None else order[lo:hi]
                xb, yb = x[idx], y[idx]
                value, right = 0.0, 0  # a share may be empty (a short last batch over many processes)
                if len(xb) or ctx.sync_batchnorm:  # a synchronised batch norm waits for every rank's share
                    if augment is not None and len(xb):
                        xb = augment(xb)
                    out = self._forward(xb, training=True)
                    value = loss(out, yb)
                    right = loss.correct_count(out, yb)
                    self.backward(loss.backward(), input_grad=False)
                named, value, right = ctx.all_reduce(self.named_parameters(), value, right, len(xb), stop - start)
                if not math.isfinite(value):
                    for p, good in zip(params, last_good):
                        np.copyto(p, good)
                    raise TrainingDivergedError(
                        f"loss became {value} at step {start // batch_size + 1} (learning rate "
                        f"{optimizer.current_lr():g}); the model keeps the last weights with a finite loss. "
                        "Try a lower learning rate.", {})
                for p, good in zip(params, last_good):
                    np.copyto(good, p)
                optimizer.step(named)
                classifier = right is not None
                total_loss += value * (stop - start)
                correct += right if classifier else 0
                seen += stop - start
                bar.update(stop - start, lambda: _status(total_loss / seen, correct / seen if classifier else None))
        return total_loss / seen, (correct / seen if classifier else None)

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture and weights to one ``.npz`` file, atomically. See :func:`load_model`."""
        header = {"fastcnn_version": __version__, "dtype": self.dtype.name, "layers": self.get_config(),
                  "input_shape": None if self.input_shape is None else list(self.input_shape)}
        saving.write_archive(path, FORMAT, FORMAT_VERSION, header, self.state_dict())

    def export_onnx(self, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> None:
        """Write the model as an ONNX file (batch axis dynamic), atomically; needs ``fastcnn[onnx]``.
        See :func:`fastcnn.onnx_io.export_onnx` and :func:`load_onnx`."""
        onnx_io.export_onnx(self, path, input_shape)

    def __repr__(self) -> str:
        return "Sequential([\n" + "".join(f"    {layer!r},\n" for layer in self.layers) + "])"


def load_model(path: str | os.PathLike) -> Sequential:
    """Read a model written by :meth:`Sequential.save`.

    Nothing the file claims is allocated before it is checked: the file's structure and sizes
    (:func:`fastcnn.saving.read_archive`), then the layers, built from their configurations without
    initial values (:func:`fastcnn.layers.weights_follow`), against the shapes and dtypes of the arrays
    they will receive, and that they take one another's outputs from the input shape the file states;
    only then are the arrays read, checked (SHA-256, finite) and put in.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a fastcnn model, is damaged or hostile (the message says what is wrong), or
        comes from a newer format version.
    """
    where = os.fspath(path)
    built: list[Sequential] = []
    header, arrays = saving.read_archive(path, FORMAT, FORMAT_VERSION, check=lambda h: built.append(_rebuild(h, where)))
    bad = _untrusted.first_non_finite(arrays.items())
    if bad is not None:
        raise ValueError(f"{where}: array {bad!r} holds NaN or infinity; a trained model's weights are finite")
    model = built[0]
    model._load_state(arrays, copy=False)
    return model


def _rebuild(header: dict[str, Any], where: str) -> Sequential:
    """The model ``header`` describes, with placeholder weights, checked against the header's table of
    arrays (names, shapes, dtypes): what :func:`load_model` does before reading any array."""
    dtype, layers, input_shape = header.get("dtype", "float32"), header.get("layers"), header.get("input_shape")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{where}: the model's dtype is {dtype!r:.100}, not float32 or float64")
    if not (isinstance(layers, list) and all(isinstance(spec, dict) and isinstance(spec.get("config", {}), dict)
                                             for spec in layers)):
        raise ValueError(f"{where}: cannot rebuild the model: 'layers' is not a list of layer descriptions")
    if input_shape is not None and not (isinstance(input_shape, list) and len(input_shape) <= 8
                                        and all(type(s) is int and s > 0 for s in input_shape)):
        raise ValueError(f"{where}: cannot rebuild the model: input_shape {input_shape!r:.100} is not a list of positive ints")
    try:
        with weights_follow(dtype):
            model = Sequential.from_config(layers, input_shape=input_shape)
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise ValueError(f"{where}: cannot rebuild the model: {exc}") from None
    declared = header["arrays"]  # (read_archive checked its form)
    slots = model._state_slots()
    if set(slots) != set(declared):
        raise ValueError(f"{where}: the layers' configurations need arrays {sorted(slots)} but the file holds "
                         f"{sorted(declared)}")
    for name, (layer, store, k) in slots.items():
        want, got = (store[k].shape, store[k].dtype.name), (tuple(declared[name]["shape"]), declared[name]["dtype"])
        if want != got:
            raise ValueError(f"{where}: layer {name.split('.')[0]} ({layer.describe()}) needs {name} of shape {want[0]} "
                             f"{want[1]}, but the file holds {got[1]} {got[0]}")
    if input_shape is not None:  # the layers must take the input the file says they were built for
        try:
            model.output_shapes()
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"{where}: cannot rebuild the model: {exc}") from None
    return model


def _layout_hint(shape: tuple[int, ...], expected: tuple[int, ...] | None) -> str:
    """The fix for the two common layout mistakes, one image without its batch axis and NHWC images."""
    if not expected or len(shape) < 2:
        return ""
    want = "(N, " + ", ".join(map(str, expected)) + ")" if len(expected) > 1 else f"(N, {expected[0]}, H, W)"
    if len(shape) == 4 and shape[-1] == expected[0] and shape[1] != expected[0]:
        return f". x looks like channels-last (NHWC) images; fastcnn takes NCHW {want}: use x.transpose(0, 3, 1, 2)"
    if len(shape) == 3 and len(expected) in (1, 3):
        if shape[0] == expected[0] and (len(expected) == 1 or shape == expected):
            fix = "for one image use x[None]" + ("; for a batch of gray images (N, H, W) use x[:, None]" if expected[0] == 1 else "")
        elif expected[0] == 1:
            fix = "for a batch of gray images (N, H, W) use x[:, None]"
        else:
            return ""
        return f". The model takes a batch {want}; {fix}"
    return ""


def _split_validation(x: np.ndarray, y, fraction: float, validation_data) -> tuple:
    """``fit``'s ``validation_split``: the last ``fraction`` of the samples become the validation data."""
    if validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"validation_split must be a fraction in (0, 1), got {fraction!r}")
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)} (shape {y.shape})")
    split = int(len(x) * (1 - fraction))
    if split < 1 or split == len(x):
        raise ValueError(f"validation_split={fraction} leaves {split} of {len(x)} samples to train on and "
                         f"{len(x) - split} to validate; both need at least one")
    return x[:split], y[:split], (x[split:], y[split:])


def _status(loss: float, acc: float | None) -> str:
    return f"loss {loss:.4f}" + ("" if acc is None else f" acc {acc:.4f}")


def load_onnx(path: str | os.PathLike) -> Sequential:
    """A model from an ONNX file: the layers :func:`fastcnn.onnx_io.read_onnx` reads (see it for what
    is supported and refused), in a :class:`Sequential` with the file's input shape.

    Raises
    ------
    ValueError
        The file is not ONNX, is damaged or oversized, or holds a graph fastcnn cannot represent (the
        message names the first node that cannot be read and its op type).
    ImportError
        The ``onnx`` package is not installed.
    """
    layers, input_shape = onnx_io.read_onnx(path)
    return Sequential(layers, input_shape=input_shape)
