"""RandomShiftRotate against exact shifts and rotations, seeding, and the fit hook; the resnet preset."""
import numpy as np
import pytest

import fastcnn
from fastcnn.augment import RandomShiftRotate

from .conftest import BACKENDS


def _images(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 2, 9, 9)).astype(np.float32)


@pytest.fixture
def backend(backend):
    """Each backend of the ``rotate_shift`` kernel in turn."""
    with fastcnn.use_backend(backend):
        yield backend


def test_no_shift_or_rotation_is_the_identity(backend):
    x = _images()
    np.testing.assert_allclose(RandomShiftRotate(0, 0, seed=0)(x), x, atol=1e-6)


def test_whole_pixel_shifts_and_quarter_turns_are_exact(backend):
    x = _images()
    aug2 = RandomShiftRotate(0, 0, seed=0)
    aug2.rng = _FixedDraws(angles=np.zeros(4), shifts=np.array([[1, -2, 0, 3], [2, 0, -1, -3]], float))
    y = aug2(x)
    for k, (dr, dc) in enumerate(zip([1, -2, 0, 3], [2, 0, -1, -3])):
        want = np.zeros_like(x[k])
        src = x[k][:, max(-dr, 0): 9 - max(dr, 0), max(-dc, 0): 9 - max(dc, 0)]
        want[:, max(dr, 0): 9 - max(-dr, 0), max(dc, 0): 9 - max(-dc, 0)] = src
        np.testing.assert_allclose(y[k], want, atol=1e-6)
    aug2.rng = _FixedDraws(angles=np.full(4, 90.0), shifts=np.zeros((2, 4)))
    np.testing.assert_allclose(aug2(x), np.rot90(x, 1, axes=(2, 3)), atol=1e-5)


def test_positions_far_outside_the_image_read_zeros(backend):
    x = _images()
    aug = RandomShiftRotate(0, 0, seed=0)
    aug.rng = _FixedDraws(angles=np.zeros(4), shifts=np.array([[20.5, -9.0, 0, 0], [0, 0, 9.25, -40]], float))
    np.testing.assert_array_equal(aug(x), np.zeros_like(x))


class _FixedDraws:
    """Stands in for the Generator: returns given angles (degrees) and shifts."""

    def __init__(self, angles, shifts):
        self.draws = [angles, shifts]

    def uniform(self, low, high, size):
        return self.draws.pop(0)


def _bilinear_reference(image, angle_degrees, shift):
    """One (C, H, W) image warped pixel by pixel in float64: the inverse rotation about the centre and
    shift of each output position, then its four neighbours weighted bilinearly (zero outside)."""
    c, h, w = image.shape
    cos, sin = np.cos(np.deg2rad(angle_degrees)), np.sin(np.deg2rad(angle_degrees))
    out = np.zeros((c, h, w))
    for r in range(h):
        for q in range(w):
            dr, dc = r - (h - 1) / 2 - shift[0], q - (w - 1) / 2 - shift[1]
            sr, sc = cos * dr + sin * dc + (h - 1) / 2, -sin * dr + cos * dc + (w - 1) / 2
            r0, c0 = int(np.floor(sr)), int(np.floor(sc))
            for rr, cc in ((r0, c0), (r0, c0 + 1), (r0 + 1, c0), (r0 + 1, c0 + 1)):
                if 0 <= rr < h and 0 <= cc < w:
                    out[:, r, q] += image[:, rr, cc] * (1 - abs(sr - rr)) * (1 - abs(sc - cc))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_backend_matches_a_pixel_by_pixel_reference(backend, dtype):
    x = np.random.default_rng(3).random((5, 3, 8, 11)).astype(dtype)
    angles, shifts = np.array([0, 7.5, -33, 90, 180.0]), np.array([[0.5, -1.25, 2, 0, 3.7], [0, 0.75, -2.5, 1, -9]])
    aug = RandomShiftRotate(0, 0, seed=0)
    aug.rng = _FixedDraws(angles=angles, shifts=shifts)
    got = aug(x)
    assert got.dtype == dtype and got.shape == x.shape
    for k in range(5):
        np.testing.assert_allclose(got[k], _bilinear_reference(x[k].astype(np.float64), angles[k], shifts[:, k]),
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


def test_seeded_reproducible_and_checked():
    x = _images(8)
    a, b = RandomShiftRotate(2, 10, seed=5), RandomShiftRotate(2, 10, seed=5)
    first = a(x)
    np.testing.assert_array_equal(first, b(x))
    assert first.dtype == x.dtype and first.shape == x.shape and not np.array_equal(first, a(x))
    assert 0 <= first.min() and first.max() <= 1  # bilinear weights are a convex combination (or zeros)
    with pytest.raises(ValueError, match="max_shift"):
        RandomShiftRotate(-1)
    with pytest.raises(ValueError, match="max_degrees"):
        RandomShiftRotate(1, float("nan"))
    with pytest.raises(ValueError, match="float32 or float64 batch"):
        a(np.zeros((2, 9, 9), np.float32))
    with pytest.raises(ValueError, match="float32 or float64 batch"):
        a(np.zeros((2, 1, 9, 9), np.float16))
    assert RandomShiftRotate(0, 0)(np.zeros((0, 1, 4, 4), np.float32)).shape == (0, 1, 4, 4)


def test_fit_applies_augment_to_training_batches_only():
    seen = []

    def augment(xb):
        seen.append(xb.shape)
        return xb * 0

    model = fastcnn.Sequential([fastcnn.Flatten(), fastcnn.Dense(4, 2, rng=0)], input_shape=(1, 2, 2))
    x = np.ones((6, 1, 2, 2), np.float32)
    model.fit(x, np.arange(6) % 2, epochs=1, batch_size=4, verbose=0, augment=augment, validation_data=(x, np.zeros(6, int)))
    assert seen == [(4, 1, 2, 2), (2, 1, 2, 2)]
    assert not model.layers[1].grads["weight"].any()  # the model saw only zeros


def test_resnet_preset_trains_a_step_and_uses_its_augmentation():
    model = fastcnn.models.resnet(seed=0)
    kwargs = model.recipe.fit_kwargs(0)
    assert isinstance(kwargs["augment"], RandomShiftRotate)
    assert any(isinstance(layer, fastcnn.Residual) for layer in model.layers)
    x = np.random.default_rng(0).random((8, 1, 28, 28)).astype(np.float32)
    kwargs.update(epochs=1, batch_size=4)
    with fastcnn.use_backend(fastcnn.available_backends()[0]):  # no per-shape measuring: this is not about speed
        history = model.fit(x, np.arange(8) % 10, verbose=0, **kwargs)
        assert model.predict(x).shape == (8, 10)
    assert np.isfinite(history["loss"][0])
