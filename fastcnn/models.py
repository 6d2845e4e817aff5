"""The tutorial networks as presets, each with the training recipe it is known by.

``fastcnn.models.NAME(seed=None)`` returns an untrained :class:`~fastcnn.model.Sequential` whose
``recipe`` attribute (a :class:`Recipe`) holds the optimizer, learning rate, batch size and epochs, so
``model.fit(x, y, **model.recipe.fit_kwargs())`` reproduces the tutorial's training. Every model takes
float32 images in [0, 1] shaped ``(N, 1, 28, 28)``, except ``toy_conv`` (``(4, 1, 3, 3)``, see
:func:`toy_data`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from .augment import RandomShiftRotate
from .blocks import Residual
from .init import get_rng
from .layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Sigmoid,
                     Tanh)
from .losses import CrossEntropyLoss, Loss, MSELoss
from .model import Sequential
from .optim import SGD, Adam, CosineLR, OneCycleLR, Optimizer

__all__ = ["Recipe", "PRESETS", "mlp", "tiny_cnn", "toy_conv", "keras_cnn", "lenet", "pytorch_example", "resnet",
           "toy_data"]

_SCHEDULES = {None: lambda: None, "onecycle": OneCycleLR, "cosine": CosineLR}


@dataclass(frozen=True)
class Recipe:
    """How a preset is trained.

    Attributes
    ----------
    optimizer : {"sgd", "adam"}
    lr : float
    batch_size : int
    epochs : int
    loss : {"cross_entropy", "mse"}
    momentum, decay : float
        SGD momentum and time-based decay.
    schedule : {None, "onecycle", "cosine"}
    train_limit : int, optional
        Train on the first ``train_limit`` images only, as the tutorial did.
    augment : (max_shift, max_degrees), optional
        Train on randomly shifted and rotated images (:class:`fastcnn.augment.RandomShiftRotate`).
    """

    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    loss: str = "cross_entropy"
    momentum: float = 0.0
    decay: float = 0.0
    schedule: str | None = None
    train_limit: int | None = None
    augment: tuple[float, float] | None = None

    def with_overrides(self, **changes: Any) -> "Recipe":
        """A copy with the non-None ``changes`` applied (e.g. from command-line flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def make_optimizer(self) -> Optimizer:
        schedule = _SCHEDULES[self.schedule]()
        if self.optimizer == "sgd":
            return SGD(self.lr, momentum=self.momentum, decay=self.decay, schedule=schedule)
        if self.optimizer == "adam":
            return Adam(self.lr, schedule=schedule)
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")

    def make_loss(self) -> Loss:
        return {"cross_entropy": CrossEntropyLoss, "mse": MSELoss}[self.loss]()

    def fit_kwargs(self, seed: int | None = 0) -> dict[str, Any]:
        """Arguments for :meth:`Sequential.fit`: optimizer, loss, epochs, batch size and any augmentation
        (seeded with ``seed``)."""
        kwargs = dict(optimizer=self.make_optimizer(), loss=self.make_loss(), epochs=self.epochs, batch_size=self.batch_size)
        if self.augment is not None:
            kwargs["augment"] = RandomShiftRotate(*self.augment, seed=seed)
        return kwargs


def _preset(layers: Callable[[np.random.Generator], list], input_shape, recipe: Recipe, seed) -> Sequential:
    model = Sequential(layers(get_rng(seed)), input_shape=input_shape)
    model.recipe = recipe
    return model


MNIST_SHAPE = (1, 28, 28)


def mlp(seed: int | None = None) -> Sequential:
    """784-10-10 with ReLU (softmax fused into the loss), full-batch gradient descent, lr 0.1, 500 steps."""
    return _preset(lambda r: [Flatten(), Dense(784, 10, rng=r), ReLU(), Dense(10, 10, rng=r)], MNIST_SHAPE,
                   Recipe("sgd", 0.1, batch_size=60000, epochs=500), seed)


def tiny_cnn(seed: int | None = None) -> Sequential:
    """conv(1 filter, 3x3)-ReLU-maxpool 2x2-flatten-fc64-ReLU-fc10; SGD lr 0.01 with decay 1e-6,
    2000 steps at batch 2 (one pass over the first 4000 images)."""
    return _preset(lambda r: [Conv2D(1, 1, 3, rng=r), ReLU(), MaxPool2D(2), Flatten(), Dense(169, 64, rng=r), ReLU(),
                              Dense(64, 10, rng=r)], MNIST_SHAPE,
                   Recipe("sgd", 0.01, batch_size=2, epochs=1, decay=1e-6, train_limit=4000), seed)


def toy_conv(seed: int | None = None) -> Sequential:
    """The 3x3-image toy: a 2x2 conv kernel, tanh, a dense layer to one sigmoid output; MSE, per-sample SGD
    lr 0.7 for 1000 epochs on :func:`toy_data`."""
    return _preset(lambda r: [Conv2D(1, 1, 2, bias=False, init="glorot", rng=r), Tanh(), Flatten(),
                              Dense(4, 1, bias=False, init="glorot", rng=r), Sigmoid()], (1, 3, 3),
                   Recipe("sgd", 0.7, batch_size=1, epochs=1000, loss="mse"), seed)


def toy_data() -> tuple[np.ndarray, np.ndarray]:
    """The toy tutorial's four 3x3 images ``(4, 1, 3, 3)`` and targets ``(4, 1)``.

    The last target, 1.1, is beyond a sigmoid's reach, as in the tutorial: the cost falls but not to 0.
    """
    x = np.array([
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[1, 1, 1], [0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [1, 1, 1], [1, 1, 1]],
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
    ], dtype=np.float32)[:, None]
    y = np.array([[0.53], [0.77], [0.88], [1.1]], dtype=np.float32)
    return x, y


def keras_cnn(seed: int | None = None) -> Sequential:
    """Conv(1,32,3)-ReLU-MaxPool2-Dropout(0.25)-Flatten-Dense(5408,128)-ReLU-Dropout(0.5)-Dense(128,10), Adam."""
    return _preset(lambda r: [Conv2D(1, 32, 3, rng=r), ReLU(), MaxPool2D(2), Dropout(0.25, rng=r), Flatten(),
                              Dense(32 * 13 * 13, 128, rng=r), ReLU(), Dropout(0.5, rng=r), Dense(128, 10, rng=r)],
                   MNIST_SHAPE, Recipe("adam", 1e-3, batch_size=128, epochs=2), seed)


def lenet(seed: int | None = None) -> Sequential:
    """LeNet-style Conv(1,8,3)-ReLU-MaxPool2-Conv(8,16,3)-ReLU-MaxPool2-Dense(400,128)-ReLU-Dense(128,10):
    the default of ``fastcnn train``; Adam with a one-cycle schedule."""
    return _preset(lambda r: [Conv2D(1, 8, 3, rng=r), ReLU(), MaxPool2D(2), Conv2D(8, 16, 3, rng=r), ReLU(), MaxPool2D(2),
                              Flatten(), Dense(400, 128, rng=r), ReLU(), Dense(128, 10, rng=r)], MNIST_SHAPE,
                   Recipe("adam", 1e-2, batch_size=128, epochs=4, schedule="onecycle"), seed)


def pytorch_example(seed: int | None = None) -> Sequential:
    """The network of PyTorch's MNIST example: Conv(1,32,3)-ReLU-Conv(32,64,3)-ReLU-MaxPool2-Dropout(0.25)-
    Flatten-Dense(9216,128)-ReLU-Dropout(0.5)-Dense(128,10). (PyTorch trains it with Adadelta; here Adam.)"""
    return _preset(lambda r: [Conv2D(1, 32, 3, rng=r), ReLU(), Conv2D(32, 64, 3, rng=r), ReLU(), MaxPool2D(2),
                              Dropout(0.25, rng=r), Flatten(), Dense(9216, 128, rng=r), ReLU(), Dropout(0.5, rng=r),
                              Dense(128, 10, rng=r)], MNIST_SHAPE, Recipe("adam", 1e-3, batch_size=64, epochs=1), seed)


def _basic_block(channels: int, rng) -> list:
    """A ResNet basic block at constant width and the ReLU after it: ReLU(x + BN(conv(ReLU(BN(conv(x))))))."""
    body = [Conv2D(channels, channels, 3, padding=1, bias=False, rng=rng), BatchNorm2D(channels), ReLU(),
            Conv2D(channels, channels, 3, padding=1, bias=False, rng=rng), BatchNorm2D(channels)]
    return [Residual(body), ReLU()]


def _stage(c_in: int, c_out: int, rng, pool_first: bool = False) -> list:
    """A widening conv and a 2x2 max-pool (the conv first, fused with the pool, unless ``pool_first``),
    batch norm and ReLU, then a basic block."""
    conv = Conv2D(c_in, c_out, 3, padding=1, bias=False, rng=rng)
    return [*([MaxPool2D(2), conv] if pool_first else [conv, MaxPool2D(2)]), BatchNorm2D(c_out), ReLU(),
            *_basic_block(c_out, rng)]


def resnet(seed: int | None = None) -> Sequential:
    """A small ResNet: three stages (16 channels at 14x14, 32 at 7x7, 64 at 3x3), each a 3x3 conv and a 2x2
    max-pool (the conv first and fused with the pool in the first two, the pool first in the third) with
    batch norm and ReLU, then a residual basic block; global average pooling and Dense(64, 10). Adam
    6e-3 with a one-cycle schedule, batch 256, 7 epochs, on images randomly shifted by up to 2 pixels and
    rotated by up to 10 degrees."""
    return _preset(lambda r: [*_stage(1, 16, r), *_stage(16, 32, r), *_stage(32, 64, r, pool_first=True),
                              GlobalAvgPool2D(), Dense(64, 10, rng=r)], MNIST_SHAPE,
                   Recipe("adam", 6e-3, batch_size=256, epochs=7, schedule="onecycle", augment=(2.0, 10.0)), seed)


PRESETS: dict[str, Callable[..., Sequential]] = {
    f.__name__: f for f in (lenet, mlp, tiny_cnn, keras_cnn, pytorch_example, resnet, toy_conv)
}
