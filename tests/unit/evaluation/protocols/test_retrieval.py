"""Retrieval descriptors against a direct computation; the ground-truth formats."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepercluster.data import ArrayCollection
from deepercluster.data.transforms import to_normalized_tensor
from deepercluster.evaluation.average_precision import REVISITED_SETUPS
from deepercluster.evaluation.pooling import gem, rmac
from deepercluster.evaluation.protocols.retrieval import (
    RetrievalImages,
    RetrievalSettings,
    describe,
    rank,
)
from deepercluster.evaluation.protocols.retrieval_gt import locate, read_ground_truth
from deepercluster.models import build_backbone


@pytest.mark.parametrize("pooling", ["rmac", "gem"])
def test_multiscale_descriptor_is_the_normalised_sum_over_scales(pooling: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
    collection = ArrayCollection(pixels)
    net = build_backbone("small", sobel=True, resolution=32).eval()
    settings = RetrievalSettings(pooling=pooling, scales=(1.0, 0.5), image_size=48)
    out, ok = describe(
        net, RetrievalImages(collection, np.array([0]), 48), settings,
        device=torch.device("cpu"), progress=False,
    )  # fmt: skip
    # directly: shrink to a longer side of 48, then each scale, pooled, summed, normalised
    img = Image.fromarray(pixels[0])
    img.thumbnail((48, 48))
    x = to_normalized_tensor(img)[None]
    total = torch.zeros(1, 512)
    with torch.no_grad():
        for scale in (1.0, 0.5):
            h, w = x.shape[2:]
            grow = max(1.0, 16 / (scale * min(h, w)))  # the 16 px floor of a scaled side
            size = (round(h * scale * grow), round(w * scale * grow))
            xs = x if scale == 1.0 else F.interpolate(x, size=size, mode="bilinear")
            maps = net.forward_conv(xs, ["conv5"])["conv5"]
            total += rmac(maps, 3) if pooling == "rmac" else gem(maps, 3.0)
    np.testing.assert_allclose(out[0], (total / total.norm()).numpy()[0], atol=1e-5)
    assert ok.tolist() == [True]


def test_rank_orders_by_cosine_similarity() -> None:
    queries = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    database = np.array([[0.0, 1.0], [1.0, 0.1], [5.0, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(rank(queries, database, None), [[1, 2, 0], [0, 2, 1]])


def test_ground_truth_formats(tmp_path: Path) -> None:
    query = {"bbx": [1, 2, 30, 40], "easy": [0], "hard": [2], "junk": [1]}
    revisited = {"imlist": ["a", "b", "c"], "qimlist": ["q"], "gnd": [query]}
    (tmp_path / "gnd.json").write_text(json.dumps(revisited))
    gt = read_ground_truth(tmp_path / "gnd.json")
    assert gt.setups == REVISITED_SETUPS and gt.boxes == [(1.0, 2.0, 30.0, 40.0)]
    pos, junk = gt.answers("medium")
    assert sorted(pos[0].tolist()) == [0, 2] and junk[0].tolist() == [1]
    pos, junk = gt.answers("hard")
    assert pos[0].tolist() == [2] and sorted(junk[0].tolist()) == [0, 1]
    user = {"queries": [{"query": "q.jpg", "positives": ["x.jpg", "y.jpg"], "junk": ["z.jpg"]}]}
    (tmp_path / "user.json").write_text(json.dumps(user))
    gt = read_ground_truth(tmp_path / "user.json")
    assert gt.whole_database and gt.database == ["x.jpg", "y.jpg", "z.jpg"]
    (tmp_path / "user.csv").write_text("query,positives,bbox\nq.jpg,x.jpg;y.jpg,1 2 3\n")
    with pytest.raises(ValueError, match="needs 4 numbers"):
        read_ground_truth(tmp_path / "user.csv")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="neither the revisited keys"):
        read_ground_truth(tmp_path / "other.json")


def test_locate_appends_jpg_and_refuses_ambiguous_names() -> None:
    assert locate(["/d/a/x.jpg", "/d/a/y.png"], ["y.png", "a/x"], "--database").tolist() == [1, 0]
    with pytest.raises(ValueError, match="names two images"):
        locate(["/d/a/x.jpg", "/d/b/x.jpg"], ["x"], "--database")
    with pytest.raises(ValueError, match=r"1 of 2 names .* match no image"):
        locate(["/d/a/x.jpg"], ["x", "w"], "--database")


def test_revisited_pickle_may_hold_numpy_arrays_but_no_code(tmp_path: Path) -> None:
    gnd = {"bbx": np.array([1.0, 2.0, 3.0, 4.0]), "easy": np.array([1]), "hard": [], "junk": [0]}
    data = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [gnd]}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(data))
    gt = read_ground_truth(tmp_path / "gnd.pkl")
    assert gt.lists[0]["easy"].tolist() == [1] and gt.boxes == [(1.0, 2.0, 3.0, 4.0)]
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"imlist": Path("x")}))
    with pytest.raises(ValueError, match="refers to the Python object pathlib"):
        read_ground_truth(tmp_path / "evil.pkl")


def test_unreadable_database_images_rank_last_even_when_whitened() -> None:
    from deepercluster.evaluation.protocols.retrieval import fit_whitening, rank

    rng = np.random.default_rng(0)
    queries, database = rng.normal(size=(3, 8)), rng.normal(size=(5, 8))
    database[1] = 0.0  # what an unreadable image's descriptor is
    whitening = fit_whitening(rng.normal(size=(40, 8)), 4)
    readable = np.array([True, False, True, True, True])
    order = rank(queries, database, whitening, readable)
    assert (order[:, -1] == 1).all()
