"""``deepercluster demo``: the whole method on a real data set that ships with scikit-learn.

scikit-learn's 1,797 handwritten digits (8x8 grey, 10 classes) are upsampled to 32x32 RGB and
used, without their labels, to pre-train the small convnet with DeeperCluster. The labels are
only used afterwards to say what was learned: NMI between the final clusters and the digits,
and the accuracy of linear and kNN classifiers on frozen features, against the same network at
random initialisation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepercluster.config import RunConfig, load_config
from deepercluster.data import ArrayCollection, ClusterTransform, ClusterView
from deepercluster.engine.clustering import recluster
from deepercluster.engine.fit import fit, resolve_device
from deepercluster.evaluation.nmi import nmi
from deepercluster.features import extract_features
from deepercluster.models import Backbone, build_backbone

# The demo's own defaults: the paper's method (rotation x 2 super-clusters x sub-clusters),
# sized so that the whole run takes a few minutes on 2 CPU cores.
DEMO_SETTINGS: dict[str, Any] = {
    # Digits are chiral: a mirrored 2 is not a 2, and flips would make 90 and 270 degree
    # rotations indistinguishable, so the demo turns flips off.
    "data": {"resolution": 32, "crop_scale_min": 0.5, "workers": 0, "hflip": False},
    "model": {"arch": "small", "sobel": True},
    "cluster": {"k": 40, "super_clusters": 2, "rotation": True, "reassign": 3, "pca_dim": 64},
    # Small batches: 1,797 images give few steps per epoch, and steps are what the net needs.
    "train": {"epochs": 30, "batch_size": 32, "lr": 0.05, "weight_decay": 1e-5},
}


def digits_collection(size: int = 32) -> ArrayCollection:
    """scikit-learn's digits as (1797, size, size, 3) uint8 RGB images with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (np.asarray(digits.images) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    big = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
            for im in images
        ]
    )
    rgb = np.repeat(big[..., None], 3, axis=-1)
    return ArrayCollection(
        rgb, labels=np.asarray(digits.target, dtype=np.int64), name="sklearn digits"
    )


@dataclass(frozen=True)
class DemoReport:
    """Numbers the demo prints (also returned for tests)."""

    nmi_clusters: float
    nmi_clusters_random: float
    nmi_super_clusters: float
    linear_trained: float
    linear_random: float
    knn_trained: float
    knn_random: float
    seconds: float


def frozen_features(model: Backbone, collection: ArrayCollection, cfg: RunConfig) -> np.ndarray:
    """(N, D) eval-mode features of every image (centre crop, no rotation)."""
    device = next(model.parameters()).device
    view = ClusterView(collection, ClusterTransform(cfg.data.resolution))
    loader = DataLoader(view, batch_size=256, shuffle=False, num_workers=0)
    out = extract_features(
        model, loader, len(collection), model.feature_dim, device=device, progress=False
    )
    return out.features


def probe_accuracies(
    features: np.ndarray, labels: np.ndarray, seed: int = 0
) -> tuple[float, float]:
    """Test accuracy of logistic regression and 10-NN (cosine) on a fixed stratified split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    x_tr, x_te, y_tr, y_te = train_test_split(
        features, labels, test_size=0.4, random_state=seed, stratify=labels
    )
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    linear.fit(x_tr, y_tr)
    knn = make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=10))
    knn.fit(x_tr, y_tr)
    return float(linear.score(x_te, y_te)), float(knn.score(x_te, y_te))


def run_demo(
    *,
    out: str | Path = "runs/demo",
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> DemoReport:
    """Pre-train on the digits, then print and return what was learned."""
    tic = time.perf_counter()
    settings = [f'out="{Path(out).as_posix()}"']
    if epochs is not None:
        settings.append(f"train.epochs={epochs}")
    cfg = load_config(base=DEMO_SETTINGS, overrides=[*settings, *overrides])
    collection = digits_collection(cfg.data.resolution)
    labels = collection.labels
    assert labels is not None
    print(
        f"deepercluster demo: {len(collection)} handwritten digits (scikit-learn), "
        f"{cfg.model.arch} convnet at {cfg.data.resolution}px, k={cfg.cluster.k} "
        f"({cfg.cluster.super_clusters} super-clusters x {cfg.cluster.sub_per_super}), "
        f"rotation={cfg.cluster.rotation}, {cfg.train.epochs} epochs -> {cfg.out}"
    )
    result = fit(cfg, collection=collection, progress=progress)

    trained = frozen_features(result.backbone, collection, cfg)
    torch.manual_seed(cfg.train.seed)
    random_net = build_backbone(
        cfg.model.arch, sobel=cfg.model.sobel, resolution=cfg.data.resolution
    ).to(resolve_device(cfg.train.device))
    random_feats = frozen_features(random_net, collection, cfg)
    lin_t, knn_t = probe_accuracies(trained, labels)
    lin_r, knn_r = probe_accuracies(random_feats, labels)
    # The same clustering pipeline (PCA whitening + hierarchical k-means) on the untrained
    # network: how much of the clusters' agreement with the digits did training add?
    random_clusters, _ = recluster(
        random_net,
        random_net.feature_dim,
        collection,
        cfg,
        epoch=0,
        device=resolve_device(cfg.train.device),
        previous=None,
        progress=False,
    )
    valid = result.clustering.valid
    report = DemoReport(
        nmi_clusters=nmi(result.clustering.labels[valid], labels[valid]),
        nmi_clusters_random=nmi(random_clusters.labels[valid], labels[valid]),
        nmi_super_clusters=nmi(result.clustering.super_clusters[valid], labels[valid]),
        linear_trained=lin_t,
        linear_random=lin_r,
        knn_trained=knn_t,
        knn_random=knn_r,
        seconds=time.perf_counter() - tic,
    )
    print()
    print("What the network learned without labels (digit labels used only to score):")
    print("                                             trained    random init")
    print(
        f"  NMI(k={cfg.cluster.k} clusters, digit labels)"
        f"           {report.nmi_clusters:7.3f}    {report.nmi_clusters_random:7.3f}"
    )
    print("  frozen-feature classifiers (60/40 split)")
    print(f"    logistic regression                      {lin_t:7.3f}    {lin_r:7.3f}")
    print(f"    10-NN (cosine)                           {knn_t:7.3f}    {knn_r:7.3f}")
    print(
        f"  NMI({cfg.cluster.super_clusters} super-clusters, digit labels)"
        f"      {report.nmi_super_clusters:7.3f}"
    )
    print(f"  total time {report.seconds:.0f}s; run folder {result.out_dir}")
    return report
