"""open_collection readers (folder, list, CSV, tar shards), stable ids, errors; ArrayCollection."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

import deepercluster.data as data
from deepercluster.data import (
    ArrayCollection,
    Collection,
    ImageCollection,
    expand_braces,
    open_collection,
)

Encode = Callable[..., bytes]
WriteTar = Callable[[Path, Mapping[str, bytes]], Path]

CLASS_FOLDER_FILES = [
    "birds/g.gif",
    "birds/h.tiff",
    "cats/a.jpg",
    "cats/b.png",
    "dogs/D.JPEG",
    "dogs/c.bmp",
    "dogs/deeper/e.webp",
]


def _all_readable(collection: ImageCollection) -> None:
    for i in range(len(collection)):
        img = collection.read(i)
        assert img.mode == "RGB" and img.width > 0


def test_public_names_are_sorted_and_exist() -> None:
    assert data.__all__ == sorted(data.__all__)
    assert all(hasattr(data, name) for name in data.__all__)


def test_folder_with_class_subfolders(class_folder: Path) -> None:
    collection = open_collection(class_folder)
    rel = [os.path.relpath(p, class_folder).replace(os.sep, "/") for p in collection.paths]
    assert rel == CLASS_FOLDER_FILES  # sorted, hidden entries and non-images skipped
    assert collection.class_names == ["birds", "cats", "dogs"]
    assert collection.labels is not None
    assert collection.labels.dtype == np.int64
    assert collection.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert collection.describe().startswith("7 images in 3 classes from folder ")
    assert isinstance(collection, Collection)
    _all_readable(collection)


def test_folder_ids_are_stable_across_opens(class_folder: Path) -> None:
    first, second = open_collection(class_folder), open_collection(str(class_folder))
    assert first.paths == second.paths
    assert np.array_equal(np.asarray(first.read(3)), np.asarray(second.read(3)))


def test_folder_without_class_subfolders(tmp_path: Path, encode: Encode) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("top.png", "sub/inner.jpg", "UPPER.PNG"):
        (tmp_path / name).write_bytes(encode((10, 10), "JPEG" if name.endswith("jpg") else "PNG"))
    collection = open_collection(tmp_path)
    assert [Path(p).name for p in collection.paths] == ["UPPER.PNG", "inner.jpg", "top.png"]
    assert collection.labels is None and collection.class_names == []
    _all_readable(collection)


def test_list_file(tmp_path: Path, encode: Encode) -> None:
    (tmp_path / "imgs").mkdir()
    for name in ("b.png", "a.png"):
        (tmp_path / "imgs" / name).write_bytes(encode((9, 9)))
    absolute = tmp_path / "abs.png"
    absolute.write_bytes(encode((9, 9)))
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(f"# comment\n../imgs/b.png\n\n  ../imgs/a.png  \n{absolute}\n")
    collection = open_collection(lst)
    assert len(collection) == 3
    assert Path(collection.path(0)).resolve() == tmp_path / "imgs" / "b.png"
    assert collection.path(2) == str(absolute)
    assert collection.describe() == f"3 images from list file {lst}"
    _all_readable(collection)
    assert open_collection(lst).paths == collection.paths


def test_csv_with_metadata_columns(tmp_path: Path, encode: Encode) -> None:
    for name in ("x.png", "y.png"):
        (tmp_path / name).write_bytes(encode((9, 9)))
    table = tmp_path / "meta.csv"
    table.write_text("path,tags,lat\nx.png,cat;sofa,48.8\n,skip,0\ny.png,dog,\n", encoding="utf-8")
    collection = open_collection(table)
    assert [Path(p).name for p in collection.paths] == ["x.png", "y.png"]
    assert collection.metadata == {"tags": ["cat;sofa", "dog"], "lat": ["48.8", ""]}
    assert "metadata: tags, lat" in collection.describe()
    _all_readable(collection)


def test_csv_path_column_fallback_and_override(tmp_path: Path, encode: Encode) -> None:
    (tmp_path / "x.png").write_bytes(encode((9, 9)))
    (tmp_path / "a.csv").write_text("\ufefffilepath,label\nx.png,3\n", encoding="utf-8")
    assert open_collection(tmp_path / "a.csv").metadata == {"label": ["3"]}
    (tmp_path / "b.csv").write_text("img,label\nx.png,3\n")
    assert len(open_collection(tmp_path / "b.csv", path_column="img")) == 1
    with pytest.raises(ValueError, match=r"no 'path' column \(columns: img, label\).*path_column"):
        open_collection(tmp_path / "b.csv")


def test_single_tar(tar_shards: list[Path]) -> None:
    with open_collection(tar_shards[0]) as collection:
        assert len(collection) == 4  # the .json member is skipped
        names = [p.split(":", 1)[1] for p in collection.paths]
        assert names == [f"train/s0-{k}.jpg" for k in (3, 1, 2, 0)]  # archive order
        assert collection.path(0) == f"{tar_shards[0]}:train/s0-3.jpg"
        assert collection.describe() == "4 images from 1 tar shard"
        _all_readable(collection)


@pytest.mark.parametrize(
    "pattern", ["train-*.tar", "train-{000..002}.tar", "train-{000,001,002}.tar"]
)
def test_shards_by_glob_and_brace_pattern(tar_shards: list[Path], pattern: str) -> None:
    spec = str(tar_shards[0].parent / pattern)
    with open_collection(spec) as collection, open_collection(spec) as again:
        assert len(collection) == 12
        assert collection.paths == again.paths
        shards = [p.split(":", 1)[0] for p in collection.paths]
        assert shards == [str(s) for s in tar_shards for _ in range(4)]
        assert collection.describe() == "12 images from 3 tar shards"
        assert np.array_equal(np.asarray(collection.read(7)), np.asarray(again.read(7)))
        _all_readable(collection)


def test_glob_of_image_files(tmp_path: Path, encode: Encode) -> None:
    for name in ("b.png", "a.png", "c.txt"):
        (tmp_path / name).write_bytes(encode((9, 9)))
    collection = open_collection(tmp_path / "*.png")
    assert [Path(p).name for p in collection.paths] == ["a.png", "b.png"]


def test_compressed_tars_are_refused_with_the_repack_fix(
    tmp_path: Path, write_tar: WriteTar
) -> None:
    plain = write_tar(tmp_path / "a.tar", {"x.jpg": b"123"})
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(ValueError, match=r"compressed tar.*plain \.tar"):
        open_collection(gz)
    disguised = tmp_path / "b.tar"
    disguised.write_bytes(gz.read_bytes())
    with pytest.raises(ValueError, match=r"not a plain \(uncompressed\) tar"):
        open_collection(disguised)


def test_clear_errors_for_missing_empty_and_unmatched(tmp_path: Path, write_tar: WriteTar) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist; point --data at a folder"):
        open_collection(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no image files \(\.bmp.*found under .*empty"):
        open_collection(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"matched no files"):
        open_collection(tmp_path / "shards-*.tar")
    write_tar(tmp_path / "s-0.tar", {"a.jpg": b"1"})
    with pytest.raises(FileNotFoundError, match=r"1 of 2 names .*s-1\.tar"):
        open_collection(tmp_path / "s-{0..1}.tar")
    write_tar(tmp_path / "docs.tar", {"a.txt": b"1"})
    with pytest.raises(ValueError, match=r"no image files"):
        open_collection(tmp_path / "docs.tar")
    (tmp_path / "list.txt").write_text("# only a comment\n")
    with pytest.raises(ValueError, match=r"names no images"):
        open_collection(tmp_path / "list.txt")
    (tmp_path / "x.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read images from .*x\.npy"):
        open_collection(tmp_path / "x.npy")


def test_index_out_of_range(class_folder: Path) -> None:
    collection = open_collection(class_folder)
    with pytest.raises(IndexError, match="out of range"):
        collection.read(len(collection))
    with pytest.raises(IndexError):
        collection.path(-1)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a.tar", ["a.tar"]),
        ("s-{000..002}.tar", ["s-000.tar", "s-001.tar", "s-002.tar"]),
        ("s-{8..10}", ["s-8", "s-9", "s-10"]),
        ("s-{09..11}", ["s-09", "s-10", "s-11"]),
        ("{0..6..3}", ["0", "3", "6"]),
        ("{2..0}", ["2", "1", "0"]),
        ("{a,b}{1,2}", ["a1", "a2", "b1", "b2"]),
        ("x{a,b{c,d}}", ["xa", "xbc", "xbd"]),
        ("{lit}-{1..2}", ["{lit}-1", "{lit}-2"]),
        ("open{", ["open{"]),
    ],
)
def test_expand_braces(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


def test_array_collection_rgb_and_gray() -> None:
    rgb = np.zeros((5, 8, 6, 3), np.uint8)
    rgb[2, ..., 0] = 255
    labels = np.array([0, 1, 2, 1, 0])
    collection = ArrayCollection(rgb, labels, name="demo")
    assert isinstance(collection, Collection)
    assert len(collection) == 5 and collection.path(2) == "demo[2]"
    assert collection.read(2).getpixel((0, 0)) == (255, 0, 0)
    assert collection.read(2).size == (6, 8)
    assert collection.class_names == ["0", "1", "2"]
    assert collection.describe() == "5 6x8 images from array 'demo'"
    gray = ArrayCollection(np.full((2, 4, 4), 7, np.uint8))
    assert gray.read(1).mode == "RGB" and gray.read(1).getpixel((0, 0)) == (7, 7, 7)
    assert gray.labels is None
    with pytest.raises(ValueError, match="uint8"):
        ArrayCollection(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(IndexError):
        gray.read(2)
