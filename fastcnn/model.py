"""``Sequential``: a stack of layers with fit / evaluate / predict, summaries, state dicts and files."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from . import dispatch, saving
from ._checks import positive_int
from .kernels import blas
from .layers import LAYER_TYPES, Conv2D, Dropout, Layer, MaxPool2D, ReLU, _ConvMaxPool
from .losses import CrossEntropyLoss, Loss, accuracy
from .optim import Adam, Optimizer
from .progress import ProgressBar

__all__ = ["Sequential", "TrainingDivergedError", "load_model"]

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
        self.loss: Loss | None = None
        self.recipe = None

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
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(r[c].ljust(widths[c]) if c < 3 else r[c].rjust(widths[c]) for c in range(4)) for r in rows]
        rule = "-" * len(lines[0])
        total = sum(layer.num_params for layer in self.layers)
        return "\n".join([lines[0], rule, *lines[1:], rule, f"total parameters: {total:,} ({self.dtype.name})"])

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays from ``state`` (names and shapes as :meth:`state_dict`; PyTorch tensors work too)."""
        expected = {f"{i}.{k}": (layer, store, k) for i, layer in enumerate(self.layers)
                    for store in (layer.params, layer.buffers) for k in store}
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
            arrays[name] = value.astype(store[k].dtype)
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
            except (TypeError, KeyError) as exc:
                raise ValueError(f"cannot rebuild layer {spec!r}: {exc}") from None
        return cls(layers, input_shape=input_shape)

    # ---------------------------------------------------------------- computing
    def _prepare_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "f":
            raise TypeError(f"x must be floating point (float32 images in [0, 1] for the MNIST models), got dtype "
                            f"{x.dtype}; for uint8 images use x.astype(np.float32) / 255")
        x = x.astype(self.dtype, copy=False)
        shape = x.shape[1:]
        if shape not in self._checked_shapes:
            self.output_shapes(shape)
            self._checked_shapes.add(shape)
        return x

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Run every layer on the batch ``x``; with ``training=True`` layers keep what backward needs."""
        x = self._prepare_input(x)
        for layer in self._run_order():
            x = layer.forward(x, training)
        return x

    def _run_order(self) -> list[Layer]:
        """The steps forward runs, made again whenever the layers or their backends change:

        - the layers as added, except that a ReLU directly followed by a MaxPool2D runs after it. ReLU
          is monotone, so it commutes with a maximum: the outputs and every gradient are the same, bit
          for bit, and the ReLU works on the pooled, smaller tensor;
        - then a Conv2D directly followed by a MaxPool2D (with the same ``backend``), and by the ReLU
          after that if there is one, runs as one step, :func:`fastcnn.functional.conv2d_max_pool2d`,
          which need not write the full-size conv output.
        """
        key = tuple((id(layer), getattr(layer, "backend", None)) for layer in self.layers)
        if self._plan[0] == key:
            return self._plan[1]
        order = list(self.layers)
        for i in range(len(order) - 1):
            if type(order[i]) is ReLU and type(order[i + 1]) is MaxPool2D:
                order[i], order[i + 1] = order[i + 1], order[i]
        steps: list[Layer] = []
        for layer in order:
            last = steps[-1] if steps else None
            if type(layer) is MaxPool2D and type(last) is Conv2D and last.fuses_pool and last.backend == layer.backend:
                steps[-1] = _ConvMaxPool(last, layer)
            elif type(layer) is ReLU and type(last) is _ConvMaxPool and last.relu is None:
                steps[-1] = _ConvMaxPool(last.conv, last.pool, layer)
            else:
                steps.append(layer)
        self._plan = (key, steps)
        return steps

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
        first = 0 if input_grad else self._first_trained_step()
        for layer in reversed(layers[first + 1 :]):
            grad = layer.backward(grad)
        if not input_grad:
            if first < len(layers):
                layers[first].backward_params(grad)
            return None
        return layers[0].backward(grad) if layers else grad

    def _first_trained_step(self) -> int:
        """Where in :meth:`_run_order` the first step with parameters is (its length if none has any):
        training back-propagates no further than it."""
        return next((i for i, step in enumerate(self._run_order()) if step.params), len(self._run_order()))

    def predict(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The model's outputs (class scores / logits for classifiers) for ``x``, computed in batches."""
        x = self._prepare_input(x)
        positive_int("batch_size", batch_size)
        if len(x) == 0:
            raise ValueError("x is empty: predict needs at least one sample")
        return np.concatenate([self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

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
        optimizer: Optimizer | None = None,
        loss: Loss | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        verbose: int = 1,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> dict[str, list[float]]:
        """Train on ``(x, y)`` with mini-batches.

        Parameters
        ----------
        x : ndarray, shape (N, ...)
            Float inputs.
        y : ndarray
            Targets: integer labels ``(N,)`` or one-hot rows for :class:`CrossEntropyLoss`, values for MSE.
        epochs, batch_size : int
        optimizer : Optimizer, optional
            Defaults to ``Adam(1e-3)``.
        loss : Loss, optional
            Defaults to :class:`CrossEntropyLoss`.
        validation_data : (x_val, y_val), optional
            Evaluated after every epoch.
        shuffle : bool
        seed : int, optional
            Seeds the shuffling and the dropout masks, so a run can be repeated exactly.
        verbose : int
            1 shows a progress bar per epoch; 0 is silent.
        augment : callable, optional
            Applied to every training batch before the forward pass (e.g.
            :class:`fastcnn.augment.RandomShiftRotate`); returns a batch of the same shape.

        Returns
        -------
        dict
            ``loss`` and ``accuracy`` per epoch, and ``val_loss``/``val_accuracy`` with validation data.

        Raises
        ------
        TrainingDivergedError
            When the loss stops being finite; the model keeps the last weights that gave a finite loss.
        """
        x = self._prepare_input(x)
        positive_int("batch_size", batch_size)
        positive_int("epochs", epochs)
        if len(x) == 0:
            raise ValueError("x is empty: fit needs at least one sample")
        optimizer = optimizer or Adam(1e-3)
        self.loss = loss = loss or CrossEntropyLoss()
        y = loss.check_targets(y, (len(x),) + self.output_shapes(x.shape[1:])[-1])
        for name, values in (("x", x), ("y", y)):
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                bad = np.unravel_index(np.flatnonzero(~np.isfinite(values))[0], values.shape)
                raise ValueError(f"{name} holds NaN or infinity (first at index {tuple(int(i) for i in bad)}); "
                                 "fit needs finite inputs and targets")
        rng = np.random.default_rng(seed)
        if seed is not None:
            for i, layer in enumerate(self.layers):
                if isinstance(layer, Dropout):
                    layer.rng = np.random.default_rng([seed, i])
        n = len(x)
        if optimizer.total_steps is None:
            optimizer.total_steps = epochs * math.ceil(n / batch_size)
        history: dict[str, list[float]] = {"loss": [], "accuracy": []}
        with dispatch.use_backend(dispatch.get_backend()), blas.held():  # settled once, not per op
            for epoch in range(epochs):
                order = rng.permutation(n) if shuffle and batch_size < n else None  # full batch: order is moot
                bar = ProgressBar(n, f"epoch {epoch + 1}/{epochs}", enabled=verbose > 0)
                try:
                    mean_loss, acc = self._train_epoch(x, y, order, batch_size, optimizer, loss, bar, augment)
                except TrainingDivergedError as exc:
                    bar.close("diverged")
                    exc.args = (f"epoch {epoch + 1}: {exc.args[0]}",)
                    exc.history = history
                    raise
                history["loss"].append(mean_loss)
                history["accuracy"].append(float("nan") if acc is None else acc)
                status = _status(mean_loss, acc)
                if validation_data is not None:
                    val_loss, val_acc = self.evaluate(*validation_data, loss=loss)
                    history.setdefault("val_loss", []).append(val_loss)
                    history.setdefault("val_accuracy", []).append(float("nan") if val_acc is None else val_acc)
                    status += f" - val_loss {val_loss:.4f}" + ("" if val_acc is None else f" val_acc {val_acc:.4f}")
                bar.close(status)
        return history

    def _train_epoch(self, x, y, order, batch_size, optimizer, loss, bar, augment=None) -> tuple[float, float | None]:
        """One pass over ``x`` in ``order`` (None: as stored); returns the mean loss and accuracy.

        Before each update the weights are copied; if a loss is not finite they are put back and
        :class:`TrainingDivergedError` is raised.
        """
        params = [p for _, p, _ in self.named_parameters()]
        last_good = [p.copy() for p in params]
        total_loss, correct, seen = 0.0, 0, 0
        classifier = True
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught below, with a clear error
            for start in range(0, len(x), batch_size):
                idx = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = augment(xb)
                out = self.forward(xb, training=True)
                value = loss(out, yb)
                if not math.isfinite(value):
                    for p, good in zip(params, last_good):
                        np.copyto(p, good)
                    raise TrainingDivergedError(
                        f"loss became {value} at step {start // batch_size + 1} (learning rate "
                        f"{optimizer.current_lr():g}); the model keeps the last weights with a finite loss. "
                        "Try a lower learning rate.", {})
                for p, good in zip(params, last_good):
                    np.copyto(good, p)
                self.backward(loss.backward(), input_grad=False)
                optimizer.step(self.named_parameters())
                right = loss._correct_count(out, yb)
                classifier = right is not None
                total_loss += value * len(xb)
                correct += right if classifier else 0
                seen += len(xb)
                bar.update(len(xb), lambda: _status(total_loss / seen, correct / seen if classifier else None))
        return total_loss / seen, (correct / seen if classifier else None)

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture and weights to one ``.npz`` file, atomically. See :func:`load_model`."""
        from . import __version__

        header = {"fastcnn_version": __version__, "dtype": self.dtype.name, "layers": self.get_config(),
                  "input_shape": None if self.input_shape is None else list(self.input_shape)}
        saving.write_archive(path, FORMAT, FORMAT_VERSION, header, self.state_dict())

    def __repr__(self) -> str:
        return "Sequential([\n" + "".join(f"    {layer!r},\n" for layer in self.layers) + "])"


def load_model(path: str | os.PathLike) -> Sequential:
    """Read a model written by :meth:`Sequential.save`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a fastcnn model, is damaged, or comes from a newer format version.
    """
    header, arrays = saving.read_archive(path, FORMAT, FORMAT_VERSION)
    try:
        model = Sequential.from_config(header["layers"], input_shape=header.get("input_shape"))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)}: cannot rebuild the model: {exc}") from None
    model.astype(header.get("dtype", "float32"))
    model.load_state_dict(arrays)
    return model


def _status(loss: float, acc: float | None) -> str:
    return f"loss {loss:.4f}" + ("" if acc is None else f" acc {acc:.4f}")
