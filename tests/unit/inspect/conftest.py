"""A tiny run folder built without training: the clustering comes from the saved network.

Because the checkpoint's network is the one whose features were clustered (a real run trains
after its last clustering), embedding the run's own images must give back its assignments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tests.conftest import write_pattern_images

from deepercluster.config import RunConfig, load_config
from deepercluster.data import open_collection
from deepercluster.engine.checkpoint import arrays_to_tensors, save_checkpoint
from deepercluster.engine.clustering import Clustering, recluster
from deepercluster.models import build_backbone

N_IMAGES = 40  # plus one unreadable file
K, M = 6, 2


@dataclass(frozen=True)
class TinyRun:
    path: Path
    images: Path
    cfg: RunConfig
    clustering: Clustering
    bad_id: int  # the id of the unreadable image


def make_run(root: Path) -> TinyRun:
    images = write_pattern_images(root / "images", n=N_IMAGES, size=32)
    (images / "img_bad.png").write_bytes(b"not an image")
    out = root / "run"
    cfg = load_config(
        preset="deepercluster",
        overrides=[
            f'data.path="{images}"', f'out="{out}"', "model.arch=small", "data.resolution=32",
            "data.workers=0", f"cluster.k={K}", f"cluster.super_clusters={M}",
            "cluster.pca_dim=8", "train.epochs=3",
        ],
    )  # fmt: skip
    collection = open_collection(images)
    torch.manual_seed(0)
    backbone = build_backbone("small", sobel=True, resolution=32)
    clustering, skipped = recluster(
        backbone, backbone.feature_dim, collection, cfg, epoch=0, device=torch.device("cpu"),
        previous=None, progress=False,
    )  # fmt: skip
    save_checkpoint(
        out / "checkpoint.pth",
        {
            "model": backbone.state_dict(),
            "state": {"epoch": 3, "iteration": 0, "clustered_epoch": 2, "position": 0},
            "clustering": arrays_to_tensors(clustering.to_dict()),
            "skipped": [[collection.path(i), reason] for i, reason in skipped],
            "n_images": len(collection),
            "config": cfg.to_dict(),
        },
    )
    records = [
        {"epoch": e, "train/loss": 3.0 - e / 2, "train/super_acc": 0.2 + e / 10,
         "cluster/objective": 30.0 - e, "cluster/size_min": 2.0, "cluster/size_max": 12.0,
         "time/train_s": 1.5, "time/kmeans_s": 0.2}
        for e in range(1, 4)  # epochs are numbered from 1, as train writes them
    ]  # fmt: skip
    (out / "config.json").write_text(cfg.to_json() + "\n")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = [i for i, _ in skipped]
    assert len(bad) == 1
    return TinyRun(out, images, cfg, clustering, bad[0])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_run(tmp_path_factory.mktemp("inspect"))
