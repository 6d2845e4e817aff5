"""Argument checks, dtype rules and output-size formulas: the single source of truth for every op.

Every public op validates through these helpers, so a bad argument gets the same clear
``ValueError``/``TypeError`` whichever backend would have run.
"""
from __future__ import annotations

import functools
import math
import operator
import os
from typing import NamedTuple, Tuple, Union

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

IntOrPair = Union[int, Tuple[int, int]]


def float_array(name: str, value, ndim: int | None = None, dtype: np.dtype | None = None) -> np.ndarray:
    """Return ``value`` as a C-contiguous float32/float64 array, or raise naming ``name``.

    Parameters
    ----------
    name : str
        The argument's name, used in error messages.
    value : array_like
        The argument.
    ndim : int, optional
        The required number of dimensions.
    dtype : numpy.dtype, optional
        The dtype the array must already have (e.g. the dtype of ``x`` for ``weight``).
    """
    arr = np.asarray(value)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {arr.dtype}; "
            f"convert it with {name}.astype(np.float32)"
        )
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but x has dtype {dtype}; use one dtype for both")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray makes 0-d into 1-d)


def by_name(what: str, value, base: type, choices: dict, default, examples: str):
    """``value`` if it is a ``base`` instance, ``choices[name]()`` for a name (any case), ``default()``
    for None; a ValueError listing the names for an unknown one, a TypeError for anything else.
    ``what`` names the argument and ``examples`` shows instances in the messages."""
    if value is None:
        return default()
    if isinstance(value, base):
        return value
    if isinstance(value, str):
        make = choices.get(value.lower())
        if make is None:
            raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))} "
                             f"or pass an instance, e.g. {examples.split(', ')[0]}")
        return make()
    raise TypeError(f"{what} must be a fastcnn {what} ({examples}, ...) or its name, got {type(value).__name__}")


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` (bools are refused)."""
    if type(value) is int and value >= 1:  # the common case, checked in a tenth of the time
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def pair(name: str, value, minimum: int) -> tuple[int, int]:
    """Normalise an int or a pair of ints to a pair, checking each is at least ``minimum``."""
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        try:
            out.append(operator.index(item))
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out[0], out[1]


def out_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int = 1) -> int:
    """Output length along one axis: ``floor((size + pad_total - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def conv_padding(value) -> Union[str, Tuple[int, ...]]:
    """A conv's ``padding`` normalised: ``"valid"``, ``"same"``, a pair ``(ph, pw)`` (an int is both) or a
    4-tuple ``(left, right, top, bottom)`` as :func:`torch.nn.functional.pad` orders it; all >= 0."""
    if isinstance(value, str):
        if value not in ("valid", "same"):
            raise ValueError(f"padding must be an int, a pair, a 4-tuple, 'valid' or 'same', got {value!r}")
        return value
    if isinstance(value, (tuple, list)) and len(value) == 4:
        left, right = pair("padding", value[:2], 0)
        top, bottom = pair("padding", value[2:], 0)
        return (left, right, top, bottom)
    return pair("padding", value, 0)


class ConvGeometry(NamedTuple):
    """Normalised conv parameters, as the kernels take them. ``padding`` is ``((top, bottom), (left,
    right))``; ``padded_hw`` the input's height and width after it."""

    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def input_hw(self) -> tuple[int, int]:
        """The input's height and width: ``padded_hw`` less the padding."""
        (top, bottom), (left, right) = self.padding
        return self.padded_hw[0] - top - bottom, self.padded_hw[1] - left - right

    @property
    def pointwise(self) -> bool:
        """Whether this is a 1x1 conv with stride 1 and no padding, whose output has the input's height
        and width (not so for a transposed conv's geometry with ``output_padding``): a matrix product
        per sample, ``W (C_out, C) @ x[s] (C, H*W)``, on the arrays as they lie."""
        return (self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == ((0, 0), (0, 0))
                and self.padded_hw == self.out_hw)


def conv_geometry(x_shape, w_shape, stride, padding, dilation, groups=1) -> ConvGeometry:
    """Check a conv2d call's shapes and parameters and compute its output size.

    ``padding`` is as :func:`conv_padding` takes it; ``"same"`` pads so that the output size is
    ``ceil(input / stride)`` (TensorFlow's rule, PyTorch's for stride 1), an odd total padding putting
    the extra row/column at the bottom/right. Answers are remembered (a training step asks the same
    questions every time).
    """
    return _remembered(_conv_geometry, tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups)


def _remembered(fn, *args):
    """``fn(*args)``, from a cache of recent answers when every argument is a plain int, str, None or
    tuple of those (the layers' own parameters); anything else, such as a list or a bool that must be
    refused, is checked afresh."""
    if _plain(args):
        return _geometry_cache(fn, *args)
    return fn(*args)


_PLAIN_TYPES = frozenset((int, str, type(None)))


def _plain(value) -> bool:
    if type(value) is not tuple:
        return type(value) in _PLAIN_TYPES
    for item in value:  # a loop, not all(...): this runs several times per op call
        if type(item) not in _PLAIN_TYPES and not (type(item) is tuple and _plain(item)):
            return False
    return True


@functools.lru_cache(maxsize=256)
def _geometry_cache(fn, *args):
    return fn(*args)


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    n, c, h, w = x_shape
    c_out, c_in, kh, kw = w_shape
    if c_out < 1 or kh < 1 or kw < 1:
        raise ValueError(f"weight must have shape (C_out, C_in, kH, kW) with C_out, kH, kW >= 1, got {w_shape}")
    groups = positive_int("groups", groups)
    if groups > 1 and (c % groups or c_out % groups):
        raise ValueError(f"groups={groups} must divide both the input channels ({c}, x shape {x_shape}) and the "
                         f"output channels ({c_out}, weight shape {w_shape})")
    if groups > 1 and c_in * groups != c:
        raise ValueError(f"x has {c} channels (shape {x_shape}) but weight {w_shape} with groups={groups} expects "
                         f"{c_in * groups}; weight must be (C_out, C_in // groups, kH, kW)")
    if groups == 1 and c != c_in:
        raise ValueError(
            f"x has {c} channels (shape {x_shape}) but weight expects {c_in} (shape {w_shape}); "
            "weight must be (C_out, C_in, kH, kW) with C_in == x.shape[1]"
        )
    if c < 1:
        raise ValueError(f"x must have at least one channel, got shape {x_shape}")
    stride = pair("stride", stride, 1)
    dilation = pair("dilation", dilation, 1)
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    padding = conv_padding(padding)
    if padding == "valid":
        pads = ((0, 0), (0, 0))
    elif padding == "same":
        totals = (max((-(-size // st) - 1) * st + sp - size, 0) for size, st, sp in zip((h, w), stride, span))
        pads = tuple((t // 2, t - t // 2) for t in totals)
    elif len(padding) == 4:
        left, right, top, bottom = padding
        pads = ((top, bottom), (left, right))
    else:
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    padded = (h + sum(pads[0]), w + sum(pads[1]))
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(
            f"kernel of size {(kh, kw)} with dilation {dilation} spans {span}, larger than the padded "
            f"input {padded} (x shape {x_shape}, padding {pads})"
        )
    oh = out_size(h, kh, stride[0], sum(pads[0]), dilation[0])
    ow = out_size(w, kw, stride[1], sum(pads[1]), dilation[1])
    return ConvGeometry(stride, pads, dilation, (oh, ow), (kh, kw), padded)


class TransposedGeometry(NamedTuple):
    """Normalised conv_transpose2d parameters: ``out_hw`` is the output's size, ``full_hw`` the size
    before the padding is cut off (the input size of the convolution it transposes, padded)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    full_hw: tuple[int, int]


def conv_transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation, groups) -> TransposedGeometry:
    """Check a conv_transpose2d call (weight ``(C_in, C_out // groups, kH, kW)``) and compute its output
    size, as PyTorch: ``(H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than the stride or the dilation. Answers are remembered."""
    return _remembered(_conv_transpose_geometry, tuple(x_shape), tuple(w_shape), stride, padding, output_padding,
                       dilation, groups)


def _conv_transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation, groups):
    n, c, h, w = x_shape
    c_in, c_out_g, kh, kw = w_shape
    groups = positive_int("groups", groups)
    if c_out_g < 1 or kh < 1 or kw < 1:
        raise ValueError(f"weight must have shape (C_in, C_out // groups, kH, kW) with each >= 1, got {w_shape}")
    if c < 1 or c != c_in:
        raise ValueError(f"x has {c} channels (shape {x_shape}) but weight {w_shape} expects {c_in}; a transposed "
                         "conv's weight is (C_in, C_out // groups, kH, kW)")
    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c}, x shape {x_shape})")
    stride = pair("stride", stride, 1)
    padding = pair("padding", padding, 0)
    dilation = pair("dilation", dilation, 1)
    output_padding = pair("output_padding", output_padding, 0)
    for op, st, d in zip(output_padding, stride, dilation):
        if op >= max(st, d):
            raise ValueError(f"output_padding {output_padding} must be smaller than either stride {stride} or "
                             f"dilation {dilation}")
    full = tuple((size - 1) * st + d * (k - 1) + 1 + op
                 for size, st, d, k, op in zip((h, w), stride, dilation, (kh, kw), output_padding))
    out = tuple(f - 2 * p for f, p in zip(full, padding))
    if min(out) < 1 or h < 1 or w < 1:
        raise ValueError(f"conv_transpose2d of x {x_shape} with weight {w_shape}, stride {stride}, padding {padding}, "
                         f"output_padding {output_padding} and dilation {dilation} leaves an empty output {out}")
    return TransposedGeometry(stride, padding, dilation, out, full)


class PoolGeometry(NamedTuple):
    """Normalised pooling parameters: ``padding`` on each side (both sides alike); ``extra`` the rows
    and columns that ceil mode's last windows reach past the bottom/right padding (0 in floor mode)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_hw: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    extra: tuple[int, int] = (0, 0)


def flag(name: str, value) -> int:
    """A bool argument as 0 or 1 (an int, so geometry answers can be remembered), or a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return int(value)


def pool_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    """A pool's output length along one axis, as PyTorch: ``(size + 2*padding - dilation*(kernel-1) - 1) / stride
    + 1`` rounded down, or up in ceil mode, where a last window that would start in the right padding
    (not inside the input or the left padding) is dropped."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _first_empty_window(size: int, k: int, s: int, p: int, d: int, o: int) -> int | None:
    """The first of ``o`` pooling windows along an axis of ``size`` (``k`` taps ``d`` apart, the window
    ``r`` starting at ``r * s - p``) that holds no input element, or None; a few integer operations per
    window, so a file's claim of a huge input costs no time."""
    def empty(r: int) -> bool:
        start = r * s - p
        first = max(0, -(start // d))  # the first tap at or after 0, if the window reaches it
        return first > k - 1 or start + first * d >= size

    if d > size:  # taps further apart than the input: a window can straddle it (the span check keeps o small)
        return next((r for r in range(o) if empty(r)), None)
    # taps at most the input's length apart: a window misses it only by ending before it (the first one,
    # if any) or starting after it (from the first that starts at or past its end)
    if empty(0):
        return 0
    last = -(-(size + p) // s)
    return last if last < o else None


def pool_geometry(x_shape, kernel_size, stride, padding, dilation=1, ceil_mode: int = 0) -> PoolGeometry:
    """Check a pooling call's parameters and compute its output size (PyTorch rules).

    ``stride=None`` means ``stride = kernel_size``; padding may be at most half the kernel, and every
    window must hold at least one element of the input (else a ValueError naming the parameters);
    ``ceil_mode`` is 0 or 1 (see :func:`flag`). Answers are remembered, as for :func:`conv_geometry`.
    """
    return _remembered(_pool_geometry, tuple(x_shape), kernel_size, stride, padding, dilation, ceil_mode)


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode) -> PoolGeometry:
    kernel = pair("kernel_size", kernel_size, 1)
    stride = kernel if stride is None else pair("stride", stride, 1)
    padding = pair("padding", padding, 0)
    dilation = pair("dilation", dilation, 1)
    ceil_mode = bool(ceil_mode)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    h, w = x_shape[2], x_shape[3]
    if x_shape[1] < 1:
        raise ValueError(f"x must have at least one channel, got shape {x_shape}")
    if h < 1 or w < 1:  # every window must hold a real element, whatever the padding
        raise ValueError(f"x must have a non-empty height and width to pool, got shape {x_shape}")
    span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    if span[0] > h + 2 * padding[0] or span[1] > w + 2 * padding[1]:
        dilated = "" if dilation == (1, 1) else f" with dilation {dilation}, spanning {span},"
        raise ValueError(
            f"kernel_size {kernel}{dilated} is larger than the padded input "
            f"{(h + 2 * padding[0], w + 2 * padding[1])} (x shape {x_shape}, padding {padding})"
        )
    out = tuple(pool_out_size(size, k, s, p, d, ceil_mode)
                for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation))
    for axis, size, k, s, p, d, o in zip(("height", "width"), (h, w), kernel, stride, padding, dilation, out):
        r = _first_empty_window(size, k, s, p, d, o)
        if r is not None:
            raise ValueError(
                f"pooling window {r} along the {axis} holds no input element (x shape {x_shape}, kernel_size "
                f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}, ceil_mode {ceil_mode}); "
                "every window must overlap the input")
    extra = tuple(max((o - 1) * s + sp - size - 2 * p, 0)
                  for o, s, sp, size, p in zip(out, stride, span, (h, w), padding))
    return PoolGeometry(kernel, stride, padding, out, dilation, ceil_mode, extra)


def avg_pool_scales(geo: PoolGeometry, hw: tuple[int, int], count_include_pad: bool,
                    divisor_override: int | None, dtype) -> np.ndarray:
    """``1 / divisor`` of every output cell of an average pool, shape ``out_hw``, as PyTorch divides:
    ``divisor_override`` if given, else the window's size within the padded input (ceil mode's windows
    are cut at the right padding) with ``count_include_pad``, else its count of input elements.
    Read-only, remembered (a training step asks for the same scales every time)."""
    return _avg_pool_scales(geo, tuple(hw), bool(count_include_pad), divisor_override, np.dtype(dtype))


@functools.lru_cache(maxsize=256)
def _avg_pool_scales(geo, hw, count_include_pad, divisor_override, dtype) -> np.ndarray:
    scales = _scales(geo, hw, count_include_pad, divisor_override, dtype)
    scales.flags.writeable = False
    return scales


def _scales(geo, hw, count_include_pad, divisor_override, dtype) -> np.ndarray:
    if divisor_override is not None:
        return np.full(geo.out_hw, 1.0 / divisor_override, dtype=dtype)
    counts = []
    for o, k, s, p, size in zip(geo.out_hw, geo.kernel, geo.stride, geo.padding, hw):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        counts.append(end - start)
    return (1.0 / np.outer(counts[0], counts[1])).astype(dtype)


def whole_windows(geo: PoolGeometry, hw: tuple[int, int], count_include_pad: bool) -> bool:
    """Whether every window of the pool ``geo`` on an ``hw`` input is whole: ``kH * kW`` values, within
    the padded input with ``count_include_pad``, else within the input itself (so that
    :func:`avg_pool_scales` is ``1 / (kH * kW)`` everywhere). Window starts grow along each axis, so
    the first and the last decide, in a few operations however large the input (a file's claim)."""
    for o, k, s, p, size in zip(geo.out_hw, geo.kernel, geo.stride, geo.padding, hw):
        low, high = (-p, size + p) if count_include_pad else (0, size)  # where a whole window may lie
        if o > 0 and (-p < low or (o - 1) * s - p + k > high):  # the first window's start, the last's end
            return False
    return True


@functools.lru_cache(maxsize=None)
def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit of our own; NumPy still refuses
        return 1 << 62


def check_allocation(what: str, shape, dtype) -> None:
    """Refuse, before allocating, an array larger than this machine's memory: ``MemoryError``.

    Parameters
    ----------
    what : str
        What the array is, for the message (e.g. ``"conv2d output"``).
    shape : tuple of int
    dtype : numpy.dtype
    """
    nbytes = math.prod(map(int, shape)) * np.dtype(dtype).itemsize  # Python ints: no overflow
    limit = _physical_memory()
    if nbytes > limit:
        raise MemoryError(f"{what} of shape {tuple(shape)} would need {nbytes / 2**30:,.1f} GiB, more than "
                          f"this machine's {limit / 2**30:,.1f} GiB of memory; use a smaller batch or input")


def check_grad(name: str, grad, expected_shape, dtype) -> np.ndarray:
    """Validate an incoming gradient against the forward output's shape and dtype."""
    grad = float_array(name, grad, ndim=len(expected_shape), dtype=dtype)
    if grad.shape != tuple(expected_shape):
        raise ValueError(f"{name} has shape {grad.shape} but the forward output has shape {tuple(expected_shape)}")
    return grad


def check_nchw_shape(name: str, value) -> tuple[int, int, int, int]:
    """Validate a user-given NCHW shape (e.g. ``input_shape`` of a pooling backward)."""
    try:
        shape = tuple(operator.index(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of 4 ints (N, C, H, W), got {value!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{name} must be 4 non-negative ints (N, C, H, W), got {value!r}")
    return shape


def class_labels(name: str, labels, n: int, classes: int) -> np.ndarray:
    """``labels`` as an ``intp`` array of ``n`` class indices in ``[0, classes)``, or raise naming ``name``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{name} must hold one class label per row of the logits ({n}), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name}: class labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name} must be in [0, {classes}) for {classes} outputs, got min {labels.min()}, max {labels.max()}")
    return labels.astype(np.intp, copy=False)
