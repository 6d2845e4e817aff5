"""Pictures of digits as users make them: every format Pillow reads, transparency, EXIF orientation, and
MNIST-style preprocessing (crop, fit 20x20, centre by mass), checked against MNIST's own digits."""
import numpy as np
import pytest

pytest.importorskip("PIL")  # the `image` extra, part of `dev`
from PIL import Image, ImageDraw  # noqa: E402

import fastcnn  # noqa: E402
from fastcnn import images  # noqa: E402
from fastcnn.datasets import load_mnist  # noqa: E402


def _seven(size=(400, 300), box=(40, 180, 100, 260), ink=0, paper=255, width=6, mode="L"):
    """A dark 7 drawn with lines inside ``box`` (left, top, right, bottom) of a light canvas."""
    img = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    draw.line([(left, top), (right, top), (left + (right - left) // 3, bottom)], fill=ink, width=width)
    return img


def _ink_box(image):
    rows, cols = np.nonzero(image > 0.2)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_formats_and_modes_read_alike(tmp_path):
    reference = np.asarray(_seven(), np.float32) / 255
    variants = {
        "gray.png": _seven(),
        "rgb.jpg": _seven(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255)),
        "palette.png": _seven(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255)).convert("P"),
        "onebit.png": _seven(mode="1", ink=0, paper=1),
        "sixteen.png": _seven(mode="I;16", ink=0, paper=65535),
        "bitmap.bmp": _seven(),
        "frame.gif": _seven(),
    }
    for name, img in variants.items():
        img.save(tmp_path / name)
        got = images.read_gray(tmp_path / name)
        assert got.shape == reference.shape and got.dtype == np.float32, name
        tolerance = 0.2 if name.endswith(".jpg") else 0.01  # JPEG rings near the strokes
        assert np.mean(np.abs(got - reference) > tolerance) < 0.01, name
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")  # really 16-bit on disk


def test_transparency_is_laid_on_white(tmp_path):
    """Drawing apps export ink on a transparent background; the transparent pixels' colour is black."""
    rgba = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(50, 50), (150, 50), (80, 170)], fill=(20, 20, 20, 255), width=8)
    rgba.save(tmp_path / "ink.png")
    got = images.read_gray(tmp_path / "ink.png")
    alpha = np.asarray(rgba)[..., 3] / 255
    np.testing.assert_allclose(got, 1 - alpha + alpha * 20 / 255, atol=1e-6)
    pal = Image.new("P", (50, 50), 0)
    pal.putpalette([0, 0, 0, 10, 10, 10] + [0] * 762)
    ImageDraw.Draw(pal).line([(5, 5), (45, 45)], fill=1, width=3)
    pal.info["transparency"] = 0  # palette PNG with a transparent index (tRNS)
    pal.save(tmp_path / "pal.png", transparency=0)
    got = images.read_gray(tmp_path / "pal.png")
    assert got[0, 49] == 1.0 and got[25, 25] == pytest.approx(10 / 255, abs=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    upright = _seven(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores a portrait shot
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    got = images.read_gray(tmp_path / "phone.jpg")
    assert got.shape == (300, 400)
    expected = np.asarray(upright.convert("L"), np.float32) / 255
    assert np.mean(np.abs(got - expected) > 0.2) < 0.01


def test_unreadable_and_missing_files_are_clear(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        images.read_gray(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError):
        images.read_gray(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="no digit"):
        images.mnist_style(np.ones((40, 40)))
    Image.new("L", (40, 30), 255).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match=r"blank.png: the image holds no digit"):
        images.load_digit(tmp_path / "blank.png")
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        images.mnist_style(np.ones((1, 28, 28)))


def test_pillow_missing_gives_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(ImportError, match=r"pip install 'fastcnn\[image\]'"):
        images.read_gray("anything.png")


def test_small_digit_off_centre_is_cropped_scaled_and_centred_by_mass():
    gray = np.asarray(_seven(size=(600, 500), box=(30, 400, 60, 460), width=3), np.float32) / 255
    out = images.mnist_style(gray)
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0) and out.min() >= 0
    top, bottom, left, right = _ink_box(out)
    assert max(bottom - top + 1, right - left + 1) in (19, 20, 21)  # the longer side fills the 20x20 box
    assert (bottom - top) > (right - left)  # aspect kept: the 7 is taller than wide (60 x 30 drawn)
    yy, xx = np.mgrid[:28, :28]
    centre = (yy * out).sum() / out.sum(), (xx * out).sum() / out.sum()
    np.testing.assert_allclose(centre, (14, 14), atol=0.5)
    light_ink = images.mnist_style(1 - gray)  # white on black is not inverted
    np.testing.assert_allclose(light_ink, out, atol=1e-6)


def test_preprocessing_rebuilds_mnist_digits_from_big_shifted_drawings():
    """MNIST digits are themselves fitted to 20x20 and centred by mass, so blowing one up, inverting it
    and pasting it in a corner of a big canvas must give back nearly the original."""
    _, (xt, _) = load_mnist(as_float=True, quiet=True)
    rng = np.random.default_rng(0)
    scores = []
    for digit in xt[:40, 0]:
        side = int(rng.integers(60, 140))
        big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
        canvas = np.ones((320, 420), np.float32)
        top, left = rng.integers(0, 320 - side), rng.integers(0, 420 - side)
        canvas[top : top + side, left : left + side] = 1 - big
        scores.append(np.corrcoef(images.mnist_style(canvas).ravel(), digit.ravel())[0, 1])
    assert np.median(scores) > 0.9 and np.min(scores) > 0.5


@pytest.fixture(scope="module")
def mnist_model():
    (x, y), (xt, yt) = load_mnist(as_float=True, quiet=True)
    fastcnn.seed(0)
    model = fastcnn.models.lenet(seed=0)
    model.fit(x[:6000], y[:6000], epochs=1, batch_size=64, optimizer=fastcnn.Adam(2e-3), seed=0, verbose=0)
    return model, xt, yt


def test_digits_drawn_small_and_off_centre_are_read_as_a_person_would(mnist_model, tmp_path):
    """MNIST test digits drawn dark on white, small, anywhere on a large canvas, saved as PNG or JPEG:
    read with preprocessing they are classified about as well as the originals; without it, not."""
    model, xt, yt = mnist_model
    rng = np.random.default_rng(1)
    picked = np.arange(60)
    read, raw = [], []
    for i in picked:
        side = int(rng.integers(40, 90))
        digit = Image.fromarray((255 * xt[i, 0]).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (500, 380), (250, 250, 245))
        ink = Image.merge("RGB", [Image.eval(digit, lambda v: 255 - v)] * 3)
        canvas.paste(ink, (int(rng.integers(0, 500 - side)), int(rng.integers(0, 380 - side))),
                     mask=digit)  # only the ink, the canvas colour elsewhere
        path = tmp_path / (f"{i}.jpg" if i % 2 else f"{i}.png")
        canvas.save(path)
        read.append(images.load_digit(path))
        raw.append(images.load_digit(path, preprocess=False))
    truth = yt[picked]
    original = (model.predict(xt[picked]).argmax(1) == truth).mean()
    preprocessed = (model.predict(np.stack(read)[:, None]).argmax(1) == truth).mean()
    as_is = (model.predict(np.stack(raw)[:, None]).argmax(1) == truth).mean()
    assert original > 0.85
    assert preprocessed >= original - 0.1
    assert as_is < 0.5


def test_save_gray_writes_a_png_that_reads_back(tmp_path):
    image = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    images.save_gray(tmp_path / "x.png", image)
    np.testing.assert_allclose(images.read_gray(tmp_path / "x.png"), image, atol=0.5 / 255 + 1e-6)
