"""fastcnn: fast convolutional networks on the CPU, in NumPy and Numba."""
__version__ = "0.1.0"

from . import blocks, functional, layers, losses, models, optim, threads
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
from .model import Sequential, TrainingDivergedError, load_model
from .optim import SGD, Adam, CosineLR, OneCycleLR, StepLR
from .threads import get_num_threads, set_num_threads

__all__ = [
    "blocks", "Residual", "functional", "layers", "losses", "models", "optim", "threads", "get_num_threads", "set_num_threads",
    "BackendUnavailableError", "available_backends", "clear_dispatch_decisions", "dispatch_decisions",
    "dispatch_report", "get_backend", "set_backend", "use_backend", "seed",
    "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "ConvTranspose2D", "Dense", "Dropout", "Flatten", "MaxPool2D", "ReLU",
    "Sigmoid", "Softmax", "Tanh", "LeakyReLU", "SiLU", "GELU", "GlobalAvgPool2D", "GlobalMaxPool2D", "BCELoss", "CrossEntropyLoss", "MSELoss", "Sequential", "TrainingDivergedError",
    "SGD", "Adam", "CosineLR", "OneCycleLR", "StepLR", "load_model",
]
