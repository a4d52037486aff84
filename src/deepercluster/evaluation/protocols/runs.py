"""Load what the evaluations need from a run folder or a checkpoint file.

A run folder (``runs/x/``) holds ``backbone.pth`` (the trunk alone), ``checkpoint.pth`` (the
whole training state, with the last clustering), ``config.json`` and ``metrics.jsonl``. The
evaluation commands accept the folder or either file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepercluster.engine.checkpoint import load_backbone, load_checkpoint
from deepercluster.models import Backbone

__all__ = ["Pretrained", "RunClusters", "load_pretrained", "load_run_clusters", "output_dir"]


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained trunk and the input geometry it was trained at.

    Attributes:
        backbone: (B, 3, H, W) ImageNet-normalised RGB -> (B, feature_dim), eval mode.
        resolution: training crop side R (evaluation crops the same size).
        resize: shorter side before the centre crop (None: the default R * 256 / 224).
        source: the file it was read from.
        config: the training run's configuration (plain dict).
    """

    backbone: Backbone
    resolution: int
    resize: int | None
    source: Path
    config: dict[str, Any]


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("backbone.pth", "checkpoint.pth"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(
            f"{path} holds neither backbone.pth nor checkpoint.pth; pass a run folder written "
            "by `deepercluster train` or one of those files"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run folder or a .pth file"
        )
    return path


def load_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> Pretrained:
    """Load the trunk of a run folder, ``backbone.pth`` or ``checkpoint.pth``.

    Raises:
        FileNotFoundError: nothing to load at ``path``.
    """
    file = _checkpoint_file(Path(path))
    backbone = load_backbone(file, device=device)
    if not isinstance(backbone, Backbone):  # pragma: no cover - load_backbone builds Backbones
        raise ValueError(f"{file} does not hold a deepercluster backbone")
    config: dict[str, Any] = load_checkpoint(file).get("config", {})
    data = config.get("data", {})
    resolution = int(data.get("resolution", 224))
    resize = int(data.get("resize", 0)) or None
    return Pretrained(backbone, resolution, resize, file, config)


def output_dir(checkpoint: str | Path, out: str | None) -> Path:
    """Where results go: ``out`` if given, else ``<run folder>/eval``."""
    if out:
        return Path(out)
    path = Path(checkpoint)
    return (path if path.is_dir() else path.parent) / "eval"


@dataclass(frozen=True)
class RunClusters:
    """The last clustering of a run, and its history.

    Attributes:
        labels: (N,) int64 global sub-cluster id, -1 for unreadable images.
        super_clusters: (N,) int64 super-cluster id.
        valid: (N,) bool, images that were clustered.
        data_path: the collection the run trained on (from its config).
        path_column: CSV column naming the images, when data_path is a CSV.
        nmi_previous: ``(epoch, NMI with the previous clustering)`` from ``metrics.jsonl``.
        config: the run's configuration.
    """

    labels: np.ndarray
    super_clusters: np.ndarray
    valid: np.ndarray
    data_path: str
    path_column: str
    nmi_previous: tuple[tuple[int, float], ...]
    config: dict[str, Any]


def load_run_clusters(run: str | Path) -> RunClusters:
    """Read the clustering stored in ``<run>/checkpoint.pth`` and the NMI log of ``metrics.jsonl``.

    Raises:
        FileNotFoundError: no checkpoint in the folder.
        ValueError: the run never clustered (RotNet, or stopped before the first clustering).
    """
    folder = Path(run)
    file = folder / "checkpoint.pth" if folder.is_dir() else folder
    if not file.exists():
        raise FileNotFoundError(
            f"{file} does not exist; pass --run a folder written by `deepercluster train`"
        )
    folder = file.parent
    payload = load_checkpoint(file)
    clustering = payload.get("clustering")
    config: dict[str, Any] = payload.get("config", {})
    if not clustering or "labels" not in clustering:
        raise ValueError(
            f"{file} holds no clustering (a RotNet run or one stopped before its first "
            "clustering); evaluate its features with `eval linear` or `eval knn` instead"
        )
    labels = np.asarray(clustering["labels"], dtype=np.int64)
    if np.all(labels <= 0) and int(config.get("cluster", {}).get("k", 2)) <= 1:
        raise ValueError(
            f"{file} comes from a run without clustering (cluster.k = 1); evaluate its "
            "features with `eval linear` or `eval knn` instead"
        )
    history: list[tuple[int, float]] = []
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "cluster/nmi_previous" in row:
                history.append((int(row["epoch"]), float(row["cluster/nmi_previous"])))
    data = config.get("data", {})
    return RunClusters(
        labels=labels,
        super_clusters=np.asarray(clustering["super_clusters"], dtype=np.int64),
        valid=np.asarray(clustering["valid"], dtype=bool),
        data_path=str(data.get("path", "")),
        path_column=str(data.get("path_column", "path")),
        nmi_previous=tuple(history),
        config=config,
    )
