"""fastcnn: fast convolutional networks on the CPU, in NumPy and Numba.

Train and run small CNNs (MNIST-sized) on the CPU, faster than PyTorch's CPU build, with nothing
heavier than NumPy and Numba underneath. Images are NCHW float arrays: ``(N, 1, 28, 28)`` in [0, 1]
for MNIST.

Start here
----------
>>> import fastcnn
>>> from fastcnn.datasets import load_mnist
>>> (x, y), (x_test, y_test) = load_mnist(as_float=True)       # fetched once, then cached
>>> model = fastcnn.models.lenet(seed=0)                        # or build a fastcnn.Sequential([...])
>>> print(model.summary())
>>> model.fit(x, y, epochs=2, batch_size=64, optimizer="adam", validation_split=0.1)
>>> model.evaluate(x_test, y_test)                             # (loss, accuracy)
>>> model.predict(x_test[:1]).argmax(axis=1)                   # predict returns logits (class scores)
>>> model.save("lenet.npz"); model = fastcnn.load_model("lenet.npz")

From a shell: ``fastcnn train``, ``fastcnn predict lenet.npz my_digit.png``, ``fastcnn info``.

Where things are
----------------
- ``Sequential`` (:mod:`fastcnn.model`): ``fit`` / ``evaluate`` / ``predict`` / ``summary`` / ``save``.
- Layers (:mod:`fastcnn.layers`): ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``, ``Dense``, ``Flatten``,
  ``Dropout``, ``BatchNorm2D``, activations; ``help(fastcnn.Conv2D)`` gives the output-size formula.
- Losses (:mod:`fastcnn.losses`), optimizers and learning-rate schedules (:mod:`fastcnn.optim`),
  callbacks such as ``EarlyStopping`` and ``ModelCheckpoint`` (:mod:`fastcnn.callbacks`).
- Ready-made networks with their training recipes: :mod:`fastcnn.models`.
- The ops themselves, forward and backward, on arrays: :mod:`fastcnn.functional`.
- Data: :mod:`fastcnn.datasets` (MNIST); a picture of a digit as model input: :mod:`fastcnn.images`
  (needs Pillow); plots of a run: :mod:`fastcnn.plots` (needs matplotlib).
- Speed: each op has a Numba and a NumPy kernel, and a dispatcher times both on your machine and keeps
  the faster (``fastcnn.dispatch_report()``; force one with ``fastcnn.set_backend``);
  ``fastcnn.set_num_threads`` sets the threads.
"""
from . import blocks, callbacks, functional, layers, losses, memory, models, optim, threads
from ._version import __version__
from .callbacks import Callback, EarlyStopping, ModelCheckpoint
from .blocks import Residual
from .dispatch import (
    BackendUnavailableError,
    available_backends,
    clear_dispatch_decisions,
    dispatch_decisions,
    dispatch_report,
    get_backend,
    set_backend,
    use_backend,
)
from .init import seed
from .layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Flatten,
    GELU,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    SiLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .losses import BCELoss, CrossEntropyLoss, MSELoss
from .model import Sequential, TrainingDivergedError, load_model, load_onnx
from .optim import SGD, Adam, CosineLR, OneCycleLR, StepLR
from .threads import get_num_threads, set_num_threads

__all__ = [
    "blocks", "callbacks", "functional", "layers", "losses", "models", "optim", "threads", "get_num_threads",
    "set_num_threads", "BackendUnavailableError", "available_backends", "clear_dispatch_decisions", "dispatch_decisions",
    "dispatch_report", "get_backend", "set_backend", "use_backend", "seed", "Residual",
    "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "ConvTranspose2D", "Dense", "Dropout", "Flatten", "MaxPool2D",
    "ReLU", "Sigmoid", "Softmax", "Tanh", "LeakyReLU", "SiLU", "GELU", "GlobalAvgPool2D", "GlobalMaxPool2D", "BCELoss",
    "CrossEntropyLoss", "MSELoss", "Sequential", "TrainingDivergedError",
    "SGD", "Adam", "CosineLR", "OneCycleLR", "StepLR", "load_model", "Callback", "EarlyStopping", "ModelCheckpoint",
    "load_onnx",
]
