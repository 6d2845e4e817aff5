"""The pictures of a training run (needs matplotlib: ``pip install 'fastcnn[plot]'``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastcnn[plot]'") from None
    return plt


def save_all(out_dir, history: dict, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> list[Path]:
    """Write training curves, a grid of test digits and a confusion matrix as PNGs; return their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[key], "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s--", label="test")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "training_curves.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(6, 8, figsize=(8, 6.8))
    for ax, img, true, pred in zip(axes.ravel(), images, labels, predicted):
        ax.imshow(img.reshape(28, 28), cmap="gray")
        ax.set_title(f"{pred} (true {true})", fontsize=8, color="red" if pred != true else "black")
        ax.axis("off")
    fig.suptitle("test digits: predicted (true); mistakes in red")
    fig.tight_layout()
    paths.append(out_dir / "test_digits.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels.astype(int), predicted.astype(int)), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title("confusion matrix (test set)")
    fig.tight_layout()
    paths.append(out_dir / "confusion_matrix.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
