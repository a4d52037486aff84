"""A hostile corpus made by the test: the run finishes on the good images and ``skipped.csv``
names every bad one with its reason.

The decoder's handling of each odd image kind is unit-tested in
``tests/unit/data/test_data_decode.py``; here they all meet in one folder (and in tar shards,
one cut short in the middle of a member) and go through a whole ``deepercluster train``.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import struct
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import numpy as np
import pytest
from PIL import Image
from tests.conftest import write_pattern_images

from deepercluster import cli
from deepercluster.engine.checkpoint import load_checkpoint

SETTINGS = [
    "train.device=cpu", "train.threads=1", "model.arch=small", "data.resolution=32",
    "data.workers=0", "cluster.k=4", "cluster.super_clusters=2", "cluster.pca_dim=8",
    "train.epochs=1", "train.batch_size=8", "train.epoch_size=16",
]  # fmt: skip


def _train(data: str, out: Path) -> int:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return cli.main(["train", "--data", data, "--out", str(out), "--no-progress", *sets])


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging CI) when the block runs longer, e.g. blocked in an open()."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _skipped(out: Path) -> dict[str, str]:
    with (out / "skipped.csv").open(newline="") as fh:
        return {r["path"]: r["reason"] for r in csv.DictReader(fh)}


def _constant_png(width: int, height: int) -> bytes:
    """A real, valid ``width x height`` grey PNG, compressed row by row (~0.5 MB, not 400)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _odd_but_good() -> dict[str, bytes]:
    """Images that look unusual but must be read (name -> encoded bytes)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    frames = [Image.new("P", (20, 20), c) for c in (10, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    deep = Image.fromarray((rng.integers(0, 65535, (16, 16))).astype(np.uint16))
    return {
        "one pixel.png": _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "sixteen-bit.png": _save(deep, "PNG"),
        "palette-transparent.png": _save(palette, "PNG"),
        "animated.gif": gif.getvalue(),
        "exif-rotated.jpg": _save(rgb, "JPEG", exif=exif.tobytes()),
        "été/ñandú 北京.png": _save(rgb, "PNG"),
    }


def test_hostile_folder_runs_on_the_good_images(tmp_path: Path) -> None:
    root = write_pattern_images(tmp_path / "corpus dir", n=16)
    for name, data in _odd_but_good().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    good = (root / "img_000.png").read_bytes()
    bad = {
        "zero.jpg": (b"", "zero-byte file"),
        "truncated.png": (good[: len(good) // 2], "truncated image"),
        "random bytes.jpg": (os.urandom(3000), "not an image"),
        "fake.webp": (os.urandom(100), "not an image"),
        "bomb 20000x20000.png": (_constant_png(20_000, 20_000), "decompression bomb"),
    }
    for name, (data, _) in bad.items():
        (root / name).write_bytes(data)
    (root / "loop").mkdir()
    (root / "loop" / "back").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "loop" / "self").symlink_to(root / "loop", target_is_directory=True)
    locked = root / "locked.png"
    locked.write_bytes(good)
    locked.chmod(0)
    # root reads files whatever their mode: the unreadable-file case is only checked as a user
    if os.geteuid() != 0:
        bad["locked.png"] = (good, "unreadable")
    n_good = 16 + len(_odd_but_good()) + (1 if os.geteuid() == 0 else 0)

    out = tmp_path / "run"
    assert _train(str(root), out) == 0
    with (out / "skipped.csv").open(newline="") as fh:
        rows = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert set(rows) == set(bad), rows
    for name, (_, kind) in bad.items():
        assert rows[name].startswith(kind), (name, rows[name])
    ck = load_checkpoint(out / "checkpoint.pth")
    assert ck["n_images"] == n_good + len(bad)  # the loop added nothing twice
    assert int(ck["clustering"]["valid"].sum()) == n_good


def test_tar_shard_cut_in_the_middle_of_a_member(tmp_path: Path) -> None:
    images = write_pattern_images(tmp_path / "images", n=24)
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted(images.iterdir())
    for s in range(2):
        with tarfile.open(shards / f"part-{s:03d}.tar", "w") as tar:
            for f in files[12 * s : 12 * (s + 1)]:
                key = f.stem  # WebDataset layout: <key>.png next to <key>.json
                tar.add(f, arcname=f"{key}.png")
                meta = tarfile.TarInfo(f"{key}.json")
                meta.size = 2
                tar.addfile(meta, io.BytesIO(b"{}"))
    cut = shards / "part-001.tar"
    with tarfile.open(cut) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".png")][-1]
    with cut.open("r+b") as fh:
        fh.truncate(last.offset_data + last.size // 2)  # mid-member, like an interrupted copy
    out = tmp_path / "run"
    assert _train(str(shards / "part-{000..001}.tar"), out) == 0
    lines = (out / "skipped.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{cut}:{last.name},truncated image")
    assert load_checkpoint(out / "checkpoint.pth")["n_images"] == 24


def test_fifo_dev_zero_and_a_huge_file_are_skipped_not_waited_on(tmp_path: Path) -> None:
    root = write_pattern_images(tmp_path / "images", n=16)
    os.mkfifo(root / "x.jpg")  # opening it would wait for a writer forever
    (root / "zero.jpg").symlink_to("/dev/zero")  # reading it whole would fill the RAM
    with (root / "huge.png").open("wb") as fh:
        fh.truncate(300 * 2**20)  # sparse: above the 256 MiB default of data.max_bytes
    out = tmp_path / "run"
    with _deadline(240):
        assert _train(str(root), out) == 0
    assert _skipped(out) == {
        str(root / "x.jpg"): "not a regular file: a FIFO (named pipe)",
        str(root / "zero.jpg"): "not a regular file: a character device (a symlink to /dev/zero)",
        str(root / "huge.png"): "too large: 314,572,800 bytes > data.max_bytes (268,435,456 "
        "bytes); raise data.max_bytes to read it",
    }
    ck = load_checkpoint(out / "checkpoint.pth")
    assert ck["n_images"] == 19 and int(ck["clustering"]["valid"].sum()) == 16


def _shard(path: Path, images: list[Path]) -> Path:
    with tarfile.open(path, "w") as tar:
        for f in images:
            tar.add(f, arcname=f.name)
    return path


def test_damaged_header_and_bad_shards_cost_only_themselves(tmp_path: Path) -> None:
    files = sorted(write_pattern_images(tmp_path / "images", n=20).iterdir())
    shards = tmp_path / "shards"
    shards.mkdir()
    damaged = _shard(shards / "part-000.tar", files[:10])
    _shard(shards / "part-001.tar", files[10:])
    (shards / "part-002.tar").write_bytes(np.random.default_rng(0).bytes(8192))
    (shards / "part-003.tar").write_bytes(b"")
    with tarfile.open(damaged) as tar:
        fifth, sixth = tar.getmembers()[4:6]
    with damaged.open("r+b") as fh:
        fh.seek(fifth.offset_data - 512 + 148)  # the checksum of member 5's own header
        fh.write(b"9999999\0")
    out = tmp_path / "run"
    assert _train(str(shards / "part-{000..003}.tar"), out) == 0
    assert _skipped(out) == {
        f"{damaged}@{fifth.offset}": f"damaged tar header at offset {fifth.offset:,}: "
        f"{sixth.offset - fifth.offset:,} bytes skipped up to the next valid header at offset "
        f"{sixth.offset:,}; any member stored in them is lost",
        f"{shards}/part-002.tar": "unreadable tar shard: no valid tar header in its 8,192 bytes "
        "(not a tar archive)",
        f"{shards}/part-003.tar": "empty tar shard: 0 bytes",
    }
    ck = load_checkpoint(out / "checkpoint.pth")
    # 19 of 20 images: the one behind the damaged header is the only loss.
    assert ck["n_images"] == 19 + 3 and int(ck["clustering"]["valid"].sum()) == 19


def test_no_readable_shard_exits_2_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.tar").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "b.tar").write_bytes(b"")
    assert _train(str(tmp_path / "*.tar"), tmp_path / "run") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"deepercluster: error: no image could be read from the 2 tar shards ({tmp_path}/a.tar: "
        f"unreadable tar shard: no valid tar header in its 4,096 bytes (not a tar archive); "
        f"{tmp_path}/b.tar: empty tar shard: 0 bytes); point --data at plain .tar shards of "
        f"image files (`tar tvf {tmp_path}/a.tar | head` lists a shard's first members)"
    )
