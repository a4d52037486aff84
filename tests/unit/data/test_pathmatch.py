"""The one rule that matches CSV rows to images (labels and tags alike)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepercluster.data.pathmatch import csv_values, match_paths, path_parts


def test_path_parts_continue_tar_members_and_read_backslashes() -> None:
    assert path_parts("/d/s.tar:images/a.jpg") == ("d", "s.tar", "images", "a.jpg")
    assert path_parts("./x\\y.png ") == ("x", "y.png")


def test_exact_path_then_longest_trailing_parts() -> None:
    rows = ["images/a.jpg", "a.jpg", "b.jpg", "/abs/c.jpg", "other/dir/d.jpg"]
    images = [
        "/data/s.tar:images/a.jpg",  # tar member with its folder: 2 parts beat the bare name
        "/x/y/b.jpg",  # a unique file name
        "/abs/c.jpg",  # exact
        "/data/d.jpg",  # a unique file name under other folders (1 part in common)
        "/nowhere.jpg",  # no row
    ]
    assert match_paths(images, rows).tolist() == [0, 2, 3, 4, -1]


def test_an_ambiguous_name_is_refused_with_the_fix() -> None:
    rows = ["cat/1.png", "dog/1.png", "1.png"]
    assert match_paths(["/t/dog/1.png"], rows).tolist() == [1]  # the folder tells them apart
    with pytest.raises(ValueError, match="enough parent folders") as err:
        match_paths(["/t/1.png"], rows)  # one part in common with each of the three rows
    assert "3 rows" in str(err.value) and "'cat/1.png', 'dog/1.png'" in str(err.value)
    for image in ("/t/dog/1.png", "dog/1.png"):  # a row written twice, matched or exact
        with pytest.raises(ValueError, match="each image once"):
            match_paths([image], ["dog/1.png", "dog/1.png"])


def test_no_row_for_any_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="no row of the CSV names an image"):
        match_paths(["/d/a.jpg", "/d/b.jpg"], ["elsewhere/z.png"])
    assert match_paths([], ["z.png"]).tolist() == []


def test_csv_values_reads_the_named_or_usual_path_column(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text('file,tags\nimages/a.jpg,"Cat, pet"\nb.jpg,\n')
    images = ["/d/images/a.jpg", "/d/b.jpg", "/d/c.jpg"]
    assert csv_values(images, table, "tags") == ["Cat, pet", "", None]
    assert csv_values(images, table, "tags", path_column="file")[0] == "Cat, pet"
    with pytest.raises(ValueError, match="has no column 'name'"):
        csv_values(images, table, "tags", path_column="name")
    with pytest.raises(ValueError, match="needs a path column"):
        csv_values(images, table, "label")
