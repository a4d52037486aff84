"""``deepercluster eval retrieval`` end to end on generated images with planted near-duplicates.

Each query photo has two altered copies in the database (shrunk and re-encoded as a
low-quality JPEG; cropped and rescaled) among unrelated distractors. Even a random-init trunk
finds such copies, so the test checks the whole chain (formats, matching, multi-scale
descriptors, whitening, ranking, mAP), not the quality of a pre-training.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import save_random_backbone

from deepercluster.cli import main

N_QUERIES = 6


def _photo(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A smooth random colour field with a few bright rectangles: distinct per seed."""
    grid = rng.uniform(0, 255, (5, 5, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))
    img = img.astype(np.float64)
    for _ in range(3):
        x, y = rng.integers(0, size - 12, 2)
        w, h = rng.integers(6, 14, 2)
        img[y : y + h, x : x + w] = rng.uniform(0, 255, 3)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("retrieval")
    rng = np.random.default_rng(0)
    for sub in ("queries", "db", "white"):
        (base / sub).mkdir()
    rows = ["query,positives,junk,bbox"]
    for i in range(N_QUERIES):
        photo = _photo(rng)
        photo.save(base / f"queries/q{i}.png")
        photo.resize((40, 40), Image.Resampling.BILINEAR).save(base / f"db/dup{i}a.jpg", quality=40)
        photo.crop((4, 2, 44, 42)).resize((48, 48)).save(base / f"db/dup{i}b.png")
        rows.append(f"q{i}.png,dup{i}a.jpg;dup{i}b.png,,")
    rows[-1] += "0 0 48 48"  # a box covering the whole query changes nothing
    for j in range(18):
        _photo(rng).save(base / f"db/b{j:02d}.png")
    for j in range(24):
        _photo(rng).save(base / f"white/w{j:02d}.png")
    (base / "gt.csv").write_text("\n".join(rows) + "\n")
    save_random_backbone(base / "backbone.pth")
    return base


def _args(base: Path, out: Path, gt: str, *extra: str) -> list[str]:
    return ["eval", "retrieval", "--checkpoint", str(base / "backbone.pth"), "--database",
            str(base / "db"), "--queries", str(base / "queries"), "--gt", str(base / gt),
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


def test_user_queries_find_their_planted_copies(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    out = tmp_path / "out"
    assert main(_args(planted, out, "gt.csv", "--whiten-data", str(planted / "white"))) == 0
    result = json.loads((out / "retrieval.json").read_text())
    # the database is the whole folder: the copies and the distractors
    assert result["n_queries"] == N_QUERIES and result["n_database"] == 2 * N_QUERIES + 18
    assert result["whiten_dim"] == 23  # 24 whitening images: at most 23 directions
    # copies come first: far above the ~0.1 of a random ranking of 30 images
    assert result["protocols"]["all"]["map"] > 0.8
    assert "| all |" in capsys.readouterr().out
    assert (out / "retrieval.png").read_bytes()[:4] == b"\x89PNG"
    # GeM: the same chain, another pooling
    gem_args = ["--pooling", "gem", "--whiten-data", str(planted / "white")]
    assert main(_args(planted, tmp_path / "gem", "gt.csv", *gem_args)) == 0
    gem = json.loads((tmp_path / "gem/retrieval.json").read_text())
    assert gem["protocols"]["all"]["map"] > 0.8


def test_revisited_ground_truth_scores_easy_medium_and_hard(
    planted: Path, tmp_path: Path, one_thread: None
) -> None:
    names = sorted(p.name for p in (planted / "db").iterdir())
    gnd = [
        {"bbx": [0, 0, 48, 48], "easy": [names.index(f"dup{i}a.jpg")],
         "hard": [names.index(f"dup{i}b.png")], "junk": [names.index("b00.png")]}
        for i in range(N_QUERIES)
    ]  # fmt: skip
    data = {"imlist": names, "qimlist": [f"q{i}.png" for i in range(N_QUERIES)], "gnd": gnd}
    with (planted / "gnd_test.pkl").open("wb") as fh:
        pickle.dump(data, fh)
    out = tmp_path / "out"
    assert main(_args(planted, out, "gnd_test.pkl", "--scales", "1")) == 0
    protocols = json.loads((out / "retrieval.json").read_text())["protocols"]
    assert sorted(protocols) == ["easy", "hard", "medium"]
    assert all(0.5 < p["map"] <= 1.0 for p in protocols.values())  # not whitened here
    assert "| medium |" in (out / "retrieval.md").read_text()


def test_bad_ground_truth_gives_one_line_errors(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(planted, tmp_path, "missing.pkl")) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.pkl does not exist" in err and len(err.splitlines()) == 1
    (planted / "bad.csv").write_text("query,positives\nq0.png,nothere.jpg\n")
    assert main(_args(planted, tmp_path, "bad.csv")) == 2
    err = capsys.readouterr().err.strip()
    assert "match no image" in err and "nothere.jpg" in err and len(err.splitlines()) == 1
    (planted / "evil.pkl").write_bytes(pickle.dumps({"imlist": Path("x")}))
    assert main(_args(planted, tmp_path, "evil.pkl")) == 2
    assert "not a readable ground-truth file" in capsys.readouterr().err


def test_search_builds_an_index_in_chunks_and_finds_the_copies(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    index = tmp_path / "index"
    build = ["search", "--checkpoint", str(planted / "backbone.pth"), "--index", str(index),
             "--data", str(planted / "db"), "--chunk-rows", "8", "--no-progress"]  # fmt: skip
    assert main(build) == 0
    assert json.loads((index / "descriptors/progress.json").read_text())["chunks_done"] == 4
    query = str(planted / "queries/q3.png")
    assert main(["search", "--index", str(index), "--query", query, "--top", "5"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln[:3].strip().isdigit()]
    assert len(lines) == 5
    assert {ln.split()[-1].rsplit("/", 1)[-1] for ln in lines[:2]} == {"dup3a.jpg", "dup3b.png"}
    page = (index / "results/q3.html").read_text()
    assert "dup3a.jpg" in page and page.count("data:image/jpeg;base64,") == 6
    # the same build again finds the finished index; other settings are refused
    assert main(build) == 0
    assert main([*build, "--pooling", "gem"]) == 2
    assert "holds an index of other images" in capsys.readouterr().err
    # the same path with other weights (a run retrained in place) is refused too
    weights = planted / "backbone.pth"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert main(build) == 2
    assert "holds an index of other images, weights" in capsys.readouterr().err
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(["search", "--index", str(tmp_path / "none"), "--query", query]) == 2


def test_search_after_an_indexed_image_was_deleted_still_answers(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    db = shutil.copytree(planted / "db", tmp_path / "db")
    index = tmp_path / "index"
    assert main(["search", "--checkpoint", str(planted / "backbone.pth"), "--index", str(index),
                 "--data", str(db), "--no-progress"]) == 0  # fmt: skip
    (db / "dup3a.jpg").unlink()  # deleted after indexing: still a hit, without a thumbnail
    query = str(planted / "queries/q3.png")
    assert main(["search", "--index", str(index), "--query", query, "--top", "5"]) == 0
    page = (index / "results/q3.html").read_text()
    assert "dup3a.jpg" in page and page.count("data:image/jpeg;base64,") == 5
    shutil.rmtree(db)  # the whole collection gone: the hits, and a page without thumbnails
    assert main(["search", "--index", str(index), "--query", query, "--top", "5"]) == 0
    assert "no thumbnails" in capsys.readouterr().out
    assert (index / "results/q3.html").read_text().count("data:image/jpeg;base64,") == 1
