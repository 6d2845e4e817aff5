"""The same network in PyTorch: built from a fastcnn ``Sequential``, with its weights, and trained the
same way (batch size, optimizer, schedule, shuffling). Only the benchmarks import this; fastcnn never
depends on PyTorch.
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import torch
from torch import nn

from fastcnn import layers as L
from fastcnn.blocks import Residual as Residual_


class Residual(nn.Module):
    """``body(x) + shortcut(x)``: the module :class:`fastcnn.Residual` shares its state-dict names with."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def _modules(layers) -> list[nn.Module]:
    mods = []
    for layer in layers:
        if isinstance(layer, Residual_):
            shortcut = None if layer.shortcut is None else _modules(layer.shortcut.layers)
            mods.append(Residual(_modules(layer.body.layers), shortcut))
        elif isinstance(layer, L.Conv2D):
            padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
            mods.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, padding,
                                  layer.dilation, bias="bias" in layer.params, groups=layer.groups,
                                  padding_mode=layer.padding_mode))
        elif isinstance(layer, L.BatchNorm2D):
            mods.append(nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum))
        elif isinstance(layer, L.GlobalAvgPool2D):
            mods.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        elif isinstance(layer, L.MaxPool2D):
            mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, L.AvgPool2D):
            mods.append(nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif isinstance(layer, L.Dense):
            mods.append(nn.Linear(layer.in_features, layer.out_features, bias="bias" in layer.params))
        elif isinstance(layer, (L.BatchNorm2D, L.BatchNorm1D)):
            kind = nn.BatchNorm2d if isinstance(layer, L.BatchNorm2D) else nn.BatchNorm1d
            mods.append(kind(layer.num_features, eps=layer.eps, momentum=layer.momentum))
        elif isinstance(layer, L.Dropout):
            mods.append(nn.Dropout(layer.p))
        else:
            mods.append({L.ReLU: nn.ReLU, L.Flatten: nn.Flatten, L.Tanh: nn.Tanh, L.Sigmoid: nn.Sigmoid}[type(layer)]())
    return mods


def mirror(model) -> nn.Sequential:
    """A ``torch.nn.Sequential`` with ``model``'s layers and a copy of its current weights."""
    net = nn.Sequential(*_modules(model.layers))
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return net


def optimizer(net: nn.Module, recipe, total_steps: int):
    """PyTorch's optimizer and per-step scheduler for a fastcnn :class:`~fastcnn.models.Recipe`."""
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    sched = None
    if recipe.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps, pct_start=0.25,
                                                    div_factor=25.0, final_div_factor=1e4, cycle_momentum=False)
    elif recipe.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    elif recipe.decay:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + recipe.decay * t))
    return opt, sched


def train_epochs(net, x: np.ndarray, y: np.ndarray, recipe, epochs: int, seed: int = 0) -> list[float]:
    """Train ``net`` like ``Sequential.fit`` does; return the seconds each epoch took."""
    return list(epoch_times(net, x, y, recipe, epochs, seed))


def epoch_times(net, x: np.ndarray, y: np.ndarray, recipe, epochs: int, seed: int = 0) -> Iterator[float]:
    """:func:`train_epochs` one epoch at a time: yields each epoch's seconds as it ends."""
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    n, bs = len(x), recipe.batch_size
    opt, sched = optimizer(net, recipe, epochs * math.ceil(n / bs))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen) if bs < n else None
        for i in range(0, n, bs):
            idx = slice(i, i + bs) if order is None else order[i : i + bs]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(tx[idx]), ty[idx])
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        yield time.perf_counter() - start


def accuracy(net, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(x[i : i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)])
    return float((pred.numpy() == y).mean())
