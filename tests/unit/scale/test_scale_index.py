"""The compact path index: one byte buffer and offsets instead of a Python string per image."""

from __future__ import annotations

import gc
import pickle
import tracemalloc
from pathlib import Path

import pytest

from deepercluster.data import open_collection
from deepercluster.data.pathtable import PathTable, common_folder


def test_path_table_round_trips_any_name() -> None:
    names = ["/data/a b/été.jpg", "/data/北京/x.png", "/data/bad-\udcff.jpg", "/data/z.jpg"]
    table = PathTable(names)
    assert table.prefix == "/data/" and len(table) == 4
    assert list(table) == names and table == names and table[-1] == "/data/z.jpg"
    assert table[1:3] == names[1:3]
    assert pickle.loads(pickle.dumps(table)) == names
    with pytest.raises(IndexError):
        table[4]
    assert common_folder(iter(["/a/b/c.jpg", "/a/bc/d.jpg"])) == "/a/"
    assert PathTable([]) == [] and common_folder([]) == ""


def test_list_file_index_costs_its_characters_plus_8_bytes(tmp_path: Path) -> None:
    n = 50_000
    rows = [f"photos/{i // 1000:03d}/img_{i:07d}.jpg" for i in range(n)]  # 25 characters
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(rows) + "\n")
    gc.collect()
    tracemalloc.start()
    collection = open_collection(listing)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(collection) == n and collection.path(7) == str(tmp_path / rows[7])
    # 25 bytes of name + an 8-byte offset; a list of str would hold ~150 bytes per path
    assert held / n < 40, held / n
