"""A user's picture of a digit as the 28x28 image an MNIST model expects (needs Pillow:
``pip install 'fastcnn[image]'``).

:func:`read_gray` reads any file Pillow can open (PNG of any bit depth or colour type, JPEG, GIF, BMP,
TIFF, WebP, ...) as gray levels in [0, 1]: the EXIF orientation a phone records is applied and
transparent pixels are laid on white, as a viewer shows them. :func:`mnist_style` then does what
was done to the MNIST digits themselves: it decides which of ink and paper is the darker (MNIST is
white ink on black, so a dark-on-light drawing is inverted), crops to the ink, scales the ink to fit
a 20x20 box keeping its aspect ratio (with antialiasing), and places it in a 28x28 field so that its
centre of mass is at the field's centre. :func:`load_digit` does both.

>>> from fastcnn.images import load_digit
>>> x = load_digit("seven.jpg")          # (28, 28) float32, white digit on black, in [0, 1]
>>> model.predict(x[None, None]).argmax()
"""
from __future__ import annotations

import os

import numpy as np

from . import _files

__all__ = ["read_gray", "mnist_style", "load_digit", "save_gray"]

#: MNIST's geometry: the ink fits a BOX x BOX square, centred by mass in a FIELD x FIELD image.
BOX, FIELD = 20, 28
# The mean centre of mass of the MNIST test digits, in pixel indices, is (13.99, 14.00).
_CENTRE = FIELD / 2
# Pixels darker (after inversion: fainter) than this share of the strongest ink are paper: JPEG
# noise and anti-aliased paper texture must not widen the crop.
_INK_THRESHOLD = 0.2
# Gray levels of the ITU-R 601 luma, as Pillow's own "L" conversion.
_LUMA = np.array([0.299, 0.587, 0.114])


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'fastcnn[image]' (or pip install Pillow)") from None
    return Image, ImageOps


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as gray levels.

    Parameters
    ----------
    path : path-like
        Any image Pillow reads: every PNG bit depth and colour type (1-bit, palette, 16-bit, with or
        without alpha), JPEG, GIF, BMP, TIFF, WebP, ...

    Returns
    -------
    ndarray, shape (H, W), float32
        0 is black and 1 white; EXIF orientation applied; transparency composited on white.

    Raises
    ------
    ImportError
        Pillow is not installed.
    FileNotFoundError
        No such file.
    ValueError
        Not an image Pillow can read.
    """
    Image, ImageOps = _pil()
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except FileNotFoundError:
        raise
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)} is not an image Pillow can read ({exc})") from None
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit gray: scale, never clip at 255
        gray = np.asarray(img, np.float64) / 65535.0
        return np.clip(gray, 0.0, 1.0).astype(np.float32)
    if img.mode == "F":
        gray = np.asarray(img, np.float64)
        top = gray.max(initial=0.0)
        return np.clip(gray / top if top > 1 else gray, 0.0, 1.0).astype(np.float32)
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), np.float64) / 255.0
        alpha = rgba[..., 3]
        gray = rgba[..., :3] @ _LUMA * alpha + (1.0 - alpha)  # over white paper
        return gray.astype(np.float32)
    return (np.asarray(img.convert("L"), np.float32) / 255.0).astype(np.float32)


def _background_is_light(gray: np.ndarray) -> bool:
    """Paper is what the border shows most: a digit rarely fills the whole edge of its picture."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(border)) > 0.5


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """Turn a picture of one digit into an MNIST-like image, as MNIST's digits were made.

    Parameters
    ----------
    gray : ndarray, shape (H, W)
        Gray levels in [0, 1] (as :func:`read_gray` returns), any size, the digit anywhere.

    Returns
    -------
    ndarray, shape (28, 28), float32
        White ink on black: inverted if the paper was light, paper level mapped to 0, cropped to the
        ink, scaled (antialiased) so that the ink's longer side is 20 pixels, strongest ink 1, and
        shifted so that the ink's centre of mass is at (14, 14).

    Raises
    ------
    ValueError
        ``gray`` is not 2-D, or holds no ink (one flat colour).
    """
    Image, _ = _pil()
    gray = np.asarray(gray, np.float64)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected one gray image of shape (H, W), got shape {gray.shape}")
    ink = 1.0 - gray if _background_is_light(gray) else gray.copy()
    paper = float(np.median(np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])))
    ink = np.clip(ink - paper, 0.0, None)
    strongest = ink.max()
    if strongest <= 1e-3:
        raise ValueError("the image holds no digit: it is one flat colour")
    rows, cols = np.nonzero(ink >= _INK_THRESHOLD * strongest)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] / strongest
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(resized, np.float64), 0.0, None)  # Lanczos rings below 0
    small /= max(small.max(), 1e-12)
    h, w = small.shape
    yy, xx = np.mgrid[:h, :w]
    mass = small.sum()
    top = int(np.clip(round(_CENTRE - (yy * small).sum() / mass), 0, FIELD - h))
    left = int(np.clip(round(_CENTRE - (xx * small).sum() / mass), 0, FIELD - w))
    out = np.zeros((FIELD, FIELD), np.float32)
    out[top : top + h, left : left + w] = np.minimum(small, 1.0)
    return out


def load_digit(path: str | os.PathLike, preprocess: bool = True) -> np.ndarray:
    """Read a picture of a digit as an MNIST model's input.

    Parameters
    ----------
    path : path-like
        Any image Pillow reads.
    preprocess : bool
        True (default): :func:`mnist_style`. False: the picture as it is, inverted if its paper is
        light, resized to 28x28 (antialiased, aspect ratio not kept), for images already like MNIST's.

    Returns
    -------
    ndarray, shape (28, 28), float32 in [0, 1], white ink on black
        Use ``x[None, None]`` for a batch of one ``(1, 1, 28, 28)``.
    """
    gray = read_gray(path)
    if preprocess:
        try:
            return mnist_style(gray)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None
    Image, _ = _pil()
    if _background_is_light(gray):
        gray = 1.0 - gray
    if gray.shape != (FIELD, FIELD):
        gray = np.asarray(Image.fromarray(gray.astype(np.float32)).resize((FIELD, FIELD), Image.Resampling.LANCZOS))
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def save_gray(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a gray image in [0, 1] (e.g. what :func:`load_digit` returned) as an 8-bit PNG, atomically."""
    Image, _ = _pil()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected one gray image of shape (H, W), got shape {image.shape}")
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    with _files.atomic_write(path) as fh:
        Image.fromarray(pixels).save(fh, format="PNG")
