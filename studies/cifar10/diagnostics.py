"""Diagnostics of a run's feature layer and of how its heads start (issue 30's analysis).

    python studies/cifar10/diagnostics.py dead RUN [RUN ...]     # or "random"
    python studies/cifar10/diagnostics.py start RUN

``dead``: on 1,000 training images (centre crops, eval mode), the share of the feature
layer's outputs below zero and of its units that are never positive: the heads read
``ReLU(features)``, so those units give them nothing.

``start``: the heads of every ``cluster.head_init`` / ``cluster.head_temperature`` start,
built from the run's last clustering, on 512 training views as training draws them (random
crop, flip, random rotation), with batch norm in training mode: the super- and sub-class
cross-entropy of the first batches, and how often the start agrees with the targets.

RUN is a DeeperCluster run folder trained on ``--data`` (default: the first 500 images per
class of CIFAR-10's training set, extracted as ``DATA/<class>/<file>.jpg``).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from PIL import Image

from deepercluster.cluster import Blocks
from deepercluster.config import ClusterConfig
from deepercluster.data import open_collection
from deepercluster.data.transforms import ClusterTransform, TrainTransform
from deepercluster.engine.epoch import seeded_generator
from deepercluster.engine.head_start import head_inputs, start_heads
from deepercluster.engine.run_folder import open_run
from deepercluster.losses import hierarchical_loss, super_class_targets
from deepercluster.models import HierarchicalHeads, build_backbone


def _network(run: str) -> torch.nn.Module:
    net = build_backbone("small", sobel=True, resolution=32)
    if run != "random":
        net.load_state_dict(open_run(run).model_state)
    return net


def _images(paths: list[str], transform: ClusterTransform) -> torch.Tensor:
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def dead(runs: list[str], paths: list[str]) -> None:
    x = _images(paths[::5], ClusterTransform(32, 32))
    for run in runs:
        net = _network(run).eval()
        with torch.no_grad():
            f = net(x)
        negative = float((f < 0).float().mean())
        never = float(((f > 0).sum(0) == 0).float().mean())
        print(f"{run}: {negative:.1%} of outputs negative, {never:.1%} of units never positive")


def start(run: str, paths: list[str]) -> None:
    folder = open_run(run)
    c = folder.config.cluster
    net = _network(run).eval()
    with torch.no_grad():
        f = torch.cat(
            [
                net(_images(paths[i : i + 500], ClusterTransform(32, 32)))
                for i in range(0, len(paths), 500)
            ]
        )
    clustering = folder.clustering
    inputs = head_inputs(
        Blocks(f),
        clustering.super_clusters,
        clustering.sub_clusters,
        m=c.super_clusters,
        n_sub=c.sub_per_super,
    )
    clustering = dataclasses.replace(clustering, head_inputs=inputs)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(paths), 512, replace=False)
    view = TrainTransform(32, scale=(folder.config.data.crop_scale_min, 1.0), hflip=True)
    images = torch.stack([view(Image.open(paths[i]).convert("RGB"), rng) for i in pick])
    rotations = torch.from_numpy(rng.integers(0, 4, len(pick)))
    images = torch.stack(
        [torch.rot90(im, int(r), (1, 2)) for im, r in zip(images, rotations, strict=True)]
    )
    sup = torch.from_numpy(clustering.super_clusters[pick])
    sub = torch.from_numpy(clustering.sub_clusters[pick])
    y = super_class_targets(rotations, sup, n_super_clusters=c.super_clusters, rotation=c.rotation)
    net.train()  # batch statistics, as training sees them
    with torch.no_grad():
        feats = torch.cat([net(images[i : i + 128]) for i in range(0, len(images), 128)])
    upright = rotations == 0
    for init, temperature in (
        ("random", 1.0),
        ("centroids", 1.0),
        ("centroids", 2.0),
        ("centroids", 4.0),
    ):
        heads = HierarchicalHeads(f.shape[1], c.n_super_classes, c.sub_per_super)
        cluster = ClusterConfig(
            k=c.k,
            super_clusters=c.super_clusters,
            rotation=c.rotation,
            head_init=init,
            head_temperature=temperature,
        )
        start_heads(
            heads,
            torch.optim.SGD(heads.parameters(), lr=0.1),
            seeded_generator(0, folder.clustered_epoch),
            cluster=cluster,
            clustering=clustering,
            previous=None,
            trained=True,
        )
        out = hierarchical_loss(heads, feats, y, sub, n_super_clusters=c.super_clusters)
        up = hierarchical_loss(
            heads, feats[upright], y[upright], sub[upright], n_super_clusters=c.super_clusters
        )
        n_up = int(upright.sum())
        print(
            f"{init} T={temperature:g}: super CE {float(out.super_loss):.3f}, sub CE "
            f"{float(out.sub_loss):.3f}, sub acc {out.sub_correct / len(pick):.3f}; upright views: "
            f"super acc {up.super_correct / n_up:.3f}, sub acc {up.sub_correct / n_up:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("dead", "start"))
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", default="/tmp/cifar10-study/train-500-per-class")
    args = parser.parse_args()
    collection = open_collection(args.data)
    paths = [str(collection.path(i)) for i in range(len(collection))]
    torch.manual_seed(0)
    if args.what == "dead":
        dead(args.runs, paths)
    else:
        start(args.runs[0], paths)


if __name__ == "__main__":
    main()
