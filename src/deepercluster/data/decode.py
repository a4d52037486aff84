"""Robust image decoding: any file Pillow can read → an RGB ``PIL.Image``, or a ``BadImageError``.

Non-curated collections (the paper trains on 96M YFCC100M images) always contain some
zero-byte downloads, truncated files, HTML error pages saved as ``.jpg``, 16-bit scans and
CMYK prints. Decoding must turn each of them into either a sensible RGB image or one
``BadImageError`` with a short reason, so the data views can skip the image and log it
instead of crashing a long run.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import DEFAULT_MAX_BYTES, BadImageError, read_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "decode_image",
    "to_rgb",
]

#: Pillow's own default ``Image.MAX_IMAGE_PIXELS`` (about a 9459 × 9459 image).
DEFAULT_MAX_PIXELS = 89_478_485

#: File name endings treated as images when scanning folders and tar shards (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pbm",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

# Pillow formats we decode. Pillow can open ~40 formats, and some delegate to external
# programs (EPS → Ghostscript) or exotic parsers; an uncurated crawl contains files of any
# kind under any name, so only photo formats are tried. Everything else is "not an image".
_PHOTO_FORMATS = ("AVIF", "BMP", "DIB", "GIF", "JPEG", "JPEG2000", "PNG", "PPM", "TIFF", "WEBP")

# Exceptions Pillow's decoders raise on damaged data. zlib/struct errors escape from the PNG
# and TIFF plugins, SyntaxError is Pillow's historical "broken file" signal.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

# Everywhere Pillow's ``Image.getexif`` looks for an orientation: these ``info`` entries
# (JPEG/WebP/PNG eXIf "exif", PNG text "Raw profile type exif", XMP packets), or a TIFF's
# own tags (``tag_v2``). Images with none of them (most photos) skip the EXIF parse.
_ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})


def decode_image(
    data: bytes | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Decode encoded image bytes (or a file) into a fully loaded RGB image.

    Photo formats only (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM/PGM/PBM, JPEG 2000, AVIF when
    Pillow has it); EXIF orientation is applied, animated images give their first frame, and
    every Pillow mode is converted to 8-bit RGB (see ``to_rgb``).

    Args:
        data: The encoded file content, or a path to read it from.
        max_pixels: Images with more than ``width * height`` pixels are rejected before their
            pixels are decoded (decompression-bomb guard). Pillow additionally refuses images
            above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` whatever this value; raise that global in
            the application if you really need larger images.
        max_bytes: A file (``data`` given as a path) larger than this is not read.

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``, independent of any open file.

    Raises:
        BadImageError: The data is empty, missing, not an image, truncated, corrupt, too large
            or in an unconvertible mode, or the path is not a regular file or holds more than
            ``max_bytes``. ``reason`` tells which.
    """
    if not isinstance(data, bytes):
        data = read_file(data, max_bytes=max_bytes)
    if len(data) == 0:
        raise BadImageError("zero-byte file")
    # Pillow warns about recoverable oddities of crawled files (corrupt EXIF, bytes as palette
    # transparency, images above MAX_IMAGE_PIXELS): our max_pixels check replaces the bomb
    # warning, and the rest would only repeat in every DataLoader worker. catch_warnings
    # restores the caller's filters (it swaps process-wide state meanwhile: decode in
    # processes, not threads).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data), formats=_available_formats())
        except UnidentifiedImageError:
            raise BadImageError("not an image: cannot identify image file") from None
        except Image.DecompressionBombError as err:
            raise BadImageError(_bomb_reason(str(err), max_pixels)) from None
        except _DECODE_ERRORS as err:
            raise BadImageError(_classify(err)) from None
        # No `with img:` (which would close the image and force a copy of its pixels): the
        # data is in memory, so there is no file handle to release.
        width, height = img.size
        if width * height > max_pixels:
            raise BadImageError(f"decompression bomb: {width * height} pixels > limit {max_pixels}")
        try:
            # load() forces the real decode: Image.open only parses the header, and a
            # truncated file only fails here (we never set LOAD_TRUNCATED_IMAGES).
            img.load()
            _exif_transpose(img)
            if img.mode == "RGB" and "transparency" not in img.info:
                return img  # the common case: already what we return, no copy
            return to_rgb(img)
        except Image.DecompressionBombError as err:
            raise BadImageError(_bomb_reason(str(err), max_pixels)) from None
        except _DECODE_ERRORS as err:
            raise BadImageError(_classify(err)) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``"RGB"``.

    - "1", "L", "P", "CMYK", "YCbCr", ...: Pillow's own conversion (JPEG CMYK, including
      Adobe's inverted variant, is already un-inverted by Pillow's decoder).
    - Alpha ("LA", "RGBA", "PA", or a ``transparency`` entry as in "P"/"L"/"RGB" PNGs):
      composited over white.
    - "I;16*" (16-bit): divided by 257, so 65535 → 255 and 32768 → 128.
    - "I" (32-bit int): treated as 16-bit when all values lie in [0, 65535] (how 16-bit PNG and
      TIFF files often arrive), otherwise min-max scaled.
    - "F" (float): values in [0, 1] × 255, in [0, 255] kept, in [0, 65535] / 257, otherwise
      min-max scaled; NaN becomes 0.

    High bit-depth images are rescaled rather than clipped: Pillow's ``convert("L")`` clips a
    16-bit image at 255, which turns almost every pixel white.

    Args:
        img: A loaded image in any mode.

    Returns:
        A new image in mode ``"RGB"``.

    Raises:
        BadImageError: The mode has no conversion to RGB.
    """
    mode = img.mode
    if mode.startswith("I;16"):
        gray = np.asarray(img).astype(np.float64) / 257.0
        return _gray_to_rgb(gray)
    if mode == "I":
        values = np.asarray(img).astype(np.float64)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _gray_to_rgb(values / 257.0)
        return _gray_to_rgb(_min_max(values))
    if mode == "F":
        return _gray_to_rgb(_scale_float(np.asarray(img).astype(np.float64)))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Transparent pixels usually hold arbitrary (often black) colour values; dropping the
        # alpha channel would expose them, e.g. a logo on a black box. Compositing over white
        # is how viewers and browsers display such images, so features see what people see.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img.copy()
    try:
        return img.convert("RGB")
    except ValueError:
        raise BadImageError(f"unsupported image mode: {mode}") from None


@functools.cache
def _available_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin; optional ones (AVIF) may be missing from a build
    return tuple(f for f in _PHOTO_FORMATS if f in Image.OPEN)


def _exif_transpose(img: Image.Image) -> None:
    """Apply the EXIF orientation in place (Pillow would otherwise return a copy)."""
    if img.info.keys().isdisjoint(_ORIENTATION_SOURCES) and not hasattr(img, "tag_v2"):
        return  # no orientation anywhere Pillow would find one
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:
        # EXIF parsers are fragile on crawled files and orientation is cosmetic: a broken
        # EXIF block should not cost us an otherwise good image.
        return


def _classify(err: BaseException) -> str:
    message = str(err).split(" <_io.")[0] or type(err).__name__
    lowered = message.lower()
    if "truncated" in lowered or "broken data stream" in lowered or isinstance(err, EOFError):
        return f"truncated image: {message}"
    return f"corrupt image: {message}"


def _bomb_reason(message: str, max_pixels: int) -> str:
    found = re.search(r"\((\d+) pixels\)", message)
    pixels = found.group(1) if found else "too many"
    if found and int(found.group(1)) <= max_pixels:
        # Only Pillow's global hard limit refused it; say how to lift that one.
        return (
            f"decompression bomb: {pixels} pixels > Pillow's hard limit "
            f"2 * PIL.Image.MAX_IMAGE_PIXELS; raise PIL.Image.MAX_IMAGE_PIXELS to accept it"
        )
    return f"decompression bomb: {pixels} pixels > limit {max_pixels}"


def _scale_float(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values * 255.0
    if low >= 0.0 and high <= 255.0:
        return values
    if low >= 0.0 and high <= 65535.0:
        return values / 257.0
    return _min_max(values)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """(H, W) float array in [0, 255] → RGB image (rounded, not truncated)."""
    g8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([g8, g8, g8], axis=-1))
