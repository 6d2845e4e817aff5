"""Losses. Call ``loss(pred, target)`` for the mean loss, then ``loss.backward()`` for d(loss)/d(pred)."""
from __future__ import annotations

import numpy as np

from . import functional as F
from ._checks import class_labels

__all__ = ["Loss", "CrossEntropyLoss", "MSELoss", "BCELoss", "accuracy", "LOSSES", "get_loss"]


class Loss:
    """Base class: ``forward`` returns the mean loss as a float and caches what ``backward`` needs."""

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self.forward(pred, target)

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        raise NotImplementedError

    def correct_count(self, pred: np.ndarray, target: np.ndarray) -> int | None:
        """Right predictions among the rows of the last ``forward(pred, target)``; None if not a classifier."""
        acc = accuracy(pred, target)
        return None if acc is None else round(acc * len(pred))

    def check_targets(self, target: np.ndarray, pred_shape: tuple[int, ...]) -> np.ndarray:
        """Validate ``target`` against predictions of shape ``pred_shape``; return it as an array."""
        target = np.asarray(target)
        if target.shape[:1] != pred_shape[:1]:
            raise ValueError(f"target has {target.shape[0] if target.ndim else 0} samples (shape {target.shape}) "
                             f"but the predictions have {pred_shape[0]} (shape {pred_shape})")
        return target


class CrossEntropyLoss(Loss):
    """Softmax fused with cross-entropy, on logits ``(N, K)``; exact for logits of any size.

    ``target`` is either integer class labels ``(N,)`` (or ``(N, 1)``, as a column) in ``[0, K)`` or
    one-hot / probability rows ``(N, K)``.
    """

    def check_targets(self, target, pred_shape):
        target = _label_column(super().check_targets(target, pred_shape))
        if len(pred_shape) != 2:
            raise ValueError(f"CrossEntropyLoss expects logits of shape (N, K), got {pred_shape}")
        if target.ndim == 1:
            return class_labels("labels", target, pred_shape[0], pred_shape[1])
        if target.ndim == 2 and target.shape[1] == 1 and pred_shape[1] != 1:
            raise ValueError(f"targets of shape {target.shape} hold one {target.dtype} per sample: class labels must be "
                             f"integers (y.ravel().astype(int)); one-hot targets have shape {tuple(pred_shape)}")
        if target.shape != tuple(pred_shape) or target.dtype.kind != "f":
            raise ValueError(f"one-hot targets must be a float array of shape {tuple(pred_shape)}, got {target.dtype} {target.shape}")
        return target

    def forward(self, pred, target):
        target = _label_column(np.asarray(target))
        if target.ndim == 1:  # class labels: one fused pass, which checks them
            value, self._grad, self._correct = F.softmax_cross_entropy(pred, target)
            return value
        target = self.check_targets(target, pred.shape)
        self._correct = None
        value, self._grad = F.soft_cross_entropy(pred, target)
        return value

    def backward(self):
        return self._grad

    def correct_count(self, pred, target):
        return super().correct_count(pred, target) if self._correct is None else self._correct


def _label_column(target: np.ndarray) -> np.ndarray:
    """Integer labels given as a column ``(N, 1)`` (as Keras and pandas users hold them) as ``(N,)``."""
    return target[:, 0] if target.ndim == 2 and target.shape[1] == 1 and target.dtype.kind in "iu" else target


class MSELoss(Loss):
    """Mean squared error over every element."""

    def forward(self, pred, target):
        target = self.check_targets(target, pred.shape).reshape(pred.shape)
        value, self._grad = F.mse_loss(pred, target)
        return value

    def backward(self):
        return self._grad


class BCELoss(Loss):
    """Binary cross-entropy on probabilities (sigmoid outputs), clipped to ``[eps, 1 - eps]``."""

    def __init__(self, eps: float = 1e-7) -> None:
        self.eps = eps

    def forward(self, pred, target):
        target = self.check_targets(target, pred.shape).reshape(pred.shape)
        value, self._grad = F.binary_cross_entropy(pred, target, self.eps)
        return value

    def backward(self):
        return self._grad


def accuracy(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Fraction of rows whose arg-max matches the label (or one-hot arg-max); ``None`` if not a classifier."""
    target = np.asarray(target)
    if pred.ndim != 2 or pred.shape[1] < 2:
        return None
    labels = target.argmax(axis=1) if target.ndim == 2 else target
    return float((pred.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


#: The losses ``fit(loss=...)`` knows by name; Keras's names are accepted too.
LOSSES = {
    "cross_entropy": CrossEntropyLoss, "mse": MSELoss, "bce": BCELoss,
    "sparse_categorical_crossentropy": CrossEntropyLoss, "categorical_crossentropy": CrossEntropyLoss,
    "mean_squared_error": MSELoss, "binary_crossentropy": BCELoss,
}


def get_loss(loss: "Loss | str | None") -> Loss:
    """A loss from an instance, a name in :data:`LOSSES` (``"cross_entropy"``, ``"mse"``, ``"bce"``, or
    Keras's names) or None (:class:`CrossEntropyLoss`), as ``fit`` accepts it.

    Raises
    ------
    ValueError
        An unknown name; the message lists the known ones.
    TypeError
        Neither a Loss nor a string.
    """
    if loss is None:
        return CrossEntropyLoss()
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        make = LOSSES.get(loss.lower())
        if make is None:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(map(repr, LOSSES))} "
                             "or pass an instance, e.g. fastcnn.MSELoss()")
        return make()
    raise TypeError(f"loss must be a fastcnn loss (fastcnn.CrossEntropyLoss(), fastcnn.MSELoss(), ...) or its name, "
                    f"got {type(loss).__name__}")
