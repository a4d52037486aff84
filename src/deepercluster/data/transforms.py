"""Image transforms of DeeperCluster (arXiv 1905.01278, Sec. 4 of ALGORITHM.md).

- Training: random-resized crop + horizontal flip, the rotation the view passes in, then
  ToTensor + ImageNet normalisation (a 90° turn only permutes pixels, so this equals the
  paper's order: normalise, then rotate).
- Clustering: resize the shorter side to 256/224 × resolution, centre crop, normalise. No
  rotation: features for k-means come from upright images.

Both resize with Pillow's antialiased bilinear filter, as torchvision does on a PIL image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClusterTransform",
    "TrainTransform",
    "normalize",
    "rotate",
    "to_normalized_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ClusterTransform trims the long side of extreme panoramas/strips to this many short sides.
_MAX_ASPECT = 4

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
# (v / 255 - mean) / std as one multiply and one subtract on the 8-bit values, (3, 1, 1).
_SCALE = (1.0 / (255.0 * _STD)).numpy()
_SHIFT = (_MEAN / _STD).numpy()


# Pillow's counter-clockwise turns by r * 90 degrees, as ``rotate`` turns a tensor.
_TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def _check_rotation(r: int) -> None:
    if isinstance(r, bool) or int(r) != r or not 0 <= r <= 3:
        raise ValueError(f"rotation must be 0, 1, 2 or 3 (multiples of 90 degrees), got {r!r}")


def rotate(x: Tensor, r: int) -> Tensor:
    """Rotate the last two dimensions by ``r * 90`` degrees counter-clockwise.

    Args:
        x: Tensor of shape (..., H, W), e.g. one image (3, H, W) or a batch (B, 3, H, W).
        r: Rotation index in {0, 1, 2, 3} (the RotNet / DeeperCluster rotation label).

    Returns:
        Tensor of shape (..., W, H) for odd ``r``, (..., H, W) otherwise.

    Raises:
        ValueError: ``r`` is not in 0..3.
    """
    _check_rotation(r)
    return x if r == 0 else torch.rot90(x, int(r), dims=(-2, -1))


def normalize(x: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of (3, H, W) or (B, 3, H, W) values in [0, 1]."""
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


def to_normalized_tensor(img: Image.Image) -> Tensor:
    """``PIL.Image`` (H, W) in RGB (else converted) -> float32 tensor (3, H, W), normalised."""
    pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB")).transpose(2, 0, 1)
    # numpy, not torch: at 32 px the per-operation overhead, not the arithmetic, dominates a
    # worker's time, and numpy's is lower.
    out = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, _SCALE, out=out)
    out -= _SHIFT
    return torch.from_numpy(out)


class TrainTransform:
    """Random-resized crop + horizontal flip + normalisation, driven by a random source.

    Randomness comes only from the ``rng`` argument (a numpy ``Generator``), never from
    torch's or numpy's global state: the training view derives one stream per epoch
    position, so a sample's augmentation is the same whatever the number of DataLoader
    workers and when a run resumes mid-epoch.

    Args:
        resolution: Output side R in pixels (224 in the paper).
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio (width / height), sampled log-uniformly.
        hflip: Flip horizontally with probability 1/2 (the paper does). Turn it off for chiral
            data such as digits or text, where a mirrored image is not a plausible image.
    """

    def __init__(
        self,
        resolution: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        *,
        hflip: bool = True,
    ) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.resolution = resolution
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self._log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def crop_params(
        self, width: int, height: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """Crop box ``(top, left, height, width)``, as torchvision's ``RandomResizedCrop``.

        Up to 10 tries of a random area and log-uniform aspect ratio that fits the image;
        otherwise the largest central crop whose ratio lies within ``ratio``.
        """
        area = height * width
        log_ratio = self._log_ratio
        for _ in range(10):
            target_area = area * float(rng.uniform(self.scale[0], self.scale[1]))
            aspect = math.exp(float(rng.uniform(log_ratio[0], log_ratio[1])))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, max(h, 1), max(w, 1)

    def __call__(self, img: Image.Image, rng: np.random.Generator, rotation: int = 0) -> Tensor:
        """Augment one image, then rotate it by ``rotation * 90`` degrees counter-clockwise.

        Args:
            img: RGB image of any size.
            rng: Source of all randomness for this sample.
            rotation: Rotation index in {0, 1, 2, 3}; the result equals
                ``rotate(transform(img, rng), rotation)``.

        Returns:
            Contiguous float32 tensor of shape (3, R, R), ImageNet-normalised.

        Raises:
            ValueError: ``rotation`` is not in 0..3.
        """
        _check_rotation(rotation)
        top, left, h, w = self.crop_params(img.width, img.height, rng)
        # The coin is always drawn so the crop stream does not depend on the setting.
        flip = rng.random() < 0.5 and self.hflip
        r = self.resolution
        # What torchvision's resized_crop does on a PIL image: crop, then an antialiased
        # bilinear resize.
        box = img.crop((left, top, left + w, top + h))
        resized = box.resize((r, r), Image.Resampling.BILINEAR)
        if flip:
            resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        turn = _TURNS[rotation]
        return to_normalized_tensor(resized if turn is None else resized.transpose(turn))

    def __repr__(self) -> str:
        return (
            f"TrainTransform(resolution={self.resolution}, scale={self.scale}, "
            f"ratio={self.ratio}, hflip={self.hflip})"
        )


class ClusterTransform:
    """Deterministic resize + centre crop + normalisation for feature extraction.

    Args:
        resolution: Output side R in pixels (224 in the paper).
        resize: Shorter side before cropping; default ``round(R * 256 / 224)`` (256 for 224).
    """

    def __init__(self, resolution: int, resize: int | None = None) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        resize = round(resolution * 256 / 224) if resize is None else resize
        if resize < resolution:
            raise ValueError(
                f"resize ({resize}) must be at least resolution ({resolution}), otherwise the "
                f"centre crop would pad with black; use resize >= resolution"
            )
        self.resolution = resolution
        self.resize = resize

    def __call__(self, img: Image.Image) -> Tensor:
        """Image of any size -> float32 tensor (3, R, R), ImageNet-normalised.

        torchvision's ``resize(resize, BILINEAR, antialias=True)`` then ``center_crop(R)``,
        computed as one Pillow resize of the source box that the centre crop covers, so only
        the R x R pixels kept are resampled. The filter weights start from the box's origin
        instead of the image's: an output pixel can differ from torchvision's by up to two
        grey levels (tested).
        """
        width, height = img.size
        short, long = min(width, height), max(width, height)
        if long > _MAX_ASPECT * short:
            # The centre crop keeps only the middle `short` pixels of the long side; cutting
            # the long side of a strip (a 1x20000 spacer GIF) to a few times that first
            # bounds the work and sets the strip's scale, as tested.
            w, h = min(width, _MAX_ASPECT * short), min(height, _MAX_ASPECT * short)
            top, left = _centre(height, h), _centre(width, w)
            img = img.crop((left, top, left + w, top + h))
            width, height = img.size
            long = max(width, height)
        # torchvision's output size: short side -> resize, long side truncated (not rounded).
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        r = self.resolution
        top, left = _centre(size[1], r), _centre(size[0], r)
        if size == (width, height):  # torchvision returns the image itself when equal
            return to_normalized_tensor(img.crop((left, top, left + r, top + r)))
        # The crop's window in source pixels: output pixel j of the resized image has its
        # centre at source (j + 0.5) * width / size[0], as in Pillow's full resize.
        sx, sy = width / size[0], height / size[1]
        box = (left * sx, top * sy, (left + r) * sx, (top + r) * sy)
        return to_normalized_tensor(img.resize((r, r), Image.Resampling.BILINEAR, box=box))

    def __repr__(self) -> str:
        return f"ClusterTransform(resolution={self.resolution}, resize={self.resize})"


def _centre(length: int, crop: int) -> int:
    """Offset of a centred ``crop`` in ``length`` pixels, rounded as torchvision's center_crop."""
    return round((length - crop) / 2.0)  # Python's round: halves to even, as torchvision
