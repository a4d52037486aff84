"""Protocol plumbing: pooling bound, cached per-layer features, labels from folders/tars/CSVs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepercluster.data import ArrayCollection, open_collection
from deepercluster.data.pathmatch import match_paths
from deepercluster.evaluation.protocols.features import FINAL, extract_layers, pooled_side
from deepercluster.evaluation.protocols.labels import class_labels
from deepercluster.evaluation.protocols.linear import stratified_holdout
from deepercluster.evaluation.protocols.tasks import balanced_subset
from deepercluster.models import build_backbone


@pytest.mark.parametrize(
    ("c", "h", "bound", "side"),
    [
        (64, 32, 10_000, 12),
        (512, 4, 10_000, 4),
        (256, 8, 9216, 6),
        (512, 4, 100, 1),
        (2, 3, 10_000, 3),
    ],
)
def test_pooled_side_is_the_largest_grid_under_the_bound(
    c: int, h: int, bound: int, side: int
) -> None:
    assert pooled_side(c, h, h, bound) == side
    assert c * side * side <= bound or side == 1


def test_extract_layers_pools_every_layer_once_and_reuses_the_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
    collection = ArrayCollection(images, labels=np.arange(10) % 2)
    net = build_backbone("small", sobel=True, resolution=16).eval()
    names = ["conv1", "conv5", FINAL]
    kwargs = dict(
        resolution=16, resize=16, max_dim=300, cache_root=tmp_path, source_id="w", progress=False
    )
    first = extract_layers(net, collection, collection.labels, np.arange(2, 10), names, **kwargs)  # type: ignore[arg-type]
    assert first.grids == {"conv1": (64, 2), "conv5": (512, 1)}
    assert first.layers["conv1"].shape == (8, 256) and first.layers[FINAL].shape == (8, 512)
    assert first.labels.tolist() == [0, 1] * 4 and first.valid.all()
    # The same numbers as pooling the network's activations by hand (float16 storage).
    from deepercluster.data.transforms import to_normalized_tensor

    x = torch.stack([to_normalized_tensor(collection.read(i)) for i in range(2, 10)])
    with torch.no_grad():
        want = F.adaptive_avg_pool2d(net.forward_conv(x, ["conv1"])["conv1"], 2).flatten(1)
        final = net(x)
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(first.layers["conv1"])).float(), want, atol=2e-2, rtol=1e-2
    )
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(first.layers[FINAL])), final, atol=1e-5, rtol=1e-5
    )
    again = extract_layers(net, collection, collection.labels, np.arange(2, 10), names, **kwargs)  # type: ignore[arg-type]
    assert again.seconds == 0.0  # read from the cache
    np.testing.assert_array_equal(again.layers["conv5"], first.layers["conv5"])


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_labels_from_tar_member_folders_and_csv(tmp_path: Path) -> None:
    shard = tmp_path / "train.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ["train/dog/b.png", "train/cat/a.png", "train/dog/c.png"]:
            data = _png((1, 2, 3))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    collection = open_collection(shard)
    labels, names = class_labels(collection)
    assert names == ["cat", "dog"]
    by_member = {collection.path(i).split(":", 1)[1]: int(labels[i]) for i in range(3)}
    assert by_member == {"train/cat/a.png": 0, "train/dog/b.png": 1, "train/dog/c.png": 1}
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("file,label\ntrain/cat/a.png,x\ntrain/dog/b.png,y\n")
    labels, names = class_labels(collection, csv_file)
    assert names == ["x", "y"] and sorted(labels.tolist()) == [-1, 0, 1]  # c.png has no row
    with pytest.raises(ValueError, match="no row of the CSV"):
        match_paths(collection.paths, ["elsewhere/z.png"])


def test_unlabelled_collection_says_how_to_label_it() -> None:
    collection = ArrayCollection(np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="--labels"):
        class_labels(collection)


def test_subsets_are_balanced_and_holdout_is_stratified() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    labels[5] = -1  # unlabelled images are never picked
    chosen = balanced_subset(labels, 30, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [10, 10, 10]
    assert np.all(np.diff(chosen) > 0) and 5 not in chosen
    assert balanced_subset(labels, 30, seed=0).tolist() == chosen.tolist()
    fit, held = stratified_holdout(labels[labels >= 0], 0.2, seed=0)
    assert np.intersect1d(fit, held).size == 0 and fit.size + held.size == 99
    assert np.bincount(labels[labels >= 0][held]).tolist() == [10, 6, 4]


def test_labels_from_the_label_column_of_a_csv_list(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(_png((1, 2, 3)))
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,dog\nb.png,cat\nc.png,\n")
    labels, names = class_labels(open_collection(listing))
    assert names == ["cat", "dog"] and labels.tolist() == [1, 0, -1]
