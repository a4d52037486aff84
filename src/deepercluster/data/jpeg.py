"""Fast path for plain JPEGs: libjpeg-turbo through torchvision, the same pixels as Pillow.

Pillow parses a JPEG's header in Python before its C decoder runs: for a 32 px CIFAR image
that parse is most of the ~130 us that ``Image.open`` + ``load`` take, against ~35 us for
torchvision's ``decode_jpeg`` of the same bytes (docs/performance.md, round 3). Both
call libjpeg-turbo with its defaults (integer IDCT, fancy upsampling), so the pixels are equal
bit for bit (checked on all 3,000 CIFAR test JPEGs and 400 photos of the shared pool).

It pays for small images only. Above ~128 x 128 pixels Pillow decodes as fast, and copying
the decoded (H, W, 3) array into a Pillow image (which stores 4 bytes a pixel) costs more
than the header parse saves: ~2 ns a pixel, 12% slower on the shared 525 x 350 photos. The
decoded array itself is what the data views' transforms read (``decode.decode_pixels``): a
Pillow image of it and the copy back out cost 18 + 9 us per 32 px image.

Only *plain* JPEGs take this path: 8-bit samples, 1 or 3 components, Huffman baseline,
extended or progressive coding, no APP1 segment (EXIF or XMP: orientation is applied by
Pillow's code) and no Adobe APP14 segment (colour transforms), at most ``FAST_MAX_PIXELS``.
Anything else, and any error of the decoder, returns None: the caller then decodes with
Pillow, which also classifies broken files (truncated, corrupt) for the skip log. At first
use a self-check decodes a few small JPEGs both ways and turns the path off unless every
pixel agrees (e.g. a torchvision built against another libjpeg).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image

__all__ = ["FAST_MAX_PIXELS", "decode_plain_jpeg", "plain_jpeg_size"]

#: Largest image (width x height) decoded here. ``decode_image`` of shared photos resized to
#: 32 px: 1.55x faster than through Pillow, 96 px: 1.34x, 128 px: even (interleaved A/B).
FAST_MAX_PIXELS = 128 * 128

JPEG_MAGIC = b"\xff\xd8\xff"

# Start-of-frame markers of 8-bit Huffman-coded images libjpeg decodes: baseline, extended,
# progressive. The other SOF markers (lossless, hierarchical, arithmetic) go to Pillow.
_PLAIN_SOF = frozenset({0xC0, 0xC1, 0xC2})
_OTHER_SOF = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not SOFs
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length
_APP1, _APP14, _SOS = 0xE1, 0xEE, 0xDA
_RGB = 3  # torchvision.io.ImageReadMode.RGB.value


def plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a plain JPEG (see the module docstring), None for any other file.

    Walks the marker segments up to the start of scan; a dozen steps for a typical file.
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    size = None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == _SOS:
            return size
        if marker in (_APP1, _APP14) or marker in _OTHER_SOF or marker in _NO_LENGTH:
            return None  # standalone markers do not belong before the scan: not plain
        if marker in _PLAIN_SOF:
            if size is not None or i + 10 > n:
                return None  # two frames, or a cut header
            precision, height, width, components = (
                data[i + 4],
                int.from_bytes(data[i + 5 : i + 7], "big"),
                int.from_bytes(data[i + 7 : i + 9], "big"),
                data[i + 9],
            )
            if precision != 8 or components not in (1, 3) or height == 0 or width == 0:
                return None
            size = (width, height)
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None  # a segment's length counts its own 2 bytes
        i += 2 + length
    return None


def decode_plain_jpeg(data: bytes, max_pixels: int) -> np.ndarray | None:
    """Decode a plain JPEG to RGB pixels with torchvision, or return None.

    Args:
        data: Encoded file content.
        max_pixels: The caller's decompression-bomb limit; a larger image returns None (the
            Pillow path then rejects it with the usual reason).

    Returns:
        (H, W, 3) uint8 C-contiguous array, equal to Pillow's RGB decode, or None to fall back
        to Pillow (any other file, and plain JPEGs above ``FAST_MAX_PIXELS``).
    """
    size = plain_jpeg_size(data)
    if size is None or size[0] * size[1] > min(FAST_MAX_PIXELS, max_pixels, _pillow_limit()):
        return None
    if not _agrees_with_pillow():
        return None
    return _decode(data, size)


def _decode(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    # The registered operator behind torchvision.io.decode_jpeg (arguments: the bytes, the
    # ImageReadMode value, apply_exif_orientation), without the wrapper's checks and usage
    # logging, which cost as much as decoding a 32 px image. The self-check guards its use.
    # A writable copy of the bytes: torch warns about read-only buffers (a warning that the
    # caller's filters may turn into an error), and the copy costs < 1% of the decode.
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        chw = torch.ops.image.decode_jpeg(encoded, _RGB, False)
    except RuntimeError:
        return None  # truncated or corrupt: Pillow says which
    width, height = size
    if tuple(chw.shape) != (3, height, width):
        return None
    # The decoder writes (H, W, 3) and returns a (3, H, W) view of it: no copy here.
    pixels: np.ndarray = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
    return pixels


def _pillow_limit() -> int:
    # Above Pillow's MAX_IMAGE_PIXELS it warns or refuses; leave those cases to its path.
    limit = Image.MAX_IMAGE_PIXELS
    return limit if limit is not None else 2**63


@functools.cache
def _agrees_with_pillow() -> bool:
    """Whether torchvision's decoder is present and gives Pillow's pixels on test JPEGs."""
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 24 * 40).reshape(24, 40)
    pixels = np.stack([smooth, smooth[::-1], 255 - smooth], -1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    samples = []
    for mode, options in (("RGB", {}), ("RGB", {"progressive": True}), ("L", {})):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=75, **options)
        samples.append(buf.getvalue())
    try:
        import torchvision.io  # noqa: F401  (registers torch.ops.image)

        for data in samples:
            size = plain_jpeg_size(data)
            ours = None if size is None else _decode(data, size)
            if ours is None:
                return False
            with Image.open(io.BytesIO(data)) as img:
                reference = np.asarray(img.convert("RGB"))
            if not np.array_equal(ours, reference):
                return False
    except Exception:  # no image extension, another operator signature, ...: use Pillow
        return False
    return True
