"""TarShards: reading members by offset, per-process handles, pickling, truncated shards,
damaged headers, bad shards among good ones."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepercluster.data import BadImageError, open_collection
from deepercluster.data.tarshards import TarShards, is_image_name

WriteTar = Callable[[Path, Mapping[str, bytes]], Path]


def test_member_bytes_are_read_exactly(tmp_path: Path, write_tar: WriteTar) -> None:
    members = {"a.jpg": b"first", "skip.txt": b"zzz", "dir/b.png": b"second" * 300}
    index = TarShards([str(write_tar(tmp_path / "s.tar", members))])
    assert index.names == ["a.jpg", "dir/b.png"]
    assert [index.read_bytes(i) for i in range(2)] == [b"first", b"second" * 300]
    index.close()


def test_handles_reopen_in_a_new_process(tar_shards: list[Path]) -> None:
    index = TarShards([str(s) for s in tar_shards])
    first = index.read_bytes(5)
    inherited = index._handles[1]
    index._pid = -1  # what a forked DataLoader worker sees: handles opened by another pid
    assert index.read_bytes(5) == first
    assert inherited.closed and index._handles[1] is not inherited
    index.close()
    assert not index._handles


def test_pickles_without_open_handles(tar_shards: list[Path]) -> None:
    with open_collection(tar_shards[0]) as collection:
        expected = collection.read(1).tobytes()
        clone = pickle.loads(pickle.dumps(collection))  # what "spawn" workers receive
        assert clone.read(1).tobytes() == expected
        clone.close()


def test_many_shards_keep_few_files_open(
    tmp_path: Path, write_tar: WriteTar, encode: Callable[..., bytes]
) -> None:
    shards = [
        str(write_tar(tmp_path / f"s{i:02d}.tar", {"x.png": encode((4, 4))})) for i in range(40)
    ]
    index = TarShards(shards)
    for i in range(40):
        index.read_bytes(i)
    assert 0 < len(index._handles) <= 32
    index.close()


def test_shard_cut_short_gives_a_truncated_image(tmp_path: Path, write_tar: WriteTar) -> None:
    shard = write_tar(tmp_path / "s.tar", {"a.jpg": b"x" * 2000})
    index = TarShards([str(shard)])
    with open(shard, "r+b") as f:
        f.truncate(index.offsets[0] + 100)
    with pytest.raises(BadImageError, match=r"truncated image: tar member has 100 of 2000 bytes"):
        index.read_bytes(0)
    index.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.JPG", True),
        ("./a/b.webp", True),
        ("a/._b.jpg", False),
        (".cache/b.jpg", False),
        ("a/b.json", False),
        ("a/", False),
    ],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected


def _damage_header(shard: Path, member: int) -> tuple[int, int]:
    """Break the checksum of member ``member``'s own header. Returns where that member's
    headers start and where the next member's start (the shard's size for the last one)."""
    with tarfile.open(shard) as archive:
        infos = archive.getmembers()
    header = infos[member].offset_data - tarfile.BLOCKSIZE  # after a pax or long-name header
    with shard.open("r+b") as f:
        f.seek(header + 148)  # the checksum field
        f.write(b"9999999\0")
    after = infos[member + 1].offset if member + 1 < len(infos) else shard.stat().st_size
    return int(infos[member].offset), int(after)


@pytest.mark.parametrize(
    ("damaged", "name"),
    [(4, "m{:02d}.png"), (0, "m{:02d}.png"), (19, "m{:02d}.png"), (4, "été/ñandú {:02d}.png")],
    ids=["member-5-of-20", "first", "last", "member-5-after-a-pax-header"],
)
def test_damaged_header_resynchronises_at_the_next_one(
    tmp_path: Path, write_tar: WriteTar, damaged: int, name: str
) -> None:
    members = {name.format(i): bytes([i]) * (700 + 10 * i) for i in range(20)}
    shard = write_tar(tmp_path / "s.tar", members)
    lost_at, next_at = _damage_header(shard, damaged)
    index = TarShards([str(shard)])
    assert len(index) == 20 and index.n_members == 19  # the damaged member keeps its id
    names = list(members)
    for i in range(20):
        if i == damaged:
            assert index.path(i) == f"{shard}@{lost_at}"
            with pytest.raises(BadImageError, match=rf"^damaged tar header at offset {lost_at:,}"):
                index.read_bytes(i)
        else:  # nothing after the damage is lost, and the ids keep the member order
            assert index.path(i) == f"{shard}:{names[i]}"
            assert index.read_bytes(i) == members[names[i]]
    where = (
        f"up to the next valid header at offset {next_at:,}"
        if damaged < 19
        else "to the end of the shard (no valid header follows)"
    )
    assert index.problems[damaged] == (
        f"damaged tar header at offset {lost_at:,}: {next_at - lost_at:,} bytes skipped "
        f"{where}; any member stored in them is lost"
    )
    index.close()


def test_a_damaged_pax_header_costs_only_the_name_it_carried(
    tmp_path: Path, write_tar: WriteTar
) -> None:
    members = {f"été/{i:02d}.png": bytes([i]) * 700 for i in range(6)}
    shard = write_tar(tmp_path / "s.tar", members)
    with tarfile.open(shard) as archive:
        pax_at = archive.getmembers()[2].offset  # the pax header that carries the UTF-8 name
    with shard.open("r+b") as f:
        f.seek(pax_at + 148)
        f.write(b"9999999\0")
    index = TarShards([str(shard)])
    # The member's own (ASCII) header is still valid: its bytes are read, under that name.
    assert index.n_members == 6 and index.path(2) == f"{shard}@{pax_at}"
    assert [index.read_bytes(i) for i in (0, 1, 3, 4, 5, 6)] == list(members.values())
    assert index.names[3].endswith("02.png") and index.names[3] != "été/02.png"
    index.close()


def test_bad_shards_among_good_ones_are_skipped_and_reported(
    tmp_path: Path,
    tar_shards: list[Path],
    write_tar: WriteTar,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tar_shards[0].parent
    (folder / "train-003.tar").write_bytes(np.random.default_rng(0).bytes(20_000))
    (folder / "train-004.tar").write_bytes(b"")
    write_tar(folder / "train-005.tar", {"notes.txt": b"hi"})
    (folder / "train-006.tar").write_bytes(gzip.compress(tar_shards[0].read_bytes()))
    os.mkfifo(folder / "train-007.tar")
    with open_collection(folder / "train-{000..007}.tar") as collection:
        problems = {
            Path(collection.path(i)).name: err.reason
            for i in range(len(collection))
            if (err := _read_error(collection, i)) is not None
        }
        assert len(collection) == 12 + len(problems)  # every good image is still there
    assert problems == {
        "train-003.tar": "unreadable tar shard: no valid tar header in its 20,000 bytes "
        "(not a tar archive)",
        "train-004.tar": "empty tar shard: 0 bytes",
        "train-005.tar": "empty tar shard: no image members (.bmp, .gif, .jpeg, .jpg, ...)",
        "train-006.tar": "unreadable tar shard: gzip data, not a plain (uncompressed) tar "
        f"archive; repack it as a plain .tar (`gzip -dc {folder}/train-006.tar > plain.tar`)",
        "train-007.tar": "unreadable tar shard: not a regular file: a FIFO (named pipe)",
    }
    warned = {r.getMessage() for r in caplog.records if r.levelname == "WARNING"}
    assert {f"skipping {folder}/{name}: {reason}" for name, reason in problems.items()} == warned


def _read_error(collection: Any, index: int) -> BadImageError | None:
    try:
        collection.read(index)
    except BadImageError as err:
        return err
    return None


def test_no_readable_shard_is_an_error_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "b.tar").write_bytes(b"")
    with pytest.raises(ValueError) as caught:
        open_collection(tmp_path / "*.tar")
    assert str(caught.value) == (
        f"no image could be read from the 2 tar shards ({tmp_path}/a.tar: unreadable tar "
        f"shard: no valid tar header in its 4,096 bytes (not a tar archive); {tmp_path}/b.tar: "
        f"empty tar shard: 0 bytes); point --data at plain .tar shards of image files "
        f"(`tar tvf {tmp_path}/a.tar | head` lists a shard's first members)"
    )


def test_a_huge_member_is_skipped_unread(tmp_path: Path, encode: Callable[..., bytes]) -> None:
    shard = tmp_path / "s.tar"
    small = encode((8, 8))
    huge = tarfile.TarInfo("huge.png")
    huge.size = 3_000_000_000
    with shard.open("wb") as f:
        f.write(huge.tobuf(tarfile.GNU_FORMAT))
        f.truncate(512 + huge.size)  # sparse: the member's data costs no disk
        f.seek(0, os.SEEK_END)
        info = tarfile.TarInfo("small.png")
        info.size = len(small)
        f.write(info.tobuf(tarfile.GNU_FORMAT) + small + bytes(-len(small) % 512 + 1024))
    tracemalloc.start()
    try:
        index = TarShards([str(shard)])
        with pytest.raises(BadImageError, match=r"^too large: 3,000,000,000 bytes > data.max"):
            index.read_bytes(0)
        assert index.read_bytes(1) == small
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        index.close()
    assert peak < 4 * 2**20


def test_the_index_keeps_numbers_not_headers(tmp_path: Path, write_tar: WriteTar) -> None:
    n = 4000
    shard = write_tar(tmp_path / "s.tar", {f"dir/img-{i:05d}.jpg": b"x" for i in range(n)})
    tracemalloc.start()
    try:
        index = TarShards([str(shard)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(index) == n
    # Keeping tarfile's TarInfo of each member costs ~470 B; the index holds 20 B plus the name.
    assert peak < 150 * n, peak
