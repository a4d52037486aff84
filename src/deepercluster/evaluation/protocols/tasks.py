"""What ``deepercluster eval linear`` and ``eval knn`` do, end to end.

Open the labelled train and test collections, pick the (optionally capped) image subsets,
extract and cache the features of a pre-trained backbone, run the protocol, write JSON,
Markdown and PNG results and return the Markdown table (the command prints it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepercluster.cluster import fit_pca, kmeans, l2_normalize
from deepercluster.engine.run_folder import Pretrained, load_pretrained
from deepercluster.evaluation import knn_predict
from deepercluster.evaluation.protocols.cluster_task import label_agreement
from deepercluster.evaluation.protocols.features import FINAL, LayerFeatures, extract_layers
from deepercluster.evaluation.protocols.labels import LabelledCollection, open_train_test
from deepercluster.evaluation.protocols.linear import LinearProtocol, run_linear_probes
from deepercluster.evaluation.protocols.report import (
    markdown_table,
    output_dir,
    plot_curves,
    write_result,
)

__all__ = ["Inputs", "balanced_subset", "open_inputs", "run_knn_task", "run_linear_task"]


@dataclass(frozen=True)
class Inputs:
    """Where the weights and the labelled images are, and how to run the network.

    Attributes:
        checkpoint: run folder, ``backbone.pth`` or ``checkpoint.pth``.
        train_data: labelled training images (class sub-folders, tar with class folders, or
            any collection plus ``train_labels``).
        test_data: labelled test images.
        train_labels: optional CSV (path, label) for the training images.
        test_labels: optional CSV (path, label) for the test images.
        max_train: use at most this many training images (class-balanced; 0 = all).
        max_test: the same for the test images.
        out: results folder (default ``<run>/eval``).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        device: "cpu", "cuda", ...
        precision: "fp32" or "bf16" for the feature extraction.
        progress: show progress bars.
    """

    checkpoint: str
    train_data: str
    test_data: str
    train_labels: str | None = None
    test_labels: str | None = None
    max_train: int = 0
    max_test: int = 0
    out: str | None = None
    batch_size: int = 256
    workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    progress: bool = True


def balanced_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``limit`` labelled images, taking classes in turn.

    A seeded shuffle inside each class, then round-robin over classes: every class gets
    ``limit / C`` images (or all it has). ``limit <= 0`` keeps every labelled image.
    """
    labelled = np.flatnonzero(labels >= 0)
    if limit <= 0 or limit >= labelled.size:
        return labelled
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(labelled)
    cls = labels[shuffled]
    # rank of each image inside its class in the shuffled order
    order = np.argsort(cls, kind="stable")
    rank = np.empty_like(order)
    starts = np.searchsorted(cls[order], cls[order])
    rank[order] = np.arange(order.size) - starts
    chosen = shuffled[np.lexsort((cls, rank))[:limit]]
    return np.sort(chosen)


def _features(
    inputs: Inputs,
    pre: Pretrained,
    data: LabelledCollection,
    limit: int,
    names: list[str],
    cache: Path,
    max_dim: int = 10_000,
) -> LayerFeatures:
    stat = pre.source.stat()
    return extract_layers(
        pre.backbone,
        data.collection,
        data.labels,
        balanced_subset(data.labels, limit),
        names,
        resolution=pre.resolution,
        resize=pre.resize,
        max_dim=max_dim,
        cache_root=cache,
        source_id=f"{pre.source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}",
        batch_size=inputs.batch_size,
        workers=inputs.workers,
        device=torch.device(inputs.device),
        precision=inputs.precision,
        progress=inputs.progress,
    )


def open_inputs(inputs: Inputs) -> tuple[Pretrained, LabelledCollection, LabelledCollection, Path]:
    pre = load_pretrained(inputs.checkpoint, device=inputs.device)
    train, test = open_train_test(
        inputs.train_data, inputs.test_data, inputs.train_labels, inputs.test_labels
    )
    return pre, train, test, output_dir(inputs.checkpoint, inputs.out)


def run_linear_task(
    inputs: Inputs, protocol: LinearProtocol, layers: list[str] | None
) -> tuple[str, dict[str, Any]]:
    """Per-layer linear probes; writes ``linear.{json,md,png}``.

    Returns:
        ``(markdown table, JSON payload)``.
    """
    pre, train, test, out = open_inputs(inputs)
    names = layers if layers else list(pre.backbone.conv_layer_names)
    start = time.perf_counter()
    cache = out / "cache"
    f_train = _features(inputs, pre, train, inputs.max_train, names, cache, protocol.max_dim)
    f_test = _features(inputs, pre, test, inputs.max_test, names, cache, protocol.max_dim)
    extract_s = time.perf_counter() - start
    results = run_linear_probes(f_train, f_test, names, len(train.class_names), protocol)
    rows = [
        [
            r.layer,
            r.dim,
            f"{r.grid[0]}x{r.grid[1]}x{r.grid[1]}",
            f"{r.best_lr:g}",
            f"{r.best_weight_decay:g}",
            ", ".join(r.edges) or "—",
            f"{r.mean:.2f} ± {r.std:.2f}",
        ]
        for r in results
    ]
    table = markdown_table(
        ["layer", "dim", "pooled C×s×s", "lr", "wd", "grid edge", "test top-1 % (mean ± std)"],
        rows,
    )
    header = (
        f"Linear probes of `{pre.source}` — {int(f_train.valid.sum())} train / "
        f"{int(f_test.valid.sum())} test images, {len(train.class_names)} classes, "
        f"{protocol.epochs} epochs, seeds {list(protocol.seeds)}; lr and wd chosen on "
        f"{protocol.holdout:.0%} held out of train.\n\n"
    )
    payload = {
        "checkpoint": str(pre.source),
        "train_data": inputs.train_data,
        "test_data": inputs.test_data,
        "n_train": int(f_train.valid.sum()),
        "n_test": int(f_test.valid.sum()),
        "classes": train.class_names,
        "protocol": asdict(protocol),
        "extract_seconds": extract_s,
        "layers": [asdict(r) for r in results],
    }
    write_result(out, "linear", payload, header + table)
    plot_curves(
        out / "linear.png",
        {
            pre.source.parent.name or "model": (
                [r.layer for r in results],
                [r.mean for r in results],
                [r.std for r in results],
            )
        },
        title="Linear probe accuracy per layer",
        xlabel="layer",
        ylabel="test top-1 (%)",
    )
    return header + table, payload


def run_knn_task(
    inputs: Inputs, ks: list[int], temperature: float, kmeans_k: int, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """Weighted kNN on the final features (and optional k-means NMI); writes ``knn.{json,md}``."""
    pre, train, test, out = open_inputs(inputs)
    f_train = _features(inputs, pre, train, inputs.max_train, [FINAL], out / "cache")
    f_test = _features(inputs, pre, test, inputs.max_test, [FINAL], out / "cache")
    keep_tr, keep_te = f_train.valid, f_test.valid
    x_tr, y_tr = np.asarray(f_train.layers[FINAL])[keep_tr], f_train.labels[keep_tr]
    x_te, y_te = np.asarray(f_test.layers[FINAL])[keep_te], f_test.labels[keep_te]
    rows: list[list[object]] = []
    knn: dict[str, float] = {}
    for k in ks:
        pred = knn_predict(
            x_tr, y_tr, x_te, k=k, temperature=temperature, n_classes=len(train.class_names)
        )
        acc = float((pred == y_te).mean() * 100)
        knn[str(k)] = acc
        rows.append([f"kNN k={k}, T={temperature:g}", f"{acc:.2f}"])
    payload: dict[str, Any] = {
        "checkpoint": str(pre.source),
        "n_train": int(keep_tr.sum()),
        "n_test": int(keep_te.sum()),
        "temperature": temperature,
        "knn_top1": knn,
    }
    if kmeans_k > 0:
        # k-means on the test features, as the training clusters them: PCA-whitened, L2-normed.
        dim = min(128, x_te.shape[1], x_te.shape[0] - 1)
        pca = fit_pca(x_te, dim=dim)
        z = l2_normalize(pca.apply(x_te))
        clusters = kmeans(z, kmeans_k, niter=20, seed=seed).assignments
        agreement = label_agreement(clusters, y_te, seed=seed)
        payload["kmeans"] = {"k": kmeans_k, "pca_dim": dim, **agreement}
        scores = {k: f"{v:.3f}" for k, v in agreement.items()}
        rows.append([f"k-means k={kmeans_k} NMI (random {scores['nmi_random']})", scores["nmi"]])
        rows.append(
            [
                f"k-means k={kmeans_k} AMI / ARI / purity",
                f"{scores['ami']} / {scores['ari']} / {scores['purity']}",
            ]
        )
    header = (
        f"kNN on the final features of `{pre.source}` — {int(keep_tr.sum())} train / "
        f"{int(keep_te.sum())} test images (cosine similarity, votes exp(s/T)).\n\n"
    )
    table = markdown_table(["metric", "value"], rows)
    write_result(out, "knn", payload, header + table)
    return header + table, payload
