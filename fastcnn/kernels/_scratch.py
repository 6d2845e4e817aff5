"""Scratch arrays for the temporaries of one op call, kept per thread and reused from call to call.

A training step asks for the same large temporaries every time (a convolution's runs, for one). Memory
fresh from the system costs a page fault per 4 KiB page, and the allocator gives large blocks back
when they are freed, so without reuse those faults come again at every step: for the 32->64
convolutions of the ``pytorch_example`` network they were about a sixth of the training time.
Like oneDNN's global scratchpad, each thread keeps one buffer per role, grown to the largest request.
"""
from __future__ import annotations

import threading

import numpy as np

_KEEP_BYTES = 1 << 28  # larger temporaries are allocated afresh on every call, not kept
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
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    if nbytes > _KEEP_BYTES:
        return np.empty(shape, dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(role)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[role] = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)
