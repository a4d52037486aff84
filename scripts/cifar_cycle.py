"""Benchmark: one full DeeperCluster cycle (extract + PCA + cluster + train) on CIFAR-10.

Reads the 50,000 training images straight from the tar (no extraction), trains the small
convnet at 32 px for one epoch with re-clustering, prints the wall time of every stage and
writes them (and NMI of the clusters against the CIFAR-10 classes) to a JSON results file.

    python scripts/cifar_cycle.py --data ../shared/data/cifar10/train.tar --out runs/cifar-cycle
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import deepercluster
from deepercluster.evaluation.nmi import nmi


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10/train.tar")
    p.add_argument("--out", default="runs/cifar-cycle")
    p.add_argument("--results", default="results/cifar_cycle.json")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    cfg = deepercluster.load_config(
        preset="deepercluster",
        overrides=[
            f'data.path="{args.data}"',
            f'out="{args.out}"',
            "model.arch=small",
            "data.resolution=32",
            "data.workers=1",
            "data.crop_scale_min=0.2",
            "cluster.k=1000",
            "cluster.super_clusters=4",
            "cluster.head_init=random",  # the paper's heads, as in its recorded results
            "cluster.super_carry=none",
            "cluster.reassign=1",
            "cluster.pca_dim=128",
            "train.epochs=1",
            "train.batch_size=128",
            "train.lr=0.05",
            *args.overrides,
        ],
    )
    tic = time.perf_counter()
    result = deepercluster.train(cfg, progress=False)
    total = time.perf_counter() - tic
    record = result.history[-1]
    collection = deepercluster.open_collection(args.data)
    classes = np.array([collection.path(i).rsplit("/", 2)[-2] for i in range(len(collection))])
    _, truth = np.unique(classes, return_inverse=True)
    valid = result.clustering.valid
    out = {
        "images": len(collection),
        "config": cfg.to_dict(),
        "seconds": {
            "extract": record["time/extract_s"],
            "pca": record["time/pca_s"],
            "kmeans": record["time/kmeans_s"],
            "train": record["time/train_s"],
            "total_wall": total,
        },
        "images_per_s": {
            "extract": record["speed/extract_images_per_s"],
            "train": record["train/images_per_s"],
        },
        "nmi_clusters_vs_cifar_classes": nmi(result.clustering.labels[valid], truth[valid]),
        "nmi_super_clusters_vs_cifar_classes": nmi(
            result.clustering.super_clusters[valid], truth[valid]
        ),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(json.dumps({k: out[k] for k in ("images", "seconds", "images_per_s")}, indent=2))
    print(
        f"NMI(clusters, CIFAR-10 classes) = {out['nmi_clusters_vs_cifar_classes']:.3f}; "
        f"written to {args.results}"
    )


if __name__ == "__main__":
    main()
