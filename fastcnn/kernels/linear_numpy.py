"""The fully connected layer's products through BLAS (see :func:`.blas.matmul` for its threads)."""
from __future__ import annotations

import numpy as np

from .blas import matmul


def linear_forward(x, w, b, relu=False):
    """``x @ w.T + b`` for ``x`` (N, in) and ``w`` (out, in), through a ReLU with ``relu``."""
    y = matmul(x, w.T)
    y += b
    if relu:
        np.maximum(y, 0, out=y)
    return y


def linear_grad_weight(gy, x):
    """``gy.T @ x``: the weight gradient, shape (out, in)."""
    return matmul(gy.T, x)


def linear_grad_input(gy, w):
    """``gy @ w``: the input gradient, shape (N, in)."""
    return matmul(gy, w)
