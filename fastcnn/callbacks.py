"""Callbacks: code that :meth:`fastcnn.Sequential.fit` runs at the start, after every epoch and at the end.

The interface is three methods, each optional (the base class's do nothing):

``on_train_begin(model)``
    Before the first epoch.
``on_epoch_end(model, epoch, logs) -> bool | None``
    After each epoch; ``epoch`` counts from 0 and ``logs`` holds that epoch's ``loss`` and
    ``accuracy`` and, with validation data, ``val_loss`` and ``val_accuracy`` (the last values of
    the history ``fit`` returns). Return True to stop training after this epoch.
``on_train_end(model, history)``
    After the last epoch, whether training ran out of epochs or a callback stopped it.

>>> model.fit(x, y, epochs=50, validation_split=0.1,
...           callbacks=[EarlyStopping(patience=3, restore_best_weights=True),
...                      ModelCheckpoint("best.npz", save_best_only=True)])
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "CallbackList"]


class Callback:
    """Base class: override any of the three hooks (see the module's documentation)."""

    def on_train_begin(self, model) -> None:
        """Before the first epoch."""

    def on_epoch_end(self, model, epoch: int, logs: dict[str, float]) -> bool | None:
        """After epoch ``epoch`` (from 0); return True to stop training."""
        return None

    def on_train_end(self, model, history: dict[str, list[float]]) -> None:
        """After the last epoch."""


class _Monitor(Callback):
    """Follows one value of the logs and knows whether a new value improves on the best so far."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.min_delta = monitor, float(min_delta)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, model) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def _value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            hint = " (val_* values need validation_data or validation_split)" if self.monitor.startswith("val_") else ""
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which fit does not report{hint}; "
                             f"it reports {', '.join(sorted(logs))}")
        return float(logs[self.monitor])

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A key of the logs: ``"val_loss"`` (default), ``"val_accuracy"``, ``"loss"``, ``"accuracy"``.
    patience : int
        Epochs without improvement to wait before stopping.
    min_delta : float
        A change smaller than this is no improvement.
    mode : {"auto", "min", "max"}
        Whether lower or higher is better; ``"auto"``: higher for accuracies, lower otherwise.
    restore_best_weights : bool
        When training ends, put back the weights of the best epoch.

    Attributes
    ----------
    stopped_epoch : int or None
        The epoch (from 0) after which it stopped training, None if it did not.
    best_epoch : int or None
        The epoch (from 0) with the best value.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        self.patience, self.restore_best_weights = patience, bool(restore_best_weights)
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self._wait = 0
        self._best_state: dict[str, Any] | None = None

    def on_train_begin(self, model) -> None:
        super().on_train_begin(model)
        self.stopped_epoch = self.best_epoch = self._best_state = None
        self._wait = 0

    def on_epoch_end(self, model, epoch, logs):
        value = self._value(logs)
        if self._improves(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = model.state_dict()
            return False
        self._wait += 1
        if self._wait > self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model, history):
        if self.restore_best_weights and self._best_state is not None:
            model.load_state_dict(self._best_state)


class ModelCheckpoint(_Monitor):
    """Save the model after every epoch, or only when ``monitor`` improves.

    Parameters
    ----------
    path : path-like
        Where to save (see :meth:`fastcnn.Sequential.save`); may hold ``{epoch}`` (from 1) and any log
        key, e.g. ``"model-{epoch:02d}-{val_loss:.3f}.npz"``. Written atomically.
    monitor : str
        The value ``save_best_only`` compares (default ``"val_loss"``).
    save_best_only : bool
        Save only when ``monitor`` is the best so far.
    mode : {"auto", "min", "max"}
        As for :class:`EarlyStopping`.

    Attributes
    ----------
    saved : list of str
        The paths written, in order.

    In data-parallel training (``fit(distributed=True)``) only rank 0 runs callbacks that write files
    (``writes_files = True``); the others run the rest, on the same global logs.
    """

    writes_files = True

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto") -> None:
        super().__init__(monitor, mode)
        self.path, self.save_best_only = os.fspath(path), bool(save_best_only)
        self.saved: list[str] = []

    def on_train_begin(self, model) -> None:
        super().on_train_begin(model)
        self.saved = []

    def on_epoch_end(self, model, epoch, logs):
        if self.save_best_only:
            value = self._value(logs)
            if not self._improves(value):
                return False
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        model.save(path)
        self.saved.append(path)
        return False


class CallbackList:
    """What ``fit`` holds: its callbacks, checked once, with one call per hook for all of them."""

    def __init__(self, callbacks: Iterable[Callback] | None) -> None:
        if isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks = list(callbacks or ())
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fastcnn.callbacks.Callback objects "
                                f"(EarlyStopping, ModelCheckpoint, ...), got {type(cb).__name__}")

    def train_begin(self, model) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(model)

    def epoch_end(self, model, epoch: int, history: dict[str, list[float]]) -> bool:
        """Run every callback's ``on_epoch_end`` (all of them, even after one asks to stop); True to stop."""
        logs = {key: values[-1] for key, values in history.items()}
        return any([bool(cb.on_epoch_end(model, epoch, dict(logs))) for cb in self.callbacks])

    def train_end(self, model, history: dict[str, list[float]]) -> None:
        for cb in self.callbacks:
            cb.on_train_end(model, history)
