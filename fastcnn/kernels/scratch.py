"""Scratch arrays for the temporaries of one op call, kept per thread and reused from call to call.

A training step asks for the same large temporaries every time (a convolution's runs, for one). Memory
fresh from the system costs a page fault per 4 KiB page, and the allocator gives large blocks back
when they are freed, so without reuse those faults come again at every step: for the 32->64
convolutions of the ``pytorch_example`` network they were about a sixth of the training time.
Like oneDNN's global scratchpad, each thread keeps one buffer per role, grown to the largest request.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

KEEP_BYTES = 1 << 28  # larger temporaries are allocated afresh on every call, not kept
_ALIGN = 64  # bytes: a kept buffer starts on a cache line, as the kernels' vector loads assume for speed
_local = threading.local()


def scratch(role: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array for a temporary that does not outlive the calling op.

    Parameters
    ----------
    role : str
        Names the temporary. Each call with the same role returns the same memory, so two
        temporaries alive at the same time need two roles.
    shape : tuple of int
    dtype : dtype

    Returns
    -------
    ndarray
        Contents left over from earlier calls: the caller writes every element it reads.
    """
    held = getattr(_local, "held", None)
    if held:
        held.pop(role, None)
    return _buffer(role, shape, np.dtype(dtype))


def derived(role: str, shape: tuple[int, ...], dtype: np.dtype | type, source: np.ndarray | tuple[np.ndarray, ...],
            layout: tuple, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """:func:`scratch` filled by ``fill(out)`` from ``source`` (an array or a tuple of them); inside
    ``with shared_inputs():``, the array an earlier op of the block filled from the same ``source`` and
    ``layout`` is returned as it is."""
    dtype = np.dtype(dtype)
    out = _buffer(role, shape, dtype)
    held = getattr(_local, "held", None) if _nbytes(shape, dtype) <= KEEP_BYTES else None
    sources = source if isinstance(source, tuple) else (source,)
    tag = _tag(sources, (tuple(shape), dtype, layout))
    kept = held.get(role) if held else None
    if kept is not None and kept[0] == tag:
        return out
    if held:
        held.pop(role, None)
    fill(out)
    if held is not None:
        held[role] = (tag, sources)
    return out


def shared(role: str, sources: tuple[np.ndarray, ...], layout: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``make()``, a new array computed from ``sources``; inside ``with shared_inputs():``, the array an
    earlier op of the block made for ``role`` from the same ``sources`` and ``layout`` (the caller
    must not write to it)."""
    held = getattr(_local, "held", None)
    tag = _tag(sources, layout)
    kept = held.get(role) if held else None
    if kept is not None and kept[0] == tag:
        return kept[2]
    result = make()
    if held is not None:
        held[role] = (tag, sources, result)
    return result


def _tag(sources: tuple[np.ndarray, ...], described: tuple) -> tuple:
    """What :func:`derived` and :func:`shared` compare: the sources' ids, shapes, strides and dtypes and
    what the caller describes. A block holds the sources it tagged, so no other array can take their
    ids while it keeps the tag."""
    return tuple((id(a), a.shape, a.strides, a.dtype) for a in sources) + described


class shared_inputs:  # lower case: used like a function, ``with shared_inputs():``
    """A block in which no op's input changes, so ops may share what :func:`derived` and :func:`shared`
    made from them (the two gradients of a convolution both need the output gradient's runs, for one)."""

    def __enter__(self) -> None:
        self._outer = getattr(_local, "held", None)
        _local.held = {}

    def __exit__(self, *exc_info) -> None:
        if self._outer:  # a nested block may have refilled the outer block's buffers
            self._outer.clear()
        _local.held = self._outer


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    return nbytes


def _buffer(role: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = _nbytes(shape, dtype)
    if nbytes > KEEP_BYTES:
        return np.empty(shape, dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    kept = buffers.get(role)
    if kept is not None and kept[1] == shape and kept[2] == dtype:
        return kept[3]  # the view the last call made: most calls ask for the same shape again
    buf = None if kept is None else kept[0]
    if buf is None or buf.nbytes < nbytes:
        buf = aligned_bytes(nbytes)
    view = buf[:nbytes].view(dtype).reshape(shape)
    buffers[role] = (buf, shape, dtype, view)
    return view


def aligned_bytes(nbytes: int) -> np.ndarray:
    """``nbytes`` uninitialised bytes (a uint8 array) starting on a cache line, as the kernels' vector
    loads assume for speed."""
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.__array_interface__["data"][0] % _ALIGN
    return raw[start : start + nbytes]


NO_PADDING = ((0, 0), (0, 0))  # ((top, bottom), (left, right)), as zero_padded and cropped take it
_PADDED_KEPT = 16  # zero-padded inputs kept per thread: one per padded conv or pool of a network, as a rule


def zero_padded(x: np.ndarray, padding: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """``x`` (N, C, H, W) with ``padding`` ``((top, bottom), (left, right))`` zeros around its planes, as
    ``np.pad`` gives it, in an array kept per thread for this input shape, padding and dtype.

    The kept array's margins are zeroed once, when it is made, and nothing but its interior is ever
    written again, so a call copies ``x`` in and nothing more: no fresh memory (a page fault per 4 KiB
    on every call, see the module docstring), no zeros written. Like :func:`scratch`, the result is a
    temporary of the calling op: the next call for the same shapes in this thread overwrites it. The
    :data:`_PADDED_KEPT` arrays used last are kept, at most :data:`KEEP_BYTES` in all. Without
    padding, ``x`` itself.
    """
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return x
    n, c, h, w = x.shape
    shape = (n, c, h + top + bottom, w + left + right)
    key = (x.shape, padding, x.dtype.str)  # not the padded shape: two inputs padded to one size differ in margins
    kept = getattr(_local, "padded", None)
    if kept is None:
        kept = _local.padded = {}
    xp = kept.pop(key, None)
    if xp is None:
        xp = np.zeros(shape, x.dtype)
    if xp.nbytes <= KEEP_BYTES:
        while kept and (len(kept) >= _PADDED_KEPT or sum(a.nbytes for a in kept.values()) + xp.nbytes > KEEP_BYTES):
            kept.pop(next(iter(kept)))  # the least recently used
        kept[key] = xp  # last in the dict: the most recently used
    xp[:, :, top : top + h, left : left + w] = x
    return xp


def cropped(xp: np.ndarray, padding: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Undo :func:`zero_padded`: the planes of ``xp`` (N, C, Hp, Wp) without ``padding`` ``((top,
    bottom), (left, right))``, a new C-contiguous array (``xp`` itself without padding)."""
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return xp
    h, w = xp.shape[2:]
    return np.ascontiguousarray(xp[:, :, top : h - bottom, left : w - right])
