"""TarShards: reading members by offset, per-process handles, pickling, truncated shards."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

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
