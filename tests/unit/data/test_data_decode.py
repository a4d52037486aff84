"""decode_image / to_rgb: every Pillow mode → RGB, every broken file → BadImageError(reason)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from deepercluster.data import BadImageError, decode_image, to_rgb

Encode = Callable[..., bytes]


def _png(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **params)
    return buf.getvalue()


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def _pixel(data: bytes) -> tuple[int, int, int]:
    img = decode_image(data)
    assert img.mode == "RGB"
    value = img.getpixel((0, 0))
    assert isinstance(value, tuple)
    return (int(value[0]), int(value[1]), int(value[2]))


def test_rgb_jpeg_round_trip(encode: Encode) -> None:
    img = decode_image(encode((30, 20), "JPEG", color=(200, 10, 10)))
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.abs(np.asarray(img).astype(int) - [200, 10, 10]).max() < 8


def test_reads_from_a_path(tmp_path: Path, encode: Encode) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode((7, 5)))
    assert decode_image(path).size == (7, 5)


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("L", (8, 8), 100), (100, 100, 100)),
        (Image.new("1", (8, 8), 1), (255, 255, 255)),
        (Image.new("RGBA", (8, 8), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),  # transparent → white
        (Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),
        (Image.new("LA", (8, 8), (0, 255)), (0, 0, 0)),
        (Image.fromarray(np.full((8, 8), 32768, np.uint16)), (128, 128, 128)),  # I;16
        (Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),
    ],
    ids=["L", "1", "RGBA-opaque", "RGBA-clear", "LA-clear", "LA-opaque", "I16-mid", "I16-max"],
)
def test_png_modes_become_rgb(img: Image.Image, expected: tuple[int, int, int]) -> None:
    assert _pixel(_png(img)) == expected


def test_half_transparent_alpha_blends_with_white() -> None:
    r, g, b = _pixel(_png(Image.new("LA", (4, 4), (0, 128))))
    assert r == g == b and 120 <= r <= 135


def test_palette_with_and_without_transparency() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 1), 1)
    assert _pixel(_png(img)) == (10, 20, 30)
    decoded = decode_image(_png(img, transparency=0))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (0, 0, 255)


def test_cmyk_jpeg_and_tiff() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in print colours
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG")
    for data in (buf.getvalue(), _tiff(cmyk)):
        r, g, b = _pixel(data)
        assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((6, 6), 32768, np.int32), 128),  # "I" in 16-bit range
        (np.full((6, 6), 0.5, np.float32), 128),  # "F" in [0, 1]
        (np.full((6, 6), 200.0, np.float32), 200),  # "F" in [0, 255]
        (np.full((6, 6), 65535.0, np.float32), 255),  # "F" in 16-bit range
    ],
    ids=["I", "F-unit", "F-byte", "F-16bit"],
)
def test_high_bit_depth_tiff_is_scaled(values: np.ndarray, expected: int) -> None:
    img = Image.fromarray(values)
    assert img.mode in ("I", "F")
    assert _pixel(_tiff(img)) == (expected,) * 3


def test_wide_int_range_is_min_max_scaled_not_clipped() -> None:
    values = np.array([[0, 1_000_000], [2_000_000, 2_000_000]], dtype=np.int32)
    out = np.asarray(to_rgb(Image.fromarray(values)))[..., 0]
    assert out.tolist() == [[0, 128], [255, 255]]


def test_big_endian_16_bit() -> None:
    img = Image.frombytes("I;16B", (3, 2), np.full((2, 3), 32768, ">u2").tobytes())
    assert to_rgb(img).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_swaps_width_and_height() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 255, 0)).save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (20, 40)


def _oriented(fmt: str) -> bytes:
    """A 40x20 image (red left half, blue right) whose metadata says orientation 6."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    if fmt == "PNG-xmp":
        info = PngImagePlugin.PngInfo()
        xmp = '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
        info.add_itxt("XML:com.adobe.xmp", xmp)
        img.save(buf, "PNG", pnginfo=info)
    elif fmt == "PNG-raw-profile":
        info = PngImagePlugin.PngInfo()
        data = exif.tobytes()
        info.add_text("Raw profile type exif", f"\nexif\n{len(data):8}\n{data.hex()}\n")
        img.save(buf, "PNG", pnginfo=info)
    elif fmt == "TIFF":
        img.save(buf, "TIFF", tiffinfo={0x0112: 6})
    else:
        img.save(buf, fmt, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "PNG-xmp", "PNG-raw-profile"])
def test_orientation_is_applied_wherever_pillow_finds_it(fmt: str) -> None:
    data = _oriented(fmt)
    img = decode_image(data)
    assert img.size == (20, 40)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    assert reference.size == (20, 40)
    difference = np.abs(np.asarray(img).astype(int) - np.asarray(reference).astype(int))
    assert difference.max() <= 1  # WebP/JPEG are lossy, but the halves must land alike
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # 90° clockwise


def test_images_without_metadata_skip_the_exif_parser(
    encode: Encode, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    getexif = Image.Image.getexif

    def counting(self: Image.Image) -> Image.Exif:
        calls.append(self.format)
        return getexif(self)

    monkeypatch.setattr(Image.Image, "getexif", counting)
    for fmt in ("JPEG", "PNG", "BMP", "GIF"):
        assert decode_image(encode((12, 8), fmt)).size == (12, 8)
    assert calls == []
    decode_image(_oriented("JPEG"))
    assert calls  # an image with EXIF still goes through Pillow's parser


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert _pixel(buf.getvalue()) == (255, 0, 0)


def test_every_bad_kind_raises_with_its_reason(bad_files: dict[str, tuple[bytes, str]]) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for name, (data, kind) in bad_files.items():
        with pytest.raises(BadImageError) as info:
            decode_image(data)
        assert info.value.reason.startswith(kind), name
        assert str(info.value) == info.value.reason


def test_non_photo_formats_are_not_images() -> None:
    # Pillow would identify this as EPS and run Ghostscript on it; crawled data is untrusted.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(BadImageError, match="not an image"):
        decode_image(eps)


def test_max_pixels_is_our_limit_and_globals_stay_untouched(encode: Encode) -> None:
    limit_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    with pytest.raises(BadImageError, match=r"decompression bomb: 1024 pixels > limit 100"):
        decode_image(encode((32, 32)), max_pixels=100)
    assert decode_image(encode((32, 32)), max_pixels=1024).size == (32, 32)
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters_before


def test_missing_file_is_a_bad_image(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="file not found"):
        decode_image(tmp_path / "gone.jpg")


def test_broken_jpegs_are_classified(encode: Encode) -> None:
    data = encode((64, 48), "JPEG")
    with pytest.raises(BadImageError, match=r"^truncated image"):
        decode_image(data[: len(data) // 2])
    # A header that declares 60,000 x 60,000 pixels: refused before anything is decoded.
    sof = data.index(b"\xff\xc0")
    bomb = data[: sof + 5] + (60_000).to_bytes(2, "big") * 2 + data[sof + 9 :]
    with pytest.raises(BadImageError, match=r"^decompression bomb"):
        decode_image(bomb)
    with pytest.raises(BadImageError, match=r"^decompression bomb: 3072 pixels > limit 3000"):
        decode_image(data, max_pixels=3000)
