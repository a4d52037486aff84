"""Scoring one pre-trained run of a comparison, each score kept in a JSON file of its own.

The scores are the ``deepercluster eval`` protocols, called in-process: linear probes per conv
layer (:func:`~deepercluster.evaluation.protocols.tasks.run_linear_task`), kNN and k-means NMI
on the final features (:func:`~deepercluster.evaluation.protocols.tasks.run_knn_task`), and
the NMI of the run's own last clustering against the labels of its images. Each result is
written, with the settings that produced it, as soon as it is known; a later comparison
reuses it when the settings and the run's weights are unchanged, and computes it again when
they differ.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deepercluster.engine.run_folder import open_run, weights_id
from deepercluster.evaluation.protocols.cluster_task import label_agreement
from deepercluster.evaluation.protocols.linear import LinearProtocol
from deepercluster.evaluation.protocols.tasks import Inputs, run_knn_task, run_linear_task

__all__ = ["ScoreSettings", "cached_score", "clusters_score", "knn_score", "linear_score"]


@dataclass(frozen=True)
class ScoreSettings:
    """How every run of a comparison is scored (the same for all of them).

    Attributes:
        inputs: the labelled images and how to run the network; its ``checkpoint`` and
            ``out`` are filled in per run.
        probe: the linear-probe protocol.
        knn_k: neighbours of the kNN classifier.
        knn_temperature: temperature of its votes.
        kmeans_k: clusters of the k-means on the test features (the number of classes).
    """

    inputs: Inputs
    probe: LinearProtocol
    knn_k: int = 20
    knn_temperature: float = 0.07
    kmeans_k: int = 10


def _inputs_key(inputs: Inputs) -> dict[str, Any]:
    # Where results go and how fast they come do not change them.
    return {
        k: v
        for k, v in asdict(inputs).items()
        if k not in ("checkpoint", "out", "workers", "progress", "device", "batch_size")
    }


def cached_score(
    path: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The score saved at ``path`` for ``key``, or ``compute()`` saved there now.

    Returns:
        ``({"key", "seconds", "result"}, reused)``.
    """
    if path.is_file():
        saved: dict[str, Any] = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key)):
            return saved, True
    start = time.perf_counter()
    result = compute()
    record = {"key": key, "seconds": time.perf_counter() - start, "result": result}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # a kill leaves the old file or the new one, never half of one
    return record, False


def _run_inputs(settings: ScoreSettings, run: Path, work: Path) -> Inputs:
    return replace(settings.inputs, checkpoint=str(run), out=str(work))


def linear_score(settings: ScoreSettings, run: Path, scores: Path) -> tuple[dict[str, Any], bool]:
    """Linear probes of every conv layer of ``run``, saved as ``scores/linear.json``."""
    key = {
        "weights": weights_id(run),
        "inputs": _inputs_key(settings.inputs),
        "protocol": asdict(settings.probe),
    }

    def compute() -> dict[str, Any]:
        _, payload = run_linear_task(
            _run_inputs(settings, run, scores / "eval"), settings.probe, None
        )
        return payload

    return cached_score(scores / "linear.json", key, compute)


def knn_score(settings: ScoreSettings, run: Path, scores: Path) -> tuple[dict[str, Any], bool]:
    """kNN top-1 and k-means NMI on the final features, saved as ``scores/knn.json``."""
    key = {
        "weights": weights_id(run),
        "inputs": _inputs_key(settings.inputs),
        "k": settings.knn_k,
        "temperature": settings.knn_temperature,
        "kmeans": settings.kmeans_k,
    }

    def compute() -> dict[str, Any]:
        _, payload = run_knn_task(
            _run_inputs(settings, run, scores / "eval"),
            [settings.knn_k],
            settings.knn_temperature,
            settings.kmeans_k,
        )
        return payload

    return cached_score(scores / "knn.json", key, compute)


def clusters_score(run: Path, labels: np.ndarray, scores: Path) -> tuple[dict[str, Any], bool]:
    """NMI (and AMI, ARI, purity) of the run's last clustering vs the labels of its images.

    Args:
        run: a run folder of a clustering method.
        labels: (N,) class of each pre-training image, in the run's image order (-1: none).
        scores: where ``clusters.json`` goes.
    """
    key = {"weights": weights_id(run), "labels": _digest(labels)}

    def compute() -> dict[str, Any]:
        opened = open_run(run)
        clustering = opened.clustering
        if clustering.labels.shape != labels.shape:
            raise ValueError(
                f"{run} clustered {clustering.labels.shape[0]} images but the comparison "
                f"pre-trains on {labels.shape[0]}; delete the folder to train it again"
            )
        keep = clustering.valid.astype(bool) & (labels >= 0)
        result: dict[str, Any] = {"images": int(keep.sum())}
        levels = {"sub-clusters": clustering.labels, "super-clusters": clustering.super_clusters}
        for level, assignment in levels.items():
            if np.unique(assignment[keep]).size > 1:
                result[level] = label_agreement(assignment[keep].astype(np.int64), labels[keep])
        return result

    return cached_score(scores / "clusters.json", key, compute)


def _digest(labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]
