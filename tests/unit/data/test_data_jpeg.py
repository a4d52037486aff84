"""The plain-JPEG fast path: which files take it, and that they decode to Pillow's pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepercluster.data import BadImageError, decode_image, decode_pixels
from deepercluster.data import jpeg as fast_jpeg


def _jpeg(size: tuple[int, int], mode: str = "RGB", seed: int = 0, **options: object) -> bytes:
    """A JPEG of a noisy gradient (random noise alone would hide upsampling differences)."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))
    pixels = np.stack([ramp, ramp[::-1], 255 - ramp], -1) + rng.normal(0, 25, (h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def _pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize(
    ("size", "mode", "options"),
    [
        ((32, 32), "RGB", {}),
        ((33, 17), "RGB", {"subsampling": 0, "quality": 95}),  # 4:4:4, odd sizes
        ((64, 40), "RGB", {"subsampling": 1}),  # 4:2:2
        ((57, 75), "RGB", {"progressive": True, "quality": 60}),
        ((40, 30), "L", {}),  # one component: replicated into R, G and B
        ((128, 128), "RGB", {"optimize": True}),  # the largest size decoded here
    ],
)
def test_plain_jpegs_decode_to_pillows_pixels_without_pillow(
    size: tuple[int, int], mode: str, options: dict[str, object]
) -> None:
    data = _jpeg(size, mode, **options)
    expected = _pillow_rgb(data)
    assert fast_jpeg.plain_jpeg_size(data) == size
    assert fast_jpeg._agrees_with_pillow()  # its self-check uses Pillow: run it before
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "open", None)  # any use of Pillow's decoder would fail
        img = decode_image(data)
    assert img.mode == "RGB" and img.size == size
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_decode_pixels_keeps_the_fast_paths_array_and_pillows_image() -> None:
    small = _jpeg((40, 24))
    pixels = decode_pixels(small)
    assert isinstance(pixels, np.ndarray)
    assert pixels.shape == (24, 40, 3) and pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, np.asarray(decode_image(small)))
    np.testing.assert_array_equal(pixels, _pillow_rgb(small))
    large = _jpeg((129, 128))  # above FAST_MAX_PIXELS: Pillow's image, as decode_image's
    img = decode_pixels(large)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), _pillow_rgb(large))
    with pytest.raises(BadImageError, match=r"^truncated image"):
        decode_pixels(small[: len(small) // 2])


def test_larger_plain_jpegs_are_left_to_pillow() -> None:
    data = _jpeg((129, 128))
    assert fast_jpeg.plain_jpeg_size(data) == (129, 128)
    assert fast_jpeg.decode_plain_jpeg(data, 10**9) is None
    np.testing.assert_array_equal(np.asarray(decode_image(data)), _pillow_rgb(data))


def test_files_outside_the_plain_subset_go_to_pillow() -> None:
    plain = _jpeg((24, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    buf = io.BytesIO()
    Image.open(io.BytesIO(plain)).save(buf, "JPEG", exif=exif.tobytes())
    buf_cmyk = io.BytesIO()
    Image.new("CMYK", (24, 16), (0, 128, 255, 0)).save(buf_cmyk, "JPEG")
    png = io.BytesIO()
    Image.open(io.BytesIO(plain)).save(png, "PNG")
    sof = plain.index(b"\xff\xc0")
    twelve_bit = plain[: sof + 4] + b"\x0c" + plain[sof + 5 :]
    restart_first = plain[:2] + b"\xff\xd0" + plain[2:]  # a standalone marker before the frame
    zero_length = plain[: sof + 2] + b"\x00\x00" + plain[sof + 4 :]
    odd = (buf.getvalue(), buf_cmyk.getvalue(), png.getvalue(), twelve_bit, plain[:sof])
    for data in (*odd, restart_first, zero_length):
        assert fast_jpeg.plain_jpeg_size(data) is None
    # They still decode (through Pillow), the EXIF one turned upright.
    assert decode_image(buf.getvalue()).size == (16, 24)
    assert decode_image(buf_cmyk.getvalue()).getpixel((5, 5))[0] > 200  # no cyan: red


def test_broken_jpegs_keep_pillows_reasons() -> None:
    data = _jpeg((64, 48))
    with pytest.raises(BadImageError, match=r"^truncated image"):
        decode_image(data[: len(data) // 2])
    # A header that declares 60,000 x 60,000 pixels: refused before anything is decoded.
    sof = data.index(b"\xff\xc0")
    bomb = data[: sof + 5] + (60_000).to_bytes(2, "big") * 2 + data[sof + 9 :]
    assert fast_jpeg.plain_jpeg_size(bomb) == (60_000, 60_000)
    with pytest.raises(BadImageError, match=r"^decompression bomb"):
        decode_image(bomb)
    with pytest.raises(BadImageError, match=r"^decompression bomb: 3072 pixels > limit 3000"):
        decode_image(data, max_pixels=3000)


def test_without_agreement_every_jpeg_goes_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg((32, 32))
    assert fast_jpeg.decode_plain_jpeg(data, 10**6) is not None
    monkeypatch.setattr(fast_jpeg, "_agrees_with_pillow", lambda: False)
    assert fast_jpeg.decode_plain_jpeg(data, 10**6) is None
    np.testing.assert_array_equal(np.asarray(decode_image(data)), _pillow_rgb(data))


def test_self_check_fails_when_the_decoder_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_jpeg._agrees_with_pillow.cache_clear()
    try:
        assert fast_jpeg._agrees_with_pillow()
        fast_jpeg._agrees_with_pillow.cache_clear()
        shifted = fast_jpeg._decode

        def off_by_one(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
            pixels = shifted(data, size)
            assert pixels is not None
            return pixels ^ 1

        monkeypatch.setattr(fast_jpeg, "_decode", off_by_one)
        assert not fast_jpeg._agrees_with_pillow()
    finally:
        fast_jpeg._agrees_with_pillow.cache_clear()
