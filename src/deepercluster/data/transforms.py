"""Image transforms of DeeperCluster (arXiv 1905.01278, Sec. 4 of ALGORITHM.md).

- Training: random-resized crop + horizontal flip, then the rotation the view passes in,
  then ToTensor + ImageNet normalisation. Flip and rotation are strides of the pixel view
  read by the normalising multiply, so the order of the two last steps does not matter: a
  90° rotation only permutes pixel positions and normalisation acts per channel
  (``tests/unit/data/test_data_transforms.py`` checks both), as in the paper's order.
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

from .decode import RGBImage, as_pillow, check_pixels, crop, image_size

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


# (flip, r) → (row step, column step, output axes) of the (H, W, 3) pixel view that shows the
# image flipped horizontally (if flip), then rotated by r * 90° counter-clockwise, as
# (3, H', W'). Derivation: rot90 once is "reverse the columns, then swap rows and columns";
# twice reverses both; three times reverses the rows, then swaps; a flip first reverses the
# columns of the input. tests/unit/data/test_data_transforms.py checks all eight against
# Pillow's transpose + torch.rot90.
_ORIENTATIONS = {
    (flip, r): (
        -1 if r in (2, 3) else 1,
        (-1 if r in (1, 2) else 1) * (-1 if flip else 1),
        (2, 1, 0) if r % 2 else (2, 0, 1),
    )
    for flip in (False, True)
    for r in range(4)
}


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


def to_normalized_tensor(img: RGBImage) -> Tensor:
    """``PIL.Image`` (H, W) in RGB (else converted), or (H, W, 3) uint8 pixels → float32
    tensor (3, H, W), normalised."""
    return _normalized(_pixels(img).transpose(2, 0, 1))


def _pixels(img: RGBImage) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image (read-only view of its bytes), converted to RGB if
    need be; pixels are returned as they are.

    ``frombuffer(tobytes())`` rather than ``np.asarray``: Pillow's array interface calls
    ``tobytes`` too, plus its own overhead.
    """
    if isinstance(img, np.ndarray):
        return check_pixels(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(img.height, img.width, 3)


def _normalized(pixels: np.ndarray) -> Tensor:
    """(3, H, W) uint8 view with any strides → contiguous normalised float32 tensor (3, H, W).

    numpy, not torch: at 32 px the per-operation overhead, not the arithmetic, is what a
    worker spends its time on, and numpy's is lower. The multiply is the one copy: it reads
    through the view's strides (so flips, rotations and crops cost nothing before it) and
    writes the output.
    """
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

    def __call__(self, img: RGBImage, rng: np.random.Generator, rotation: int = 0) -> Tensor:
        """Augment one image, then rotate it by ``rotation * 90`` degrees counter-clockwise.

        Args:
            img: RGB image of any size (Pillow image or (H, W, 3) uint8 pixels).
            rng: Source of all randomness for this sample.
            rotation: Rotation index in {0, 1, 2, 3}; the result equals
                ``rotate(transform(img, rng), rotation)`` without the second copy.

        Returns:
            Contiguous float32 tensor of shape (3, R, R), ImageNet-normalised.

        Raises:
            ValueError: ``rotation`` is not in 0..3.
        """
        _check_rotation(rotation)
        width, height = image_size(img)
        top, left, h, w = self.crop_params(width, height, rng)
        # The coin is always drawn so the crop stream does not depend on the setting.
        flip = rng.random() < 0.5 and self.hflip
        # Flip and rotation as strides of a view, so the normalising step is the only copy
        # after the resize.
        rows, cols, axes = _ORIENTATIONS[flip, rotation]
        r = self.resolution
        # What torchvision's resized_crop does on a PIL image: crop, then an antialiased
        # bilinear resize.
        box = as_pillow(crop(img, left, top, left + w, top + h))
        resized = box.resize((r, r), Image.Resampling.BILINEAR)
        return _normalized(_pixels(resized)[::rows, ::cols].transpose(axes))

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

    def __call__(self, img: RGBImage) -> Tensor:
        """Image of any size (Pillow image or (H, W, 3) uint8 pixels) → float32 tensor
        (3, R, R), ImageNet-normalised.

        torchvision's ``resize(resize, BILINEAR, antialias=True)`` then ``center_crop(R)``,
        computed as one Pillow resize of the source box that the centre crop covers: only the
        R x R pixels kept are resampled, with the same filter over the same source pixels
        (the whole image, not the box, bounds the filter's support), instead of the whole
        resized image. The filter weights are computed from the box's origin instead of the
        image's, so they differ in their last bits, and Pillow rounds after each of its two
        passes: an output pixel can differ from torchvision's by up to two grey levels
        (tested).
        """
        width, height = image_size(img)
        short, long = min(width, height), max(width, height)
        if long > _MAX_ASPECT * short:
            # The centre crop only keeps the middle `short` pixels of the long side, so cutting
            # the long side to a few times that first changes nothing we keep. (This guarded
            # the full resize of a 1×20000 spacer GIF, 256×5M pixels; the box resize below
            # never builds that image, but the cut still sets a strip's scale, as tested.)
            keep = _MAX_ASPECT * short
            top, left = _centre(height, min(height, keep)), _centre(width, min(width, keep))
            img = crop(img, left, top, left + min(width, keep), top + min(height, keep))
            width, height = image_size(img)
            long = max(width, height)
        # torchvision's output size: short side -> resize, long side truncated (not rounded).
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        r = self.resolution
        top, left = _centre(size[1], r), _centre(size[0], r)
        if size == (width, height):  # torchvision returns the image itself when equal
            return _normalized(_pixels(img)[top : top + r, left : left + r].transpose(2, 0, 1))
        # The crop's window in source pixels: output pixel j of the resized image has its
        # centre at source (j + 0.5) * width / size[0], as in Pillow's full resize.
        sx, sy = width / size[0], height / size[1]
        box = (left * sx, top * sy, (left + r) * sx, (top + r) * sy)
        resized = as_pillow(img).resize((r, r), Image.Resampling.BILINEAR, box=box)
        return _normalized(_pixels(resized).transpose(2, 0, 1))

    def __repr__(self) -> str:
        return f"ClusterTransform(resolution={self.resolution}, resize={self.resize})"


def _centre(length: int, crop: int) -> int:
    """Offset of a centred ``crop`` in ``length`` pixels, rounded as torchvision's center_crop."""
    return round((length - crop) / 2.0)  # Python's round: halves to even, as torchvision
