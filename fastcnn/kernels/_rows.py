"""Row copies that the conv kernels finish their outputs and gradients with: plus a bias, through a
ReLU, or gated by a ReLU's output (vector loops, inlined into the kernels that call them)."""
from __future__ import annotations

from .jit import kernel_helper


@kernel_helper
def copy_plus(dst, src, plus):
    """``dst[p] = src[p] + plus`` for every ``p < len(dst)`` (a vectorised row copy)."""
    for p in range(dst.shape[0]):
        dst[p] = src[p] + plus


@kernel_helper
def copy_gated(dst, src, gate):
    """``dst[p] = src[p]`` where ``gate[p] > 0``, else 0, for every ``p < len(dst)``: a gradient through
    the ReLU whose output is ``gate`` (as ``relu_backward``)."""
    for p in range(dst.shape[0]):
        dst[p] = src[p] if gate[p] > 0 else 0


@kernel_helper
def copy_relu(dst, src, plus):
    """:func:`copy_plus` through a ReLU: ``max(src[p] + plus, 0)``, keeping NaN (as ``relu`` does)."""
    for p in range(dst.shape[0]):
        v = src[p] + plus
        dst[p] = 0 if v <= 0 else v
