"""The pictures of a training run (needs matplotlib: ``pip install 'fastcnn[plot]'``).

:func:`save_all` writes three PNGs: the training curves, a grid of test digits (mistakes first, in
red) and the confusion matrix of the whole test set, in counts and with each true class's row
normalised to 1. Each picture also has its own function.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _files

__all__ = ["pyplot", "confusion_matrix", "plot_training_curves", "plot_confusion_matrix", "plot_digits", "save_all"]


def pyplot():
    """matplotlib's ``pyplot`` on the file-only Agg backend, or an ImportError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastcnn[plot]'") from None
    return plt


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int | None = None) -> np.ndarray:
    """Counts ``(classes, classes)``: row = true class, column = predicted class."""
    labels, predicted = np.asarray(labels).astype(np.intp), np.asarray(predicted).astype(np.intp)
    if labels.shape != predicted.shape or labels.ndim != 1:
        raise ValueError(f"labels and predicted must be two 1-D arrays of one length, got {labels.shape} and {predicted.shape}")
    classes = classes or int(max(labels.max(initial=-1), predicted.max(initial=-1)) + 1)
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def _epoch_axis(ax, epochs: int) -> None:
    """Integer epoch ticks, at most about ten of them, with a margin so one epoch is not a lone dot on
    an edge."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=1))
    ax.set_xlim(0.5, epochs + 0.5)
    ax.set_xlabel("epoch")


def plot_training_curves(history: dict, path) -> Path:
    """Loss and accuracy per epoch (training, and validation when ``history`` has it) as one PNG."""
    plt = pyplot()
    epochs = np.arange(1, len(history["loss"]) + 1)
    marker = "o" if len(epochs) <= 30 else None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[key], marker=marker, linestyle="-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="s" if marker else None, linestyle="--", label="test")
        _epoch_axis(ax, len(epochs))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray, path, title: str = "test set") -> Path:
    """The confusion matrix of ``labels`` and ``predicted`` (all of them) as two panels: counts, and
    each row as percentages of its true class's count."""
    plt = pyplot()
    matrix = confusion_matrix(labels, predicted)
    percent = 100 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    errors = int(matrix.sum() - np.trace(matrix))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, values, text, name in ((axes[0], matrix, lambda v: str(v), "counts"),
                                   (axes[1], percent, lambda v: f"{v:.1f}" if v else "", "% of each true class (row)")):
        ax.imshow(values, cmap="Blues")
        top = values.max()
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, text(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(len(values)))
        ax.set_yticks(range(len(values)))
        ax.set_title(name)
    fig.suptitle(f"confusion matrix, {title}: {len(labels):,} images, {errors:,} wrong")
    return _save(fig, path)


def plot_digits(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, path, mistakes: int = 16,
                count: int = 48) -> Path:
    """A grid of ``count`` digits with predicted and true labels: up to ``mistakes`` wrong ones first (in
    red), then right ones."""
    plt = pyplot()
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    order = np.concatenate([np.flatnonzero(predicted != labels)[:mistakes], np.flatnonzero(predicted == labels)])[:count]
    fig, axes = plt.subplots(6, 8, figsize=(8, 6.8))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.imshow(np.asarray(images[i]).reshape(28, 28), cmap="gray")
        wrong = predicted[i] != labels[i]
        ax.set_title(f"{predicted[i]} (true {labels[i]})", fontsize=8, color="red" if wrong else "black")
    fig.suptitle("test digits: predicted (true); mistakes in red")
    return _save(fig, path)


def _save(fig, path) -> Path:
    plt = pyplot()
    fig.tight_layout()
    try:
        with _files.atomic_write(path) as fh:
            fig.savefig(fh, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def save_all(out_dir, history: dict, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> list[Path]:
    """Write ``training_curves.png``, ``test_digits.png`` and ``confusion_matrix.png`` into ``out_dir``
    (made if missing; its parent must exist) and return their paths.

    ``images``, ``labels`` and ``predicted`` are the whole test set: the confusion matrix counts all of it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(exist_ok=True)
    return [plot_training_curves(history, out_dir / "training_curves.png"),
            plot_digits(images, labels, predicted, out_dir / "test_digits.png"),
            plot_confusion_matrix(labels, predicted, out_dir / "confusion_matrix.png")]
