"""Transforms: rotation algebra, reproducible random crops, shapes, odd input sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from deepercluster.data import ClusterTransform, TrainTransform, normalize, rotate
from deepercluster.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    to_normalized_tensor,
)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_rotate_four_times_is_identity_and_shapes() -> None:
    x = torch.randn(2, 3, 5, 7)
    y = x
    for _ in range(4):
        y = rotate(y, 1)
    assert torch.equal(y, x)
    assert rotate(x, 1).shape == (2, 3, 7, 5) and rotate(x, 2).shape == x.shape
    assert torch.equal(rotate(rotate(x, 1), 3), x)
    assert torch.equal(rotate(x, 0), x)


def test_rotate_is_counter_clockwise() -> None:
    x = torch.tensor([[1, 2], [3, 4]])
    assert rotate(x, 1).tolist() == [[2, 4], [1, 3]]


@pytest.mark.parametrize("r", [-1, 4, 1.5, True])
def test_rotate_rejects_bad_r(r: int) -> None:
    with pytest.raises(ValueError, match="rotation must be 0, 1, 2 or 3"):
        rotate(torch.zeros(3, 2, 2), r)


@pytest.mark.parametrize("r", range(4))
def test_rotation_commutes_with_normalisation(r: int) -> None:
    x = torch.rand(3, 6, 9)
    assert torch.allclose(normalize(rotate(x, r)), rotate(normalize(x), r))


def test_train_transform_reproducible_per_seed() -> None:
    transform = TrainTransform(32)
    img = _image(80, 60)
    a = transform(img, np.random.default_rng([1, 2, 3]))
    b = transform(img, np.random.default_rng([1, 2, 3]))
    c = transform(img, np.random.default_rng([1, 2, 4]))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("resolution", [32, 64, 224])
@pytest.mark.parametrize("size", [(100, 80), (5, 300), (300, 5), (1, 1), (2, 20_000)])
def test_output_shapes_for_any_input(resolution: int, size: tuple[int, int]) -> None:
    img = _image(*size)
    for out in (
        TrainTransform(resolution)(img, np.random.default_rng(0)),
        ClusterTransform(resolution)(img),
    ):
        assert out.shape == (3, resolution, resolution) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_crop_params_stay_inside_and_fall_back_to_central_crop() -> None:
    transform = TrainTransform(32)
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = transform.crop_params(120, 90, rng)
        assert top >= 0 and top + h <= 90 and left >= 0 and left + w <= 120
        assert 0.08 * 120 * 90 * 0.9 <= h * w <= 120 * 90
    # A 300x5 strip cannot host any crop with area >= 8% and ratio <= 4/3: central fallback.
    assert transform.crop_params(300, 5, rng) == (0, 146, 5, 7)
    assert transform.crop_params(5, 300, rng) == (146, 0, 7, 5)
    for width, height in ((300, 5), (5, 300)):  # torchvision's fallback is deterministic too
        reference = RandomResizedCrop.get_params(_image(width, height), [0.08, 1.0], [3 / 4, 4 / 3])
        assert transform.crop_params(width, height, rng) == tuple(reference)


def test_cluster_transform_is_deterministic_and_normalised() -> None:
    transform = ClusterTransform(32)
    assert transform.resize == 37 and ClusterTransform(224).resize == 256
    img = _image(50, 40)
    assert torch.equal(transform(img), transform(img))
    solid = ClusterTransform(16)(Image.new("RGB", (30, 20), (255, 128, 0)))
    expected = [
        (v / 255 - m) / s
        for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    assert torch.allclose(solid.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("size", [(40, 400), (400, 40), (37, 1000)])
def test_trimming_extreme_strips_matches_resize_then_crop(size: tuple[int, int]) -> None:
    img = _image(*size, seed=3)
    transform = ClusterTransform(16)
    reference = TF.center_crop(TF.resize(img, transform.resize, antialias=True), [16, 16])
    assert (transform(img) - to_normalized_tensor(reference)).abs().max() < 0.05


def test_cluster_transform_keeps_the_centre() -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    img.paste((255, 255, 255), (16, 0, 48, 32))  # white centre square, black sides
    out = ClusterTransform(32, resize=32)(img)
    assert torch.allclose(out[0], torch.full((32, 32), (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="resize"):
        ClusterTransform(64, resize=32)
    with pytest.raises(ValueError, match="scale"):
        TrainTransform(32, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="resolution"):
        TrainTransform(0)


def _torchvision_reference(
    img: Image.Image, transform: TrainTransform, rng: np.random.Generator, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same decisions through torchvision's functional ops, then ``torch.rot90``.

    Returns our normalisation of torchvision's geometry (must match bit for bit) and
    torchvision's own ``to_tensor`` + ``normalize`` (equal up to float rounding).
    """
    top, left, h, w = transform.crop_params(img.width, img.height, rng)
    flip = rng.random() < 0.5
    size = [transform.resolution, transform.resolution]
    crop = TF.resized_crop(img, top, left, h, w, size, antialias=True)
    if flip:
        crop = TF.hflip(crop)
    ours = torch.rot90(to_normalized_tensor(crop), r, dims=(-2, -1))
    theirs = TF.normalize(TF.to_tensor(crop), list(IMAGENET_MEAN), list(IMAGENET_STD))
    return ours, torch.rot90(theirs, r, dims=(-2, -1))


@pytest.mark.parametrize("size", [(37, 29), (300, 200)])
def test_flip_and_rotation_equal_the_reference(size: tuple[int, int]) -> None:
    """Bit for bit torchvision's crop, resize and flip, then torch.rot90."""
    img = _image(*size, seed=5)
    transform = TrainTransform(24)
    seen = set()
    for key in range(32):
        probe = np.random.default_rng(key)
        transform.crop_params(img.width, img.height, probe)
        flip = probe.random() < 0.5
        for r in range(4):
            out = transform(img, np.random.default_rng(key), rotation=r)
            reference, torchvision_reference = _torchvision_reference(
                img, transform, np.random.default_rng(key), r
            )
            assert out.dtype == torch.float32 and out.shape == (3, 24, 24)
            assert out.is_contiguous()
            assert torch.equal(out, reference)
            assert torch.allclose(out, torchvision_reference, atol=1e-5)
            seen.add((flip, r))
    assert len(seen) == 8  # every flip x rotation combination was checked


def test_train_transform_rejects_bad_rotation() -> None:
    with pytest.raises(ValueError, match="rotation must be 0, 1, 2 or 3"):
        TrainTransform(8)(_image(10, 10), np.random.default_rng(0), rotation=4)


def _torchvision_cluster(img: Image.Image, transform: ClusterTransform) -> torch.Tensor:
    """ClusterTransform as torchvision's functional ops (the former implementation)."""
    short, long = sorted(img.size)
    if long > 4 * short:
        img = TF.center_crop(img, [min(img.height, 4 * short), min(img.width, 4 * short)])
    resized = TF.resize(img, transform.resize, antialias=True)
    return to_normalized_tensor(TF.center_crop(resized, [transform.resolution] * 2))


def _grey_levels(t: torch.Tensor) -> torch.Tensor:
    """Normalised (3, H, W) → the 0-255 levels it was made from."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return torch.round((t * std + mean) * 255)


@pytest.mark.parametrize(
    "size",
    [(32, 32), (37, 37), (50, 40), (33, 47), (500, 333), (1, 1), (3, 50), (41, 4000), (525, 350)],
)
@pytest.mark.parametrize(("resolution", "resize"), [(32, None), (24, 37), (16, 16), (224, None)])
def test_cluster_transform_is_torchvision_within_two_grey_levels(
    size: tuple[int, int], resolution: int, resize: int | None
) -> None:
    transform = ClusterTransform(resolution, resize)
    # Uniform noise: every pixel differs from its neighbours, so a window one pixel off, or
    # another filter, would differ by more than twice the tolerance (8+ levels even after a
    # 30x downscale).
    for img in (_image(*size, seed=4), _image(*size, seed=4).convert("L")):
        out = transform(img)
        assert out.is_contiguous() and out.shape == (3, resolution, resolution)
        reference = _grey_levels(_torchvision_cluster(img, transform))
        # Pillow rounds after each of its two passes: a one-level difference after the first
        # can become two after the second (seen: 32 x 32 in L mode to 37, cropped to 24).
        assert (_grey_levels(out) - reference).abs().max() <= 2
        if min(size) >= 4:
            shifted = torch.roll(reference, 1, dims=2)
            assert (_grey_levels(out) - shifted)[:, :, 1:].abs().max() > 4
