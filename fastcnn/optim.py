"""Optimizers and learning-rate schedules.

An optimizer updates parameters in place from ``(name, param, grad)`` triples, keeping its per-parameter
state under the names. Its learning rate at step ``t`` (0-based) is
``lr / (1 + decay * t) * schedule(t, total_steps)``.

Schedules count optimizer steps (batches), not epochs, and ``fit`` sets ``total_steps`` to
``epochs * ceil(N / batch_size)``. PyTorch's ``StepLR(step_size=10)`` called once per epoch is
``StepLR(step_size=10 * steps_per_epoch)`` here, with ``steps_per_epoch = ceil(N / batch_size)``:

>>> steps_per_epoch = math.ceil(60_000 / 64)                    # 938 batches in an MNIST epoch
>>> opt = SGD(0.1, momentum=0.9, schedule=StepLR(step_size=10 * steps_per_epoch, gamma=0.1))
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from . import dispatch
from ._checks import by_name

__all__ = ["Optimizer", "SGD", "Adam", "StepLR", "CosineLR", "OneCycleLR", "OPTIMIZERS", "get_optimizer"]


class Schedule:
    """A learning-rate multiplier as a function of the optimizer step (0-based, one per batch) and the
    run's total steps."""

    def __call__(self, step: int, total_steps: int | None) -> float:
        raise NotImplementedError

    @staticmethod
    def _total(total_steps):
        if not total_steps:
            raise ValueError("this schedule needs the run's total steps: use it through fit() or set optimizer.total_steps")
        return total_steps


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` optimizer steps (batches, not epochs).

    For PyTorch's per-epoch ``StepLR(step_size=k)``, pass ``k * ceil(N / batch_size)``; see the module's
    documentation.
    """

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = step_size, gamma

    def __call__(self, step, total_steps):
        return self.gamma ** (step // self.step_size)


class CosineLR(Schedule):
    """Cosine decay from 1 to ``min_factor`` over the run's ``total_steps`` optimizer steps (all epochs
    of a ``fit``), as PyTorch's ``CosineAnnealingLR(T_max=total_steps)`` stepped once per batch."""

    def __init__(self, min_factor: float = 0.0) -> None:
        self.min_factor = min_factor

    def __call__(self, step, total_steps):
        t = min(step / self._total(total_steps), 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))


class OneCycleLR(Schedule):
    """One-cycle: cosine warm-up from ``1/div_factor`` to 1 over ``pct_start`` of the run, then cosine
    annealing to ``1/final_div_factor`` (as ``torch.optim.lr_scheduler.OneCycleLR``). The run is the
    ``total_steps`` optimizer steps of a ``fit`` (every batch of every epoch), as PyTorch's scheduler
    stepped once per batch."""

    def __init__(self, pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4) -> None:
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor

    def __call__(self, step, total_steps):
        total = self._total(total_steps)
        warm = max(int(self.pct_start * total), 1)
        lo, end = 1 / self.div_factor, 1 / (self.div_factor * self.final_div_factor)
        if step < warm:
            t, a, b = step / warm, lo, 1.0
        else:
            t, a, b = min((step - warm) / max(total - warm, 1), 1.0), 1.0, end
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))


class Optimizer:
    """Base class. ``step(named)`` applies one update; ``iterations`` counts the updates."""

    def __init__(self, lr: float, weight_decay: float = 0.0, decay: float = 0.0, schedule: Schedule | None = None) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("decay", decay)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.lr, self.weight_decay, self.decay, self.schedule = float(lr), float(weight_decay), float(decay), schedule
        self.iterations = 0
        self.total_steps: int | None = None
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def current_lr(self) -> float:
        """The rate the next step will use."""
        lr = self.lr / (1.0 + self.decay * self.iterations)
        if self.schedule is not None:
            lr *= self.schedule(self.iterations, self.total_steps)
        return lr

    def step(self, named: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Update every ``param`` in place from its ``grad``."""
        lr = self.current_lr()
        self.iterations += 1
        rates = self._rates(lr)
        for name, param, grad in named:
            if self.weight_decay:
                grad = grad + param.dtype.type(self.weight_decay) * param
            self._update(name, param, grad, rates)

    def _rates(self, lr: float):
        """What every parameter's update of this step uses (computed once per step)."""
        return lr

    def _update(self, name, param, grad, rates):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``, plus the
    time-based decay ``lr / (1 + decay * step)``.

    Parameters
    ----------
    lr : float
    momentum : float
    nesterov : bool
    weight_decay : float
        L2 penalty added to the gradient.
    decay : float
        Time-based learning-rate decay.
    schedule : Schedule, optional
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 decay: float = 0.0, schedule: Schedule | None = None) -> None:
        super().__init__(lr, weight_decay, decay, schedule)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _update(self, name, param, grad, lr):
        t = param.dtype.type
        if self.momentum:
            state = self.state.get(name)
            if state is None:
                buf = self.state.setdefault(name, {"momentum": grad.astype(param.dtype, copy=True)})["momentum"]
            else:
                buf = state["momentum"]
                buf *= t(self.momentum)
                buf += grad
            grad = grad + t(self.momentum) * buf if self.nesterov else buf
        param -= t(lr) * grad


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

    Parameters
    ----------
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
    schedule : Schedule, optional
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, schedule: Schedule | None = None) -> None:
        super().__init__(lr, weight_decay, 0.0, schedule)
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def _rates(self, lr):
        b1, b2 = self.betas
        step = self.iterations
        return _InDtype((b1, 1 - b1, b2, 1 - b2, lr / (1 - b1**step), 1 - b2**step, self.eps))

    def _update(self, name, param, grad, rates):
        state = self.state.get(name)
        if state is None or state["m"].size != param.size or state["m"].dtype != param.dtype:
            state = self.state[name] = {"m": np.zeros(param.size, param.dtype), "v": np.zeros(param.size, param.dtype)}
        flat = param.reshape(-1) if param.flags.c_contiguous else param.flatten()  # the kernels take 1-D arrays
        if grad.dtype != param.dtype or not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad, dtype=param.dtype)
        dispatch.run("adam_update", (param.size, param.dtype.char),
                     (flat, grad.reshape(-1), state["m"], state["v"], rates[param.dtype]))
        if not param.flags.c_contiguous:
            param[...] = flat.reshape(param.shape)


class _InDtype(dict):
    """A step's rates (Python floats) as scalars of each parameter dtype, converted once per step and
    dtype: ``rates[np.dtype(np.float32)]`` is a tuple of float32 values."""

    def __init__(self, rates: tuple[float, ...]) -> None:
        super().__init__()
        self.rates = rates

    def __missing__(self, dtype: np.dtype) -> tuple:
        typed = self[dtype] = tuple(dtype.type(r) for r in self.rates)
        return typed


#: The optimizers ``fit(optimizer=...)`` knows by name, each with its default settings.
OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def get_optimizer(optimizer: "Optimizer | str | None") -> Optimizer:
    """An optimizer from an instance, a name in :data:`OPTIMIZERS` (``"adam"``, ``"sgd"``; any case) or
    None (``Adam(1e-3)``), as ``fit`` accepts it.

    Raises
    ------
    ValueError
        An unknown name; the message lists the known ones.
    TypeError
        Neither an Optimizer nor a string.
    """
    return by_name("optimizer", optimizer, Optimizer, OPTIMIZERS, Adam, "fastcnn.Adam(3e-3), fastcnn.SGD(0.01)")
