"""The dense bilinear resize: Pillow's weights exactly, Pillow's 8-bit output within a level."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepercluster.data.resample import bilinear_weights, dense_resize_pays, resize_scaled

_SIZES = [(1, 5), (5, 1), (7, 7), (13, 32), (32, 32), (37, 32), (32, 24), (100, 32), (97, 13)]


@pytest.mark.parametrize(("n_in", "n_out"), _SIZES)
def test_weights_are_pillows_float_resize(n_in: int, n_out: int) -> None:
    """Pillow resizes mode F images with its float weights and no rounding: exact reference."""
    values = np.random.default_rng(n_in * 100 + n_out).random((n_in, n_in), dtype=np.float32)
    theirs = np.asarray(
        Image.fromarray(values, mode="F").resize((n_out, n_out), Image.Resampling.BILINEAR)
    )
    weights = bilinear_weights(n_in, n_out)
    assert weights.shape == (n_out, n_in)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    ours = weights @ values.astype(np.float64) @ weights.T
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


@pytest.mark.parametrize(
    ("n_in", "n_out", "box"),
    [(32, 32, (2.3, 29.9)), (32, 24, (3.46, 28.54)), (50, 16, (0.0, 40.0)), (9, 20, (1.5, 8.0))],
)
def test_box_weights_are_pillows_float_resize_of_the_box(
    n_in: int, n_out: int, box: tuple[float, float]
) -> None:
    """The window's weights, the filter reaching past it into the image (as Pillow's)."""
    values = np.random.default_rng(n_in + n_out).random((n_in, n_in), dtype=np.float32)
    theirs = np.asarray(
        Image.fromarray(values, mode="F").resize(
            (n_out, n_out), Image.Resampling.BILINEAR, box=(box[0], box[0], box[1], box[1])
        )
    )
    weights = bilinear_weights(n_in, n_out, *box)
    np.testing.assert_allclose(weights @ values.astype(np.float64) @ weights.T, theirs, atol=2e-6)


def test_weights_are_cached_and_read_only() -> None:
    weights = bilinear_weights(29, 32)
    assert bilinear_weights(29, 32) is weights
    with pytest.raises(ValueError, match="read-only"):
        weights[0, 0] = 1.0
    with pytest.raises(ValueError, match="sizes must be positive"):
        bilinear_weights(0, 32)
    with pytest.raises(ValueError, match="window non-empty"):
        bilinear_weights(32, 32, 5.0, 5.0)


@pytest.mark.parametrize(
    ("height", "width", "size"), [(25, 27, 32), (32, 32, 32), (1, 9, 8), (60, 41, 24)]
)
def test_resize_scaled_is_pillows_rgb_resize_within_one_level(
    height: int, width: int, size: int
) -> None:
    rng = np.random.default_rng(height + width)
    image = rng.integers(0, 256, (height + 6, width + 4, 3), dtype=np.uint8)
    crop = image[3 : 3 + height, 1 : 1 + width]  # a strided view, as the transform passes
    scale = (1.0, 0.5, 2.0)
    out = resize_scaled(crop, size, scale)
    assert out.dtype == np.float32 and out.shape == (3, size, size) and out.flags.c_contiguous
    theirs = np.asarray(
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BILINEAR)
    ).transpose(2, 0, 1)
    levels = out / np.asarray(scale, dtype=np.float32)[:, None, None]
    # Pillow rounds to 8 bits after each of its passes; the products do not round.
    assert np.abs(levels - theirs).max() <= 1.0 + 1e-3
    if min(height, width) > 1:
        # Noise: the neighbouring column is many levels away, so a window one pixel off fails.
        assert np.abs(levels[:, :, 1:] - theirs[:, :, :-1]).max() > 8


def test_dense_path_covers_small_crops_only() -> None:
    assert dense_resize_pays(32, 32, 32)  # every CIFAR crop
    assert dense_resize_pays(64, 64, 64)
    assert not dense_resize_pays(336, 336, 224)  # a photo's crop to 224 px stays with Pillow
    assert not dense_resize_pays(112, 112, 224)
