"""A minimal PNG reader (8-bit, non-interlaced, gray/RGB with or without alpha), so `fastcnn predict`
needs no imaging library."""
from __future__ import annotations

import struct
import zlib

import numpy as np

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def read_png_gray(path) -> np.ndarray:
    """Read a PNG as a float32 gray image in [0, 1] of shape (H, W)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if len(chunk) != length:
            raise ValueError(f"{path}: truncated PNG chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path}: PNG has no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in _CHANNELS or interlace:
        raise ValueError(f"{path}: only 8-bit, non-interlaced gray/RGB(A) PNGs are supported "
                         f"(bit depth {depth}, color type {color}, interlace {interlace})")
    channels = _CHANNELS[color]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"{path}: damaged PNG data ({exc})") from None
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"{path}: PNG data has {len(raw)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for r in range(height):
        f, line = rows[r, 0], rows[r, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        elif f in (1, 3, 4):
            cur = np.zeros(stride, np.int32)
            for i in range(stride):  # these filters depend on the byte to the left
                a = cur[i - channels] if i >= channels else 0
                b = prev[i]
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    c = prev[i - channels] if i >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) & 0xFF
        else:
            raise ValueError(f"{path}: unknown PNG filter {f}")
        out[r] = prev = cur
    pixels = out.reshape(height, width, channels).astype(np.float32) / 255
    gray = pixels[..., 0] if channels < 3 else pixels[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if channels in (2, 4):  # composite on black, MNIST's background
        gray = gray * pixels[..., -1]
    return gray
