"""Reading an epoch shard by shard through a shuffle window (``data.shard_buffer``)."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from tests.conftest import write_pattern_images

from deepercluster import cli
from deepercluster.data import open_collection, storage_order, uniform_epoch_plan
from deepercluster.engine.checkpoint import load_checkpoint


def test_same_samples_each_shard_read_in_one_forward_sweep() -> None:
    groups = np.repeat(np.arange(8), 50)  # 8 shards of 50 images
    labels = np.arange(400) % 10
    plan = uniform_epoch_plan(labels, size=300, seed=1, epoch=2, rotation=True)
    out = storage_order(plan, groups, buffer=6, seed=1, epoch=2)
    pairs = Counter(zip(plan.indices.tolist(), plan.rotations.tolist(), strict=True))
    assert pairs == Counter(zip(out.indices.tolist(), out.rotations.tolist(), strict=True))
    for g in range(8):
        where = np.flatnonzero(groups[out.indices] == g)
        assert where[-1] - where[0] < len(where) + 6  # contiguous up to the window
        ids = out.indices[where]
        assert np.all(ids[6:] >= np.maximum.accumulate(ids)[:-6])  # forward, up to the window
    again = storage_order(plan, groups, buffer=6, seed=1, epoch=2)
    assert np.array_equal(again.indices, out.indices)  # a resume finds its position
    other = storage_order(plan, groups, buffer=6, seed=1, epoch=3)
    assert not np.array_equal(other.indices, out.indices)
    exact = storage_order(plan, groups, buffer=1, seed=0, epoch=0)
    assert np.all(np.diff(exact.indices[groups[exact.indices] == 0]) >= 0)


def test_training_on_tar_shards_with_a_shard_buffer(tmp_path: Path) -> None:
    images = write_pattern_images(tmp_path / "images", n=24)
    files = sorted(images.iterdir())
    for s in range(3):
        with tarfile.open(tmp_path / f"part-{s}.tar", "w") as tar:
            for f in files[8 * s : 8 * (s + 1)]:
                tar.add(f, arcname=f.name)
    data = str(tmp_path / "part-{0..2}.tar")
    groups = open_collection(data).storage_groups()
    assert groups.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    sets = [
        "model.arch=small", "data.resolution=32", "data.workers=0", "cluster.k=4",
        "cluster.super_clusters=2", "cluster.pca_dim=8", "train.epochs=1",
        "train.batch_size=8", "data.shard_buffer=4", "train.device=cpu",
    ]  # fmt: skip
    args = ["train", "--data", data, "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli.main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth")["state"]["epoch"] == 1
