"""The functional ops: validate once, dispatch to a backend kernel.

Layout is NCHW, weights are ``(C_out, C_in, kH, kW)`` as in PyTorch, and every op keeps the input's
dtype (float32 or float64). Each op takes ``backend=`` (``"auto"``, ``"numba"`` or ``"numpy"``) to
override the policy in force (see :mod:`fastcnn.dispatch`).
"""
from __future__ import annotations

import numpy as np

from . import dispatch
from ._checks import (ConvGeometry, IntOrPair, avg_pool_scales, check_allocation, check_grad, check_nchw_shape,
                      class_labels, conv_geometry, conv_transpose_geometry, flag, float_array, pair, pool_geometry)
from .kernels.blas import channel_sums
from .kernels.scratch import cropped, shared_inputs, zero_padded

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "pad2d",
    "pad2d_backward",
    "conv2d_max_pool2d",
    "conv2d_max_pool2d_backward",
    "conv2d_relu",
    "conv2d_relu_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "global_max_pool2d",
    "global_max_pool2d_backward",
    "relu",
    "relu_backward",
    "add",
    "tanh",
    "tanh_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "silu",
    "silu_backward",
    "gelu",
    "gelu_backward",
    "dropout",
    "linear",
    "linear_backward",
    "softmax_cross_entropy",
    "soft_cross_entropy",
    "mse_loss",
    "binary_cross_entropy",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_stats",
    "batch_norm_grad_sums",
    "batch_norm_input_grad",
    "batch_norm_scale_shift",
]

def _padded_shape(shape, padding) -> tuple[int, int, int, int]:
    """The NCHW ``shape`` after zero padding by ``((top, bottom), (left, right))``."""
    (top, bottom), (left, right) = padding
    return tuple(shape[:2]) + (shape[2] + top + bottom, shape[3] + left + right)


def _bias(bias, weight: np.ndarray, dtype) -> np.ndarray:
    """``bias`` checked against ``weight`` (one value per output, ``weight.shape[0]``); zeros if None."""
    n_out = weight.shape[0]
    if bias is None:
        return np.zeros(n_out, dtype=dtype)
    bias = float_array("bias", bias, ndim=1, dtype=dtype)
    if bias.shape != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},) to match weight {weight.shape}, got {bias.shape}")
    return bias


def _conv_inputs(x, weight, stride, padding, dilation, groups=1):
    x = float_array("x", x, ndim=4)
    weight = float_array("weight", weight, ndim=4, dtype=x.dtype)
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    check_allocation("padded conv2d input", _padded_shape(x.shape, geo.padding), x.dtype)
    check_allocation("conv2d output", (x.shape[0], weight.shape[0]) + geo.out_hw, x.dtype)
    return x, weight, geo


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """2-D cross-correlation, as :func:`torch.nn.functional.conv2d`.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
        Input, float32 or float64.
    weight : ndarray, shape (C_out, C_in // groups, kH, kW)
        Filters, same dtype as ``x``.
    bias : ndarray, shape (C_out,), optional
        Added to every output pixel of each channel.
    stride, dilation : int or (int, int)
        At least 1.
    padding : int or (int, int) or (left, right, top, bottom) or {"valid", "same"}
        Zero padding: on each side, per axis, or per side in :func:`torch.nn.functional.pad`'s order;
        ``"same"`` gives an output of ``ceil(H / stride)`` by ``ceil(W / stride)`` (TensorFlow's rule,
        PyTorch's for stride 1), an odd extra row/column at the bottom/right.
    groups : int
        Split the input and output channels into ``groups`` blocks, block ``g`` of the output seeing
        only block ``g`` of the input; it must divide both. ``groups == C_in`` is a depthwise
        convolution, which has kernels of its own (direct loops over each channel's plane).
    backend : {"auto", "numba", "numpy"}, optional
        Overrides the backend policy for this call.

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)
    """
    x, weight, geo = _conv_inputs(x, weight, stride, padding, dilation, groups)
    return _grouped("conv2d", x, weight, _bias(bias, weight, x.dtype), geo, groups, backend)


def _grouped(op: str, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, geo, groups: int,
             backend: str | None) -> np.ndarray:
    """The forward op ``op`` (``"conv2d"`` or ``"conv2d_relu"``) of a checked conv of ``groups`` groups:
    its depthwise twin (``"depthwise_" + op``) when ``groups`` is the input's channels, else ``op`` on
    each group's block, concatenated."""
    if _depthwise(x, groups):
        signature = conv_signature(x.shape, weight.shape, geo, x.dtype)
        return dispatch.run("depthwise_" + op, signature, (x, weight, bias, geo), backend)
    if groups > 1:  # a conv per group
        blocks = zip(_blocks(x, groups, 1), _blocks(weight, groups, 0), _blocks(bias, groups, 0))
        signature = conv_signature(_block_shape(x.shape, groups, 1), _block_shape(weight.shape, groups, 0), geo, x.dtype)
        return np.concatenate([dispatch.run(op, signature, (xg, wg, bg, geo), backend) for xg, wg, bg in blocks],
                              axis=1)
    return dispatch.run(op, conv_signature(x.shape, weight.shape, geo, x.dtype), (x, weight, bias, geo), backend)


def conv_signature(x_shape, w_shape, geo, dtype, *described) -> tuple:
    """The dispatch signature of a conv op on inputs of ``x_shape`` (its kernels take the input
    unpadded and pad it as they need): the shapes, the geometry, what ``described`` adds, the dtype.
    The inference plan asks for the same signatures, so that it runs the kernels ``auto`` chose."""
    shapes = (tuple(x_shape), tuple(w_shape))
    return shapes + (geo.stride, geo.padding, geo.dilation) + described + (np.dtype(dtype).char,)


def _depthwise(x: np.ndarray, groups: int) -> bool:
    """Whether a conv of ``x`` with ``groups`` is depthwise (one input channel per group, several groups:
    a conv of one input channel is an ordinary conv, whose kernels are tuned for it)."""
    return groups > 1 and groups == x.shape[1]


def _blocks(a: np.ndarray, groups: int, axis: int) -> list[np.ndarray]:
    """``a`` cut along ``axis`` into ``groups`` equal C-contiguous blocks (a grouped conv's channels)."""
    return [np.ascontiguousarray(block) for block in np.split(a, groups, axis=axis)]


def _block_shape(shape, groups: int, axis: int) -> tuple[int, ...]:
    return tuple(size // groups if k == axis else size for k, size in enumerate(shape))


def conv2d_backward(
    grad_y: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    input_grad: bool = True,
    backend: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv2d` with respect to ``x``, ``weight`` and ``bias``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C_out, H_out, W_out)
        Gradient of the loss with respect to the conv output.
    x, weight, stride, padding, dilation, groups, backend
        As passed to :func:`conv2d`. The two gradients are dispatched separately, so ``auto`` may
        pick a different backend for each.
    input_grad : bool
        Compute ``grad_x``; ``False`` skips that work (a network's first layer) and returns None.

    Returns
    -------
    grad_x : ndarray, shape of ``x``, or None
    grad_weight : ndarray, shape of ``weight``
    grad_bias : ndarray, shape (C_out,)
    """
    x, weight, geo = _conv_inputs(x, weight, stride, padding, dilation, groups)
    grad_y = check_grad("grad_y", grad_y, (x.shape[0], weight.shape[0]) + geo.out_hw, x.dtype)
    if x.shape[0] == 0:
        return _zero_gradients(x, weight, input_grad)
    if groups == 1:
        return _conv_gradients("conv2d", (grad_y,), (), (), x, weight, geo, input_grad, backend)
    if _depthwise(x, groups):
        return _depthwise_gradients(grad_y, x, weight, geo, input_grad, backend)
    parts = [_conv_gradients("conv2d", (gg,), (), (), xg, wg, geo, input_grad, backend)
             for gg, xg, wg in zip(_blocks(grad_y, groups, 1), _blocks(x, groups, 1), _blocks(weight, groups, 0))]
    grad_x = np.concatenate([p[0] for p in parts], axis=1) if input_grad else None
    return grad_x, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _zero_gradients(x, weight, input_grad):
    """A conv's three gradients for an empty batch ``x``: zeros (no input gradient without ``input_grad``)."""
    return (np.zeros_like(x) if input_grad else None), np.zeros_like(weight), np.zeros(weight.shape[0], x.dtype)


def _conv_gradients(op, grad, extra, described, x, weight, geo, input_grad, backend):
    """The three gradients of a conv, from the ops ``op + "_grad_weight"`` and ``op + "_grad_input"``,
    which take the arguments ``grad`` before and ``extra`` after the conv's own; ``described`` is what
    their dispatch signature needs besides the conv's shapes."""
    signature = conv_signature(x.shape, weight.shape, geo, x.dtype, *described)
    grad_x = None
    with shared_inputs():  # both gradients read grad_y the same way: a backend may prepare it once
        grad_w, grad_b = dispatch.run(op + "_grad_weight", signature, (*grad, x, geo, *extra), backend)
        if input_grad:
            grad_x = dispatch.run(op + "_grad_input", signature, (*grad, weight, geo, *extra), backend)
    return grad_x, grad_w, grad_b


def _depthwise_gradients(grad_y, x, weight, geo, input_grad, backend):
    """:func:`_conv_gradients` for a depthwise conv, whose kernels take ``x`` unpadded and return its
    gradient so."""
    signature = conv_signature(x.shape, weight.shape, geo, x.dtype)
    c = x.shape[1]
    grad_w, grad_b = dispatch.run("depthwise_conv2d_grad_weight", signature, (grad_y, x, geo, c), backend)
    grad_x = None
    if input_grad:
        grad_x = dispatch.run("depthwise_conv2d_grad_input", signature, (grad_y, weight, geo, c), backend)
    return grad_x, grad_w, grad_b


PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad_args(shape, padding, mode):
    """``padding`` (left, right, top, bottom) checked for ``mode`` against an NCHW ``shape``, as PyTorch:
    reflection needs each pad smaller than its axis, circular padding at most its size."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    if not (isinstance(padding, (tuple, list)) and len(padding) == 4):
        raise ValueError(f"padding must be (left, right, top, bottom), got {padding!r}")
    left, right = pair("padding", padding[:2], 0)
    top, bottom = pair("padding", padding[2:], 0)
    h, w = shape[2], shape[3]
    limit = {"reflect": (h - 1, w - 1), "circular": (h, w)}.get(mode)
    if limit is not None and (max(top, bottom) > limit[0] or max(left, right) > limit[1]):
        raise ValueError(f"{mode} padding {tuple(padding)} is too large for an input of height {h} and width {w} "
                         f"(each pad at most {'size - 1' if mode == 'reflect' else 'the size'})")
    return ((top, bottom), (left, right))


def pad2d(x: np.ndarray, padding: tuple[int, int, int, int], mode: str = "zeros") -> np.ndarray:
    """Pad the last two axes of ``x`` (N, C, H, W) by ``padding = (left, right, top, bottom)``, as
    :func:`torch.nn.functional.pad` and the ``padding_mode`` of ``torch.nn.Conv2d``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    padding : (left, right, top, bottom)
    mode : {"zeros", "reflect", "replicate", "circular"}
    """
    x = float_array("x", x, ndim=4)
    pads = _pad_args(x.shape, padding, mode)
    check_allocation("pad2d output", _padded_shape(x.shape, pads), x.dtype)
    return np.pad(x, ((0, 0), (0, 0)) + pads, mode=PAD_MODES[mode])


def pad2d_backward(grad_y: np.ndarray, input_shape: tuple[int, int, int, int], padding: tuple[int, int, int, int],
                   mode: str = "zeros") -> np.ndarray:
    """Gradient of :func:`pad2d`: every padded position's gradient added to the input position it copies.

    The copy is separable (a row map times a column map), so the sum is two small matrix products.
    """
    shape = check_nchw_shape("input_shape", input_shape)
    pads = _pad_args(shape, padding, mode)
    grad_y = float_array("grad_y", grad_y, ndim=4)
    grad_y = check_grad("grad_y", grad_y, _padded_shape(shape, pads), grad_y.dtype)
    rows, cols = (np.pad(np.eye(size, dtype=grad_y.dtype), (pad, (0, 0)), mode=PAD_MODES[mode])
                  for size, pad in zip(shape[2:], pads))
    return np.ascontiguousarray(np.matmul(rows.T, np.matmul(grad_y, cols)))


def _transposed_inputs(x, weight, stride, padding, output_padding, groups, dilation):
    x = float_array("x", x, ndim=4)
    weight = float_array("weight", weight, ndim=4, dtype=x.dtype)
    geo = conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    n_out = weight.shape[1] * groups
    check_allocation("conv_transpose2d output", (x.shape[0], n_out) + geo.full_hw, x.dtype)
    return x, weight, geo, n_out


def conv_transpose2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """2-D transposed convolution, as :func:`torch.nn.functional.conv_transpose2d` (same argument order):
    the gradient of :func:`conv2d` with respect to its input, computed by the same kernels.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_in, C_out // groups, kH, kW)
    bias : ndarray, shape (C_out,), optional
    stride, dilation : int or (int, int)
    padding : int or (int, int)
        Rows and columns cut from each side of the full output.
    output_padding : int or (int, int)
        Extra rows/columns at the bottom/right; smaller than the stride or the dilation.
    groups : int
        Must divide ``C_in``.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)
        ``H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``.
    """
    x, weight, geo, n_out = _transposed_inputs(x, weight, stride, padding, output_padding, groups, dilation)
    bias = None if bias is None else _bias(bias, np.empty((n_out,)), x.dtype)
    hp, wp = geo.full_hw
    conv_geo = ConvGeometry(geo.stride, ((0, 0), (0, 0)), geo.dilation, x.shape[2:], weight.shape[2:], geo.full_hw)
    signature = conv_signature((x.shape[0], weight.shape[1], hp, wp),
                               _block_shape(weight.shape, groups, 0), conv_geo, x.dtype)
    full = np.concatenate([dispatch.run("conv2d_grad_input", signature, (xg, wg, conv_geo), backend)
                           for xg, wg in zip(_blocks(x, groups, 1), _blocks(weight, groups, 0))], axis=1) \
        if x.shape[0] else np.zeros((0, n_out, hp, wp), x.dtype)
    (ph, pw) = geo.padding
    y = cropped(full, ((ph, ph), (pw, pw)))
    if bias is not None:
        y += bias[:, None, None]
    return y


def conv_transpose2d_backward(
    grad_y: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    input_grad: bool = True,
    backend: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv_transpose2d` with respect to ``x``, ``weight`` and ``bias``: the input
    gradient is :func:`conv2d` of ``grad_y`` and the weight gradient :func:`conv2d_backward`'s, with the
    roles of input and output exchanged.

    Returns
    -------
    grad_x : ndarray, shape of ``x``, or None with ``input_grad=False``
    grad_weight : ndarray, shape of ``weight``
    grad_bias : ndarray, shape (C_out,)
    """
    x, weight, geo, n_out = _transposed_inputs(x, weight, stride, padding, output_padding, groups, dilation)
    grad_y = check_grad("grad_y", grad_y, (x.shape[0], n_out) + geo.out_hw, x.dtype)
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = geo.padding, geo.stride, geo.dilation, weight.shape[2:]
    # The full output, cut to the rows and columns that x reaches (output_padding's last ones it does not).
    reach = ((x.shape[2] - 1) * sh + dh * (kh - 1) + 1, (x.shape[3] - 1) * sw + dw * (kw - 1) + 1)
    full = np.pad(grad_y, ((0, 0), (0, 0), (ph, ph), (pw, pw)))[:, :, : reach[0], : reach[1]]
    full = np.ascontiguousarray(full)
    conv = dict(stride=geo.stride, padding=0, dilation=geo.dilation, groups=groups, backend=backend)
    grad_x = conv2d(full, weight, None, **conv) if input_grad else None
    _, grad_w, _ = conv2d_backward(x, full, weight, input_grad=False, **conv)
    return grad_x, grad_w, grad_y.sum(axis=(0, 2, 3)).astype(x.dtype)


def conv2d_relu(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """A convolution and the ReLU after it in one op: ``relu(conv2d(x, weight, bias, stride, padding,
    dilation, groups))``, the ReLU applied as the output is written (NaN kept, as :func:`relu`).

    :class:`fastcnn.Sequential` runs a Conv2D directly followed by a ReLU so (when the conv has no
    groups and pads with zeros); its inference plan runs a depthwise conv and the ReLU after it as
    the same op as this function (``depthwise_conv2d_relu``, the ReLU applied to each output plane
    while it is in cache). Parameters as :func:`conv2d`.

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)
    """
    x, weight, geo = _conv_inputs(x, weight, stride, padding, dilation, groups)
    return _grouped("conv2d_relu", x, weight, _bias(bias, weight, x.dtype), geo, groups, backend)


def conv2d_relu_backward(
    grad_y: np.ndarray,
    relu_output: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    input_grad: bool = True,
    backend: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv2d_relu` with respect to ``x``, ``weight`` and ``bias``: those of
    :func:`conv2d` for ``relu_backward(grad_y, relu_output)``. Without groups, the Numba backend
    applies the ReLU's gate as it reads ``grad_y`` into its working layout, so the gated gradient is
    never written; with groups, the gated gradient goes to :func:`conv2d_backward`.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C_out, H_out, W_out)
        Gradient of the loss with respect to the op's output.
    relu_output : ndarray, same shape as ``grad_y``
        The output :func:`conv2d_relu` returned: the gradient passes only where it is positive.
    x, weight, stride, padding, dilation, groups, backend
        As passed to :func:`conv2d_relu`.
    input_grad : bool
        Compute ``grad_x``; ``False`` skips that work and returns None.

    Returns
    -------
    (grad_x, grad_weight, grad_bias)
        As :func:`conv2d_backward` returns them.
    """
    x, weight, geo = _conv_inputs(x, weight, stride, padding, dilation, groups)
    out_shape = (x.shape[0], weight.shape[0]) + geo.out_hw
    grad_y = check_grad("grad_y", grad_y, out_shape, x.dtype)
    relu_output = check_grad("relu_output", relu_output, out_shape, x.dtype)
    if groups > 1:
        return conv2d_backward(relu_backward(grad_y, relu_output, backend=backend), x, weight, stride, padding,
                               dilation, groups, input_grad=input_grad, backend=backend)
    if x.shape[0] == 0:
        return _zero_gradients(x, weight, input_grad)
    return _conv_gradients("conv2d_relu", (grad_y, relu_output), (), (), x, weight, geo, input_grad, backend)


def conv2d_max_pool2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    *,
    pool_size: IntOrPair = 2,
    pool_stride: IntOrPair | None = None,
    pool_padding: IntOrPair = 0,
    relu: bool = False,
    pool_dilation: IntOrPair = 1,
    pool_ceil_mode: bool = False,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A convolution and the max-pool of its output in one op:
    ``max_pool2d(conv2d(x, weight, bias, stride, padding, dilation), pool_size, pool_stride, pool_padding)``,
    and with ``relu`` a ReLU of the pooled values (the same as a ReLU before the pool: it commutes with
    a maximum).

    The Numba backend pools a stride-1 convolution's output with 2x2, stride-2 windows as it leaves
    the convolution's working layout, so the full-size output is never written; other cases, and the
    NumPy backend, run the separate ops. :class:`fastcnn.Sequential` uses it for a Conv2D followed by
    a MaxPool2D (and a ReLU on either side of the pool).

    Parameters
    ----------
    x, weight, bias, stride, padding, dilation
        As :func:`conv2d`.
    pool_size, pool_stride, pool_padding, pool_dilation, pool_ceil_mode
        As ``kernel_size``, ``stride``, ``padding``, ``dilation`` and ``ceil_mode`` of :func:`max_pool2d`.
    relu : bool
        Apply ``max(y, 0)`` (NaN kept) to the pooled output.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    y : ndarray, shape (N, C_out, H_pool, W_pool)
    argmax : ndarray of int64, same shape as ``y``
        Flat index (``row * W_out + col``) of each maximum in its plane of the convolution's output
        (N, C_out, H_out, W_out), as :func:`max_pool2d` gives it.
    """
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be True or False, got {relu!r}")
    relu = bool(relu)
    x, weight, geo = _conv_inputs(x, weight, stride, padding, dilation)
    bias = _bias(bias, weight, x.dtype)
    pool = pool_geometry((x.shape[0], weight.shape[0]) + geo.out_hw, pool_size, pool_stride, pool_padding, pool_dilation,
                         flag("pool_ceil_mode", pool_ceil_mode))
    check_allocation("conv2d_max_pool2d argmax", (x.shape[0], weight.shape[0]) + pool.out_hw, np.int64)
    signature = conv_signature(x.shape, weight.shape, geo, x.dtype, pool.kernel, pool.stride, pool.padding,
                               pool.dilation, pool.out_hw, relu)
    args = (x, weight, bias, geo, pool, relu)
    return dispatch.run("conv2d_max_pool2d", signature, args, backend)


def conv2d_max_pool2d_backward(
    grad_y: np.ndarray,
    argmax: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    *,
    relu_output: np.ndarray | None = None,
    input_grad: bool = True,
    check_indices: bool = True,
    backend: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv2d_max_pool2d` with respect to ``x``, ``weight`` and ``bias``: those of
    :func:`conv2d` for the output gradient ``max_pool2d_backward(grad_y, argmax, conv output shape)``
    (of ``relu_backward(grad_y, relu_output)`` when the op applied its ReLU).

    Parameters
    ----------
    grad_y : ndarray, shape (N, C_out, H_pool, W_pool)
        Gradient of the loss with respect to the pooled output.
    argmax : ndarray of ints, same shape as ``grad_y``
        The indices :func:`conv2d_max_pool2d` returned.
    x, weight, stride, padding, dilation, backend
        As passed to :func:`conv2d_max_pool2d`.
    relu_output : ndarray, optional
        The ``y`` that :func:`conv2d_max_pool2d` returned with ``relu=True``: the gradient passes only
        where it is positive. None (the default) when the op applied no ReLU.
    input_grad : bool
        Compute ``grad_x``; ``False`` skips that work and returns None.
    check_indices : bool
        As in :func:`max_pool2d_backward`.

    Returns
    -------
    grad_x : ndarray, shape of ``x``, or None
    grad_weight : ndarray, shape of ``weight``
    grad_bias : ndarray, shape (C_out,)
    """
    x, weight, geo = _conv_inputs(x, weight, stride, padding, dilation)
    conv_shape = (x.shape[0], weight.shape[0]) + geo.out_hw
    grad_y, argmax = _pooled_gradient(grad_y, argmax, conv_shape, "the conv output", check_indices, x.dtype)
    if relu_output is not None:
        relu_output = check_grad("relu_output", relu_output, grad_y.shape, x.dtype)
    grad = (grad_y, argmax, relu_output)
    described = (grad_y.shape, relu_output is not None)
    return _conv_gradients("conv2d_max_pool2d", grad, (), described, x, weight, geo, input_grad, backend)


def max_pool2d(
    x: np.ndarray,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D max pooling with indices, as :func:`torch.nn.functional.max_pool2d` with ``return_indices``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Implicit ``-inf`` padding, at most half the kernel.
    dilation : int or (int, int)
        Spacing between a window's elements.
    ceil_mode : bool
        Round the output size up: a last, partial window is kept if it starts inside the input or the
        left padding.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    y : ndarray, shape (N, C, H_out, W_out)
    argmax : ndarray of int64, same shape as ``y``
        Flat index (``row * W + col``) of each maximum in its input plane. Ties go to the first
        maximum in row-major window order; a NaN in a window wins (the last one, as PyTorch's CPU
        kernel, which takes each value that is greater or NaN).
    """
    x = float_array("x", x, ndim=4)
    geo = pool_geometry(x.shape, kernel_size, stride, padding, dilation, flag("ceil_mode", ceil_mode))
    check_allocation("max_pool2d argmax", x.shape[:2] + geo.out_hw, np.int64)
    signature = (x.shape, geo.kernel, geo.stride, geo.padding, geo.dilation, geo.out_hw, x.dtype.char)
    return dispatch.run("max_pool2d", signature, (x, geo), backend)


def max_pool2d_backward(
    grad_y: np.ndarray,
    argmax: np.ndarray,
    input_shape: tuple[int, int, int, int],
    *,
    check_indices: bool = True,
    backend: str | None = None,
) -> np.ndarray:
    """Gradient of :func:`max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, H_out, W_out)
    argmax : ndarray of ints, same shape as ``grad_y``
        The indices :func:`max_pool2d` returned.
    input_shape : (N, C, H, W)
        Shape of the pooled input.
    check_indices : bool
        Scan ``argmax`` for indices outside the input plane (a ValueError). ``False`` skips the scan,
        for indices that come straight from :func:`max_pool2d`, as :class:`~fastcnn.layers.MaxPool2D`
        passes them (the scan was a third of that layer's backward time); indices out of range then
        write out of bounds.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of ``input_shape``
    """
    shape = check_nchw_shape("input_shape", input_shape)
    grad_y, argmax = _pooled_gradient(grad_y, argmax, shape, "input_shape", check_indices)
    check_allocation("max_pool2d_backward output", shape, grad_y.dtype)
    signature = (grad_y.shape, shape, grad_y.dtype.char)
    return dispatch.run("max_pool2d_backward", signature, (grad_y, argmax, shape[2], shape[3]), backend)


def _pooled_gradient(grad_y, argmax, shape, name: str, check_indices: bool, dtype=None):
    """``grad_y`` and ``argmax`` of a max-pool checked against the shape of its input, ``shape``
    (called ``name`` in errors); ``argmax`` as C-contiguous int64."""
    grad_y = float_array("grad_y", grad_y, ndim=4, dtype=dtype)
    argmax = np.asarray(argmax)
    if argmax.dtype.kind not in "iu":
        raise TypeError(f"argmax must be an integer array (the indices from max_pool2d), got dtype {argmax.dtype}")
    if argmax.shape != grad_y.shape or grad_y.shape[:2] != shape[:2]:
        raise ValueError(
            f"grad_y {grad_y.shape}, argmax {argmax.shape} and {name} {shape} do not match: "
            f"grad_y and argmax must have one shape, with N and C of {name}"
        )
    plane = shape[2] * shape[3]
    if check_indices and argmax.size and (argmax.min() < 0 or argmax.max() >= plane):
        raise ValueError(
            f"argmax holds indices outside [0, {plane}) for {name} {shape}: min {argmax.min()}, max {argmax.max()}"
        )
    return grad_y, np.ascontiguousarray(argmax, dtype=np.int64)


def avg_pool2d(
    x: np.ndarray,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """2-D average pooling, as :func:`torch.nn.functional.avg_pool2d`.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Zero padding, at most half the kernel.
    ceil_mode : bool
        Round the output size up, as :func:`max_pool2d`.
    count_include_pad : bool
        Divide by the window's size within the padded input (a ceil-mode window is cut at the right
        padding), padded zeros counted; ``False`` divides by its number of input elements.
    divisor_override : int, optional
        Divide every window's sum by this instead.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray, shape (N, C, H_out, W_out)
    """
    x = float_array("x", x, ndim=4)
    pads, signature, args = avg_pool_call(x.shape, x.dtype, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                          divisor_override)
    return dispatch.run("avg_pool2d", signature, (zero_padded(x, pads), *args), backend)  # padded: a temporary


def avg_pool_call(shape: tuple, dtype, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0,
                  ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> tuple:
    """What :func:`avg_pool2d` of an input of ``shape`` and ``dtype`` runs: ``(pads, signature, args)``, the
    ``avg_pool2d`` op taking the input zero-padded by ``pads`` and then ``args``, under ``signature``
    (for callers that pool inputs of one shape many times, as the inference plan)."""
    geo, scale = _avg_pool_geometry(shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                    divisor_override, dtype)
    pads = _avg_pool_pads(geo)
    padded = _padded_shape(shape, pads)
    check_allocation("padded avg_pool2d input", padded, dtype)
    return pads, (padded, geo.kernel, geo.stride, np.dtype(dtype).char), (geo, scale)


def _avg_pool_geometry(shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dtype):
    """The pool's geometry and the ``1 / divisor`` of every output cell (see :func:`._checks.avg_pool_scales`)."""
    ceil = flag("ceil_mode", ceil_mode)
    include = flag("count_include_pad", count_include_pad)
    if divisor_override is not None and (isinstance(divisor_override, (bool, np.bool_))
                                         or not isinstance(divisor_override, (int, np.integer)) or divisor_override < 1):
        raise ValueError(f"divisor_override must be None or a positive int, got {divisor_override!r}")
    geo = pool_geometry(shape, kernel_size, stride, padding, 1, ceil)
    return geo, avg_pool_scales(geo, shape[2:], include, divisor_override, dtype)


def _avg_pool_pads(geo) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding that holds every window: the pool's own, and ceil mode's extra at the bottom/right."""
    (ph, pw), (eh, ew) = geo.padding, geo.extra
    return ((ph, ph + eh), (pw, pw + ew))


def avg_pool2d_backward(
    grad_y: np.ndarray,
    input_shape: tuple[int, int, int, int],
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to its input of shape ``input_shape``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, H_out, W_out)
    input_shape : (N, C, H, W)
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend
        As passed to :func:`avg_pool2d`.

    Returns
    -------
    ndarray of ``input_shape``
    """
    shape = check_nchw_shape("input_shape", input_shape)
    grad_y = float_array("grad_y", grad_y, ndim=4)
    geo, scale = _avg_pool_geometry(shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                    divisor_override, grad_y.dtype)
    grad_y = check_grad("grad_y", grad_y, shape[:2] + geo.out_hw, grad_y.dtype)
    pads = _avg_pool_pads(geo)
    padded = _padded_shape(shape, pads)
    check_allocation("avg_pool2d_backward output", padded, grad_y.dtype)
    signature = (padded, geo.kernel, geo.stride, grad_y.dtype.char)
    args = (grad_y, padded, geo, scale)
    return cropped(dispatch.run("avg_pool2d_backward", signature, args, backend), pads)


def _plane(name: str, shape) -> tuple[int, int]:
    """The (H, W) of a global pool's input ``shape``, which must be NCHW with a non-empty plane."""
    if len(shape) != 4 or shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{name} must be (N, C, H, W) with H, W >= 1 for global pooling, got shape {tuple(shape)}")
    return shape[2], shape[3]


def global_avg_pool2d(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """The mean of every (sample, channel) plane: ``(N, C, H, W) -> (N, C)``, as
    ``torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)``; :func:`avg_pool2d` with one window."""
    x = float_array("x", x)
    _plane("x", x.shape)
    return dispatch.run("global_avg_pool2d", (x.shape, x.dtype.char), (x,), backend)


def global_avg_pool2d_backward(grad_y: np.ndarray, input_shape: tuple[int, int, int, int], *,
                               backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`global_avg_pool2d`: ``grad_y / (H * W)`` over every plane of ``input_shape``."""
    shape = check_nchw_shape("input_shape", input_shape)
    _plane("input_shape", shape)
    grad_y = float_array("grad_y", grad_y, ndim=2)
    grad_y = check_grad("grad_y", grad_y, shape[:2], grad_y.dtype)
    check_allocation("global_avg_pool2d_backward output", shape, grad_y.dtype)
    return dispatch.run("global_avg_pool2d_backward", (shape, grad_y.dtype.char), (grad_y, shape), backend)


def global_max_pool2d(x: np.ndarray, *, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The maximum of every (sample, channel) plane and its flat index: ``(N, C, H, W) -> (N, C)`` twice,
    as :func:`max_pool2d` with one window (ties to the first maximum, NaN wins)."""
    x = float_array("x", x)
    _plane("x", x.shape)
    return dispatch.run("global_max_pool2d", (x.shape, x.dtype.char), (x,), backend)


def global_max_pool2d_backward(grad_y: np.ndarray, argmax: np.ndarray, input_shape: tuple[int, int, int, int], *,
                               check_indices: bool = True, backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`global_max_pool2d`: ``grad_y`` at each plane's ``argmax``, 0 elsewhere.
    ``check_indices`` as :func:`max_pool2d_backward`."""
    shape = check_nchw_shape("input_shape", input_shape)
    _plane("input_shape", shape)
    grad_y, argmax = np.asarray(grad_y), np.asarray(argmax)
    if grad_y.ndim != 2 or argmax.ndim != 2:
        raise ValueError(f"grad_y {grad_y.shape} and argmax {argmax.shape} must be (N, C) for input_shape {shape}")
    grad_y, argmax = _pooled_gradient(grad_y[:, :, None, None], argmax[:, :, None, None], shape, "input_shape",
                                      check_indices)
    check_allocation("global_max_pool2d_backward output", shape, grad_y.dtype)
    return dispatch.run("global_max_pool2d_backward", (shape, grad_y.dtype.char),
                        (grad_y.reshape(shape[:2]), argmax.reshape(shape[:2]), shape), backend)


def relu(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """``max(x, 0)`` element-wise (NaN stays NaN), any shape.

    Parameters
    ----------
    x : ndarray
        float32 or float64.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of the shape and dtype of ``x``
    """
    x = float_array("x", x)
    return dispatch.run("relu", (x.shape, x.dtype.char), (x,), backend)


def relu_backward(grad_y: np.ndarray, y: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`relu`: ``grad_y`` where the output ``y`` is positive, else 0.

    Parameters
    ----------
    grad_y : ndarray
        Gradient with respect to the ReLU output.
    y : ndarray
        The output :func:`relu` returned, same shape.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of the shape and dtype of ``y``
    """
    y = float_array("y", y)
    grad_y = check_grad("grad_y", grad_y, y.shape, y.dtype)
    return dispatch.run("relu_backward", (y.shape, y.dtype.char), (grad_y, y), backend)


def add(a: np.ndarray, b: np.ndarray, *, relu: bool = False, backend: str | None = None) -> np.ndarray:
    """``a + b`` element-wise, through a ReLU (``max(a + b, 0)``, NaN kept) with ``relu``, in one pass:
    a residual block's output, and the ReLU after it.

    Parameters
    ----------
    a, b : ndarray
        float32 or float64, one shape and dtype (no broadcasting).
    relu : bool
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of the shape and dtype of ``a``
    """
    a, b = float_array("a", a), float_array("b", b)
    if b.dtype != a.dtype:
        raise TypeError(f"add: b has dtype {b.dtype} but a has dtype {a.dtype}; use one dtype for both")
    if b.shape != a.shape:
        raise ValueError(f"add: b has shape {b.shape} but a has shape {a.shape}; they must match (no broadcasting)")
    relu = bool(flag("relu", relu))
    return dispatch.run("add", (a.shape, a.dtype.char, relu), (a, b, relu), backend)


def _activation(op: str, x, backend: str | None) -> np.ndarray:
    x = float_array("x", x)
    return dispatch.run(op, (x.shape, x.dtype.char), (x,), backend)


def _activation_backward(op: str, grad_y, y, backend: str | None) -> np.ndarray:
    """Gradient op ``op`` of an activation from its output ``y``."""
    return _activation_gradient(op[: -len("_backward")], grad_y, y, (), (), backend, at="y")


def tanh(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """``tanh(x)`` element-wise, any shape, float32 or float64 (the same dtype out)."""
    return _activation("tanh", x, backend)


def tanh_backward(grad_y: np.ndarray, y: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`tanh` from its output ``y``: ``grad_y * (1 - y**2)``."""
    return _activation_backward("tanh_backward", grad_y, y, backend)


def sigmoid(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-x))`` element-wise, without overflow for any ``x``."""
    return _activation("sigmoid", x, backend)


def sigmoid_backward(grad_y: np.ndarray, y: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`sigmoid` from its output ``y``: ``grad_y * y * (1 - y)``."""
    return _activation_backward("sigmoid_backward", grad_y, y, backend)


def softmax(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Softmax over the last axis, shifted by each row's maximum so any finite values are safe."""
    return _activation("softmax", x, backend)


def softmax_backward(grad_y: np.ndarray, y: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`softmax` from its output ``y``: ``y * (grad_y - sum(grad_y * y))`` per row."""
    return _activation_backward("softmax_backward", grad_y, y, backend)


def _slope(negative_slope) -> float:
    if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(negative_slope, (int, float, np.floating, np.integer)) \
            or not np.isfinite(negative_slope):
        raise ValueError(f"negative_slope must be a finite number, got {negative_slope!r}")
    return float(negative_slope)


def _approximate(approximate) -> bool:
    """Whether GELU's ``approximate`` asks for the tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate == "tanh"


def _activation_gradient(name, grad_y, x, extra, described, backend, at: str = "x"):
    """Gradient ``name + "_backward"`` of an activation at ``x``, its input (or, with ``at="y"``, its
    output, for the ops whose gradient is computed from it); ``extra`` are the op's parameters,
    ``described`` those of them that the dispatch signature needs."""
    x = float_array(at, x)
    grad_y = check_grad("grad_y", grad_y, x.shape, x.dtype)
    return dispatch.run(name + "_backward", (x.shape, x.dtype.char) + described, (grad_y, x) + extra, backend)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01, *, backend: str | None = None) -> np.ndarray:
    """``x`` where positive, else ``negative_slope * x``, as :func:`torch.nn.functional.leaky_relu`.

    Parameters
    ----------
    x : ndarray
        float32 or float64, any shape.
    negative_slope : float
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of the shape and dtype of ``x``
    """
    x = float_array("x", x)
    slope = _slope(negative_slope)
    return dispatch.run("leaky_relu", (x.shape, x.dtype.char), (x, slope), backend)


def leaky_relu_backward(grad_y: np.ndarray, x: np.ndarray, negative_slope: float = 0.01, *,
                        backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`leaky_relu` at its input ``x``: ``grad_y`` where ``x > 0``, else
    ``negative_slope * grad_y``."""
    return _activation_gradient("leaky_relu", grad_y, x, (_slope(negative_slope),), (), backend)


def silu(x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """``x * sigmoid(x)`` (swish), as :func:`torch.nn.functional.silu`; any shape, float32 or float64."""
    x = float_array("x", x)
    return dispatch.run("silu", (x.shape, x.dtype.char), (x,), backend)


def silu_backward(grad_y: np.ndarray, x: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`silu` at its input ``x``: ``grad_y * s * (1 + x * (1 - s))``, ``s = sigmoid(x)``."""
    return _activation_gradient("silu", grad_y, x, (), (), backend)


def gelu(x: np.ndarray, approximate: str = "none", *, backend: str | None = None) -> np.ndarray:
    """``x * Phi(x)``, Phi the standard normal CDF, as :func:`torch.nn.functional.gelu`.

    Parameters
    ----------
    x : ndarray
        float32 or float64, any shape.
    approximate : {"none", "tanh"}
        ``"tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, as PyTorch's.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of the shape and dtype of ``x``
    """
    x = float_array("x", x)
    op = "gelu_tanh" if _approximate(approximate) else "gelu"
    return dispatch.run(op, (x.shape, x.dtype.char), (x,), backend)


def gelu_backward(grad_y: np.ndarray, x: np.ndarray, approximate: str = "none", *,
                  backend: str | None = None) -> np.ndarray:
    """Gradient of :func:`gelu` at its input ``x``."""
    return _activation_gradient("gelu_tanh" if _approximate(approximate) else "gelu", grad_y, x, (), (), backend)


def dropout(x: np.ndarray, p: float, seed: int, *, backend: str | None = None) -> np.ndarray:
    """Inverted dropout: each element zeroed with probability ``p``, the others scaled by ``1/(1-p)``.

    The mask is a function of ``seed`` and the element's flat index (a SplitMix64 hash, the same on
    every backend and thread count), so it need not be kept: the gradient is
    ``dropout(grad_y, p, seed)`` with the same seed.

    Parameters
    ----------
    x : ndarray
        float32 or float64, any shape.
    p : float
        Drop probability in ``[0, 1)`` (used to 24 bits).
    seed : int
        In ``[0, 2**64)``.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    ndarray of the shape and dtype of ``x``
    """
    x = float_array("x", x)
    if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
        raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**64):
        raise ValueError(f"dropout seed must be an integer in [0, 2**64), got {seed!r}")
    keep = 1.0 - p
    args = (x, np.uint64(seed), np.uint64(round(keep * 2**24)), x.dtype.type(1.0 / keep))
    return dispatch.run("dropout", (x.shape, x.dtype.char), args, backend)


def _linear_inputs(x, weight):
    x = float_array("x", x, ndim=2)
    weight = float_array("weight", weight, ndim=2, dtype=x.dtype)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {x.shape} and weight {weight.shape} do not match: x must be (N, {weight.shape[1]})")
    return x, weight


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
           backend: str | None = None) -> np.ndarray:
    """Fully connected layer ``x @ weight.T + bias``, as :func:`torch.nn.functional.linear`.

    Parameters
    ----------
    x : ndarray, shape (N, in_features)
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,), optional
    backend : {"auto", "numba", "numpy"}, optional
        ``numpy`` is BLAS; ``numba`` is register tiles (see :mod:`fastcnn.kernels.linear_numba`).

    Returns
    -------
    ndarray, shape (N, out_features)
    """
    x, weight = _linear_inputs(x, weight)
    n_out = weight.shape[0]
    bias = _bias(bias, weight, x.dtype)
    if x.shape[0] == 0:
        return np.zeros((0, n_out), x.dtype)
    check_allocation("linear output", (x.shape[0], n_out), x.dtype)
    signature = (x.shape, weight.shape, x.dtype.char)
    return dispatch.run("linear", signature, (x, weight, bias), backend)


def linear_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, *, input_grad: bool = True,
                    backend: str | None = None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`linear` with respect to ``x``, ``weight`` and ``bias``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, out_features)
    x, weight, backend
        As passed to :func:`linear`.
    input_grad : bool
        Compute ``grad_x``; ``False`` returns None in its place.

    Returns
    -------
    grad_x : ndarray (N, in_features) or None
    grad_weight : ndarray (out_features, in_features)
    grad_bias : ndarray (out_features,)
    """
    x, weight = _linear_inputs(x, weight)
    grad_y = check_grad("grad_y", grad_y, (x.shape[0], weight.shape[0]), x.dtype)
    if x.shape[0] == 0:
        return (np.zeros_like(x) if input_grad else None), np.zeros_like(weight), np.zeros(weight.shape[0], x.dtype)
    signature = (x.shape, weight.shape, x.dtype.char)
    grad_w = dispatch.run("linear_grad_weight", signature, (grad_y, x), backend)
    grad_x = dispatch.run("linear_grad_input", signature, (grad_y, weight), backend) if input_grad else None
    return grad_x, grad_w, channel_sums(grad_y)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, *,
                          backend: str | None = None) -> tuple[float, np.ndarray, int]:
    """Mean cross-entropy of ``softmax(logits)`` against class labels, its gradient and the number of
    correct predictions, in one pass.

    The same loss as :func:`torch.nn.functional.cross_entropy` with integer targets; exact for logits
    of any size.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
    labels : ndarray of int, shape (N,)
        Class indices in ``[0, K)``.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    loss : float
        The mean over the N rows (0.0 for N = 0).
    grad : ndarray, shape (N, K)
        d loss / d logits, in the dtype of ``logits``.
    correct : int
        Rows whose largest logit (the first, on ties, as ``argmax``) is at the label.
    """
    logits = float_array("logits", logits, ndim=2)
    n, k = logits.shape
    labels = class_labels("labels", labels, n, k)  # (no labels fit when K = 0)
    if n == 0:
        return 0.0, np.zeros_like(logits), 0
    loss, grad, correct = dispatch.run("softmax_cross_entropy", (logits.shape, logits.dtype.char), (logits, labels), backend)
    return float(loss), grad, int(correct)


def _loss_inputs(pred, target):
    pred = float_array("pred", pred)
    target = np.asarray(target)
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    if target.dtype.kind not in "fiub":
        raise TypeError(f"target must be numeric, got dtype {target.dtype}")
    return pred, np.ascontiguousarray(target, dtype=pred.dtype)


def _mean_loss(op: str, backend: str | None, pred, target, *extra) -> tuple[float, np.ndarray]:
    if pred.size == 0:
        return 0.0, np.zeros_like(pred)
    return dispatch.run(op, (pred.shape, pred.dtype.char), (pred, target, *extra), backend)


def soft_cross_entropy(logits: np.ndarray, target: np.ndarray, *, backend: str | None = None) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against rows of probabilities (one-hot rows, or soft
    labels) and its gradient, as :func:`torch.nn.functional.cross_entropy` with probability targets.

    Parameters
    ----------
    logits : ndarray, shape (N, K)
    target : ndarray, shape (N, K)
        Each row a distribution over the K classes (rows that do not sum to 1 scale the loss).

    Returns
    -------
    loss : float
        The mean over the N rows (0.0 for N = 0).
    grad : ndarray, shape (N, K)
        d loss / d logits, in the dtype of ``logits``.
    """
    logits, target = _loss_inputs(logits, target)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, K), got shape {logits.shape}")
    return _mean_loss("soft_cross_entropy", backend, logits, target)


def mse_loss(pred: np.ndarray, target: np.ndarray, *, backend: str | None = None) -> tuple[float, np.ndarray]:
    """Mean squared error over every element, and its gradient w.r.t. ``pred``.

    Returns
    -------
    loss : float
        ``mean((pred - target)**2)``, summed in float64 (0.0 when empty).
    grad : ndarray of the shape and dtype of ``pred``
    """
    return _mean_loss("mse", backend, *_loss_inputs(pred, target))


def binary_cross_entropy(pred: np.ndarray, target: np.ndarray, eps: float = 1e-7, *,
                         backend: str | None = None) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of probabilities ``pred`` against ``target`` in [0, 1], and its
    gradient w.r.t. ``pred``. ``pred`` is clipped to ``[eps, 1 - eps]``, so 0 and 1 give finite losses.

    Returns
    -------
    loss : float
    grad : ndarray of the shape and dtype of ``pred``
    """
    pred, target = _loss_inputs(pred, target)
    if not (isinstance(eps, (int, float)) and 0 < eps < 0.5):
        raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}")
    if target.size and (target.min() < 0 or target.max() > 1):
        raise ValueError(f"binary_cross_entropy targets must be in [0, 1], got min {target.min()}, max {target.max()}")
    return _mean_loss("bce", backend, pred, target, pred.dtype.type(eps))


def _channels_view(name: str, x) -> np.ndarray:
    """``x`` (N, C, ...) as a C-contiguous ``(N, C, L)`` view, L the product of the trailing axes."""
    x = float_array(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, C, ...) with at least 2 dimensions, got shape {x.shape}")
    return x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:])))


def _channel_vector(name: str, value, channels: int, dtype) -> np.ndarray:
    v = float_array(name, value, ndim=1, dtype=dtype)
    if v.shape[0] != channels:
        raise ValueError(f"{name} must hold one value per channel ({channels}), got shape {v.shape}")
    return v


def _inv_std(var: np.ndarray, eps: float, dtype) -> np.ndarray:
    """``1 / sqrt(var + eps)`` computed in float64, in ``dtype``."""
    return (1.0 / np.sqrt(np.asarray(var, np.float64) + eps)).astype(dtype)


def batch_norm_scale_shift(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                           eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm as a per-channel affine map: ``y = x * scale + shift``.

    ``scale = weight / sqrt(var + eps)`` and ``shift = bias - mean * scale``, in the dtype of
    ``weight``. With the running statistics, this is what inference folds into the preceding
    convolution (``w' = w * scale[:, None, None, None]``, ``b' = b * scale + shift``).
    """
    dtype = np.asarray(weight).dtype
    scale = np.asarray(weight, np.float64) * _inv_std(var, eps, np.float64)
    shift = np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * scale
    return scale.astype(dtype), shift.astype(dtype)


def batch_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray | None = None,
               var: np.ndarray | None = None, *, eps: float = 1e-5, relu: bool = False,
               backend: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalisation over every axis but the channel axis 1, optionally followed by a ReLU.

    Parameters
    ----------
    x : ndarray, shape (N, C, ...)
        ``(N, C, H, W)`` for BatchNorm2D, ``(N, C)`` for BatchNorm1D; float32 or float64.
    weight, bias : ndarray, shape (C,)
    mean, var : ndarray, shape (C,), optional
        The statistics to normalise with (running ones, at inference). When both are None, the
        batch's own are computed (training): mean and biased variance over N and the trailing axes.
    eps : float
    relu : bool
        Apply ``max(., 0)`` to the result in the same pass.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    y : ndarray of the shape and dtype of ``x``
    mean, var : ndarray (C,)
        The statistics used (the batch's in training: biased variance).
    """
    x3 = _channels_view("x", x)
    n, c, length = x3.shape
    weight = _channel_vector("weight", weight, c, x3.dtype)
    bias = _channel_vector("bias", bias, c, x3.dtype)
    if (mean is None) != (var is None):
        raise ValueError("batch_norm takes both mean and var (inference) or neither (batch statistics)")
    if mean is None:
        if n * length < 2:
            raise ValueError(f"batch_norm needs more than one value per channel for batch statistics, got x {np.shape(x)}")
        mean, var = dispatch.run("batch_norm_stats", (x3.shape, x3.dtype.char), (x3,), backend)
    else:
        mean = _channel_vector("mean", mean, c, x3.dtype)
        var = _channel_vector("var", var, c, x3.dtype)
    scale = weight * _inv_std(var, eps, x3.dtype)
    y = dispatch.run("batch_norm_apply", (x3.shape, x3.dtype.char, bool(relu)), (x3, mean, scale, bias, bool(relu)),
                     backend)
    return y.reshape(np.shape(x)), mean, var


def batch_norm_backward(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray, *,
                        eps: float = 1e-5, relu_output: np.ndarray | None = None,
                        backend: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of training-mode :func:`batch_norm` (batch statistics) with respect to ``x``,
    ``weight`` and ``bias``.

    Parameters
    ----------
    grad_y : ndarray
        Gradient with respect to the output, shaped as ``x``.
    x, weight : ndarray
        As passed to :func:`batch_norm`.
    mean, var : ndarray (C,)
        The batch statistics :func:`batch_norm` returned.
    eps : float
    relu_output : ndarray, optional
        The output of :func:`batch_norm` when it ran with ``relu=True``: the gradient flows where it
        is positive.
    backend : {"auto", "numba", "numpy"}, optional

    Returns
    -------
    grad_x : ndarray shaped as ``x``
    grad_weight, grad_bias : ndarray (C,)
    """
    grad3, x3, mean, inv_std, y3 = _backward_inputs(grad_y, x, mean, var, eps, relu_output)
    c = x3.shape[1]
    weight = _channel_vector("weight", weight, c, x3.dtype)
    if x3.size == 0:
        return np.zeros_like(x3).reshape(np.shape(x)), np.zeros(c, x3.dtype), np.zeros(c, x3.dtype)
    scale = weight * inv_std
    gx, gw, gb = dispatch.run("batch_norm_backward", (x3.shape, x3.dtype.char, y3 is not None),
                              (grad3, x3, mean, inv_std, scale, y3), backend)
    return gx.reshape(np.shape(x)), gw, gb


def batch_norm_stats(x: np.ndarray, *, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The batch statistics :func:`batch_norm` computes in training: per-channel mean and biased
    variance of ``x`` ``(N, C, ...)`` over every axis but 1, in ``x``'s dtype; zeros for an empty batch.

    With the number of values per channel, this is what a synchronised batch norm combines over
    processes (:class:`fastcnn.distributed.BatchNormSync`).
    """
    x3 = _channels_view("x", x)
    if x3.size == 0:
        return np.zeros(x3.shape[1], x3.dtype), np.zeros(x3.shape[1], x3.dtype)
    return dispatch.run("batch_norm_stats", (x3.shape, x3.dtype.char), (x3,), backend)


def batch_norm_grad_sums(grad_y: np.ndarray, x: np.ndarray, mean: np.ndarray, var: np.ndarray, *, eps: float = 1e-5,
                         relu_output: np.ndarray | None = None,
                         backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first half of :func:`batch_norm_backward`: the per-channel sums of ``grad_y * x_hat`` and
    of ``grad_y`` (``x_hat = (x - mean) / sqrt(var + eps)``; ``grad_y`` masked where ``relu_output`` is
    not positive), which are the gradients with respect to ``weight`` and ``bias``.

    Returns
    -------
    grad_weight, grad_bias : ndarray (C,)
    """
    grad3, x3, mean, inv_std, y3 = _backward_inputs(grad_y, x, mean, var, eps, relu_output)
    if x3.size == 0:
        return np.zeros(x3.shape[1], x3.dtype), np.zeros(x3.shape[1], x3.dtype)
    return dispatch.run("batch_norm_grad_sums", (x3.shape, x3.dtype.char, y3 is not None),
                        (grad3, x3, mean, inv_std, y3), backend)


def batch_norm_input_grad(grad_y: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, var: np.ndarray,
                          grad_weight: np.ndarray, grad_bias: np.ndarray, *, eps: float = 1e-5,
                          relu_output: np.ndarray | None = None, backend: str | None = None) -> np.ndarray:
    """The second half of :func:`batch_norm_backward`: the gradient with respect to ``x`` given the
    per-channel sums, ``s * g - s / count * (grad_bias + x_hat * grad_weight)`` with
    ``s = weight / sqrt(var + eps)``, ``g`` the (masked) ``grad_y`` and ``count`` the values per channel
    in ``x``.

    With the sums :func:`batch_norm_grad_sums` returns for the same arguments this is
    :func:`batch_norm_backward`'s ``grad_x``. A synchronised batch norm passes instead the mean over
    the processes of their sums, each weighted by its share of the global batch's values.
    """
    grad3, x3, mean, inv_std, y3 = _backward_inputs(grad_y, x, mean, var, eps, relu_output)
    c = x3.shape[1]
    weight = _channel_vector("weight", weight, c, x3.dtype)
    grad_weight = _channel_vector("grad_weight", grad_weight, c, x3.dtype)
    grad_bias = _channel_vector("grad_bias", grad_bias, c, x3.dtype)
    if x3.size == 0:
        return np.zeros_like(x3).reshape(np.shape(x))
    gx = dispatch.run("batch_norm_input_grad", (x3.shape, x3.dtype.char, y3 is not None),
                      (grad3, x3, mean, inv_std, weight * inv_std, y3, grad_weight, grad_bias), backend)
    return gx.reshape(np.shape(x))


def _backward_inputs(grad_y, x, mean, var, eps, relu_output):
    """The checked ``(grad, x, mean, 1 / sqrt(var + eps), relu_output)`` of the batch-norm gradient
    ops, arrays as ``(N, C, L)`` views (``relu_output`` None when not given)."""
    x3 = _channels_view("x", x)
    c = x3.shape[1]
    grad3 = check_grad("grad_y", grad_y, np.shape(x), x3.dtype).reshape(x3.shape)
    mean = _channel_vector("mean", mean, c, x3.dtype)
    var = _channel_vector("var", var, c, x3.dtype)
    y3 = None
    if relu_output is not None:
        y3 = check_grad("relu_output", relu_output, np.shape(x), x3.dtype).reshape(x3.shape)
    return grad3, x3, mean, _inv_std(var, eps, x3.dtype), y3
