"""Fixtures for the data tests: images, folders, tar shards and broken files made in tmp_path."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

Encode = Callable[..., bytes]


def _encode(
    size: tuple[int, int] = (32, 24),
    fmt: str = "PNG",
    *,
    mode: str = "RGB",
    seed: int = 0,
    color: tuple[int, ...] | int | None = None,
) -> bytes:
    """Encoded bytes of a random (or solid ``color``) image of ``size`` = (width, height)."""
    if color is not None:
        img = Image.new(mode, size, color)
    else:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def encode() -> Encode:
    """``encode(size=(w, h), fmt="PNG", mode="RGB", seed=0, color=None) -> bytes``."""
    return _encode


def _bomb_png(width: int = 20_000, height: int = 10_000) -> bytes:
    """A 60-byte PNG whose header declares ``width × height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def bad_files() -> dict[str, tuple[bytes, str]]:
    """File name → (content, expected reason kind) for every kind of broken image."""
    jpeg = _encode((64, 48), "JPEG", seed=1)
    png = _encode((64, 48), "PNG", seed=2)
    return {
        "empty.jpg": (b"", "zero-byte file"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated image"),
        "cut.png": (png[: len(png) // 2], "truncated image"),
        "notes.jpg": (b"<html>404 Not Found</html>\n", "not an image"),
        "bomb.png": (_bomb_png(), "decompression bomb"),
    }


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """root/{birds,cats,dogs}/ with 7 images in mixed formats, plus hidden and non-image files."""
    root = tmp_path / "images"
    files = {
        "cats/a.jpg": ("JPEG", "RGB"),
        "cats/b.png": ("PNG", "RGBA"),
        "dogs/c.bmp": ("BMP", "RGB"),
        "dogs/D.JPEG": ("JPEG", "L"),
        "dogs/deeper/e.webp": ("WEBP", "RGB"),
        "birds/g.gif": ("GIF", "P"),
        "birds/h.tiff": ("TIFF", "RGB"),
        ".hidden/x.jpg": ("JPEG", "RGB"),
        "cats/.y.jpg": ("JPEG", "RGB"),
    }
    for i, (name, (fmt, mode)) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode((20 + i, 16), fmt, mode=mode, seed=i))
    (root / "README.txt").write_text("not an image")
    (root / "cats" / "labels.csv").write_text("a,b\n")
    return root


def _write_tar(path: Path, members: Mapping[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def write_tar() -> Callable[[Path, Mapping[str, bytes]], Path]:
    """``write_tar(path, {member name: bytes}) -> path``: a plain tar, members in dict order."""
    return _write_tar


@pytest.fixture
def tar_shards(tmp_path: Path) -> list[Path]:
    """shards/train-000.tar .. train-002.tar, 4 images each (plus a non-image member)."""
    shards = []
    for s in range(3):
        members = {
            f"train/s{s}-{k}.jpg": _encode((24, 20), "JPEG", seed=10 * s + k) for k in (3, 1, 2, 0)
        }
        members["train/meta.json"] = b"{}"
        shards.append(_write_tar(tmp_path / "shards" / f"train-{s:03d}.tar", members))
    return shards
