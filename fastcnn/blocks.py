"""Blocks: layers made of other layers. :class:`Residual` computes ``body(x) + shortcut(x)``.

A block keeps its inner layers in :class:`~fastcnn.model.Sequential` containers, so their steps are
planned as a model's are (a Conv2D, MaxPool2D and ReLU inside still run as one fused op), and shows
their parameters, gradients and buffers through :class:`NestedStore` views named as PyTorch names the
equivalent module's (``"body.0.weight"``; in a model, ``"<i>.body.0.weight"``). Those views are the
block's ``params``, ``grads`` and ``buffers``, so state dicts, optimizers, ``astype`` and parameter
counts work on a block without knowing it is one.
"""
from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Sequence, Union

import numpy as np

from . import functional as F
from . import inference
from .layers import LAYER_TYPES, Layer
from .model import Sequential

__all__ = ["Residual", "NestedStore"]

Layers = Union[Sequence[Layer], Sequential]


class NestedStore(MutableMapping):
    """One of the dicts ``params``, ``grads`` or ``buffers`` (``store``) of the layers of some named
    :class:`Sequential` containers, as one dict keyed ``"<container>.<j>.<key>"``; reads and writes go
    to the inner layer's own dict, so replacing an array (``astype``, ``load_state_dict``) reaches it.
    Keys cannot be added or removed."""

    def __init__(self, containers: dict[str, Sequential], store: str) -> None:
        self._containers = containers
        self._store = store

    def _locate(self, key: str) -> tuple[dict, str]:
        part, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        container = self._containers.get(part)
        if container is None or not index.isdigit() or int(index) >= len(container.layers):
            raise KeyError(key)
        inner = getattr(container.layers[int(index)], self._store)
        if name not in inner:
            raise KeyError(key)
        return inner, name

    def __getitem__(self, key: str) -> np.ndarray:
        inner, name = self._locate(key)
        return inner[name]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        inner, name = self._locate(key)
        inner[name] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"{self._store} of a block cannot lose {key!r}")

    def __iter__(self) -> Iterator[str]:
        for part, container in self._containers.items():
            for j, layer in enumerate(container.layers):
                for name in getattr(layer, self._store):
                    yield f"{part}.{j}.{name}"

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _container(name: str, layers: Layers) -> Sequential:
    if isinstance(layers, Sequential):
        return layers
    if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
        raise TypeError(f"{name} must be a list of fastcnn layers or a Sequential, got {type(layers).__name__}")
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"{name} must hold fastcnn layers, got {type(layer).__name__}")
    return Sequential(layers)


def _run(container: Sequential, x: np.ndarray, training: bool) -> np.ndarray:
    for step in container.steps():
        x = step.forward(x, training)
    return x


class Residual(Layer):
    """``body(x) + shortcut(x)``, the shortcut the identity when None, as this PyTorch module::

        class Residual(nn.Module):
            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body = nn.Sequential(*body)
                self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()

            def forward(self, x):
                return self.body(x) + self.shortcut(x)

    whose state-dict names (``"body.0.weight"``, ``"shortcut.0.weight"``) it shares.

    Parameters
    ----------
    body : list of Layer or Sequential
    shortcut : list of Layer or Sequential, optional
        None (or an empty list) is the identity.
    input_shape : tuple of int, optional
        Per-sample input shape: checks now that body and shortcut give the same output shape.

    Raises
    ------
    ValueError
        ``input_shape`` is given and the body's output shape differs from the shortcut's (both named).
    """

    def __init__(self, body: Layers, shortcut: Layers | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.body = _container("body", body)
        self.shortcut = None if shortcut is None or (not isinstance(shortcut, Sequential) and len(shortcut) == 0) \
            else _container("shortcut", shortcut)
        containers = {"body": self.body} if self.shortcut is None else {"body": self.body, "shortcut": self.shortcut}
        self.params = NestedStore(containers, "params")
        self.grads = NestedStore(containers, "grads")
        self.buffers = NestedStore(containers, "buffers")
        if input_shape is not None:
            self.output_shape(tuple(input_shape))

    def forward(self, x, training=False):
        x = self._input(x)
        y = _run(self.body, x, training)
        s = x if self.shortcut is None else _run(self.shortcut, x, training)
        if y.shape != s.shape:
            raise ValueError(f"Residual: the body's output has shape {y.shape} but the shortcut's has shape {s.shape} "
                             f"(input {x.shape}); they must match to be added")
        return F.add(y, s)

    def backward(self, grad):
        gx = self.body.backward(grad)
        return F.add(gx, grad if self.shortcut is None else self.shortcut.backward(grad))

    def backward_params(self, grad):
        self.body.backward(grad, input_grad=False)
        if self.shortcut is not None:
            self.shortcut.backward(grad, input_grad=False)

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        body = self._out_shape(self.body, input_shape)
        short = input_shape if self.shortcut is None else self._out_shape(self.shortcut, input_shape)
        if body != short:
            raise ValueError(f"Residual: for input (N, {', '.join(map(str, input_shape))}) the body gives "
                             f"(N, {', '.join(map(str, body))}) but the shortcut gives (N, {', '.join(map(str, short))})")
        return body

    @staticmethod
    def _out_shape(container: Sequential, input_shape):
        return container.output_shapes(input_shape)[-1] if container.layers else input_shape

    def astype(self, dtype):
        for container in (self.body, self.shortcut):
            if container is not None:
                container.astype(dtype)
        return self

    def containers(self):
        return [self.body] if self.shortcut is None else [self.body, self.shortcut]

    def residual_branches(self) -> tuple[list[Layer], list[Layer] | None]:
        """The layers whose outputs the block adds: an inference plan (:mod:`fastcnn.inference`) compiles
        each list as a plan of its own.

        Returns
        -------
        body : list of Layer
            The body's layers (the list itself, not a copy).
        shortcut : list of Layer or None
            The shortcut's layers; None for the identity.
        """
        return self.body.layers, None if self.shortcut is None else self.shortcut.layers

    def inner_rows(self, prefix: str, input_shape) -> list[tuple[str, str, tuple[int, ...], int]]:
        """The summary rows of the inner layers: ``(name, description, output shape, parameters)``."""
        rows = []
        for part, container in (("body", self.body), ("shortcut", self.shortcut)):
            if container is None:
                rows.append((f"{prefix}.shortcut", "identity", tuple(input_shape), 0))
                continue
            shape = tuple(input_shape)
            for j, layer in enumerate(container.layers):
                name = f"{prefix}.{part}.{j}"
                out = tuple(layer.output_shape(shape))
                rows.append((name, layer.describe(), out, layer.num_params))
                rows.extend(layer.inner_rows(name, shape))
                shape = out
        return rows

    def describe(self):
        short = "identity" if self.shortcut is None else f"{len(self.shortcut.layers)} layers"
        return f"Residual(body {len(self.body.layers)} layers, shortcut {short})"

    def get_config(self):
        return dict(body=self.body.get_config(), shortcut=None if self.shortcut is None else self.shortcut.get_config())

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Residual":
        """Rebuild from :meth:`get_config` (fresh weights)."""
        if not isinstance(config, dict) or not isinstance(config.get("body"), list):
            raise TypeError(f"a Residual config must be a dict with a list 'body', got {config!r}")
        shortcut = config.get("shortcut")
        return cls(Sequential.from_config(config["body"]),
                   None if shortcut is None else Sequential.from_config(shortcut))


LAYER_TYPES[Residual.__name__] = Residual  # so Sequential.from_config and load_model rebuild it
inference.RESIDUAL_BLOCKS.add(Residual)  # so predict runs its branches as plans of their own
