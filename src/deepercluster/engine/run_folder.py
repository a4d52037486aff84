"""A run folder read back: the one reader of what ``deepercluster train --out runs/x`` writes.

``engine/fit.py`` writes the folder: ``checkpoint.pth`` (:func:`~.checkpoint.save_checkpoint`:
network, heads, optimizer, position, last clustering, skipped images, N and the config),
``backbone.pth`` (:func:`~.checkpoint.save_backbone`, the trunk alone), ``config.json``,
``metrics.jsonl`` and ``metrics.csv`` (:class:`deepercluster.log.MetricLogger`),
``summary.json`` (the last epoch's record) and ``skipped.csv``. Evaluation, inspection and
export read it only through this module: :func:`open_run` for a run with its clustering,
:func:`load_pretrained` for the trunk of a run folder or of any file that holds one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepercluster.config import RunConfig, config_from_dict
from deepercluster.data import Collection, open_collection
from deepercluster.engine.checkpoint import (
    CHECKPOINT_NAME,
    load_backbone,
    load_checkpoint,
    tensors_to_arrays,
)
from deepercluster.engine.clustering import Clustering
from deepercluster.models import Backbone, build_backbone

__all__ = [
    "BACKBONE_NAME",
    "Pretrained",
    "RunFolder",
    "backbone_file",
    "load_pretrained",
    "open_run",
    "read_metrics",
    "weights_id",
]

BACKBONE_NAME = "backbone.pth"
CONFIG_NAME = "config.json"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class RunFolder:
    """A run folder and the state of its last checkpoint.

    Attributes:
        path: the run folder.
        config: the run's resolved configuration.
        clustering: the last clustering (labels by image id, PCA, centroids).
        model_state: the backbone's ``state_dict`` at the last checkpoint.
        n_images: N, images in the collection the run trained on.
        epoch: epochs completed; ``clustered_epoch``: the epoch whose features were clustered.
        skipped: (path, reason) of every unreadable image.
    """

    path: Path
    config: RunConfig
    clustering: Clustering
    model_state: dict[str, Any]
    n_images: int
    epoch: int
    clustered_epoch: int
    skipped: list[tuple[str, str]]

    @property
    def k(self) -> int:
        """Total number of sub-clusters."""
        return self.config.cluster.k

    @property
    def m(self) -> int:
        """Number of super-clusters."""
        return self.config.cluster.super_clusters

    @property
    def checkpoint_id(self) -> str:
        """``size-mtime`` of the run's checkpoint: what a cache of this state's features records,
        so that a run trained further in place is not taken for the old one."""
        stat = (self.path / CHECKPOINT_NAME).stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"

    def backbone(self) -> Backbone:
        """The trained network in eval mode, (B, 3, R, R) -> (B, D)."""
        model = build_backbone(
            self.config.model.arch,
            sobel=self.config.model.sobel,
            resolution=self.config.data.resolution,
        )
        model.load_state_dict(self.model_state)
        return model.eval()

    def collection(self, data: str | None = None) -> Collection:
        """Open the run's images, or ``data`` when given (it must hold the same N images).

        Raises:
            ValueError: no path is known (in-memory runs), or ``data`` has another size.
        """
        spec = data or self.config.data.path
        if not spec:
            raise ValueError(
                f"{self.path} does not record where its images are (data.path is empty: it "
                "was trained on an in-memory collection); pass --data PATH"
            )
        collection = open_collection(
            spec,
            max_pixels=self.config.data.max_pixels,
            path_column=self.config.data.path_column,
            max_bytes=self.config.data.max_file_bytes,
        )
        if len(collection) != self.n_images:
            raise ValueError(
                f"{spec} holds {len(collection)} images but {self.path} was trained on "
                f"{self.n_images}; point --data at the run's original images"
            )
        return collection

    def metrics(self) -> list[dict[str, Any]]:
        """Per-epoch records of ``metrics.jsonl`` (see :func:`read_metrics`)."""
        return read_metrics(self.path)

    def summary(self) -> dict[str, Any]:
        """The last epoch's record from ``summary.json`` ({} before the run finished)."""
        file = self.path / SUMMARY_NAME
        return dict(json.loads(file.read_text())) if file.is_file() else {}


def open_run(path: str | Path) -> RunFolder:
    """Read a run folder (or its ``checkpoint.pth``) with its last clustering.

    Raises:
        FileNotFoundError: no ``checkpoint.pth`` at ``path``.
        ValueError: the checkpoint holds no clustering yet (killed before the first one).
    """
    path = Path(path)
    ckpt = path if path.is_file() else path / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{ckpt} not found; pass the folder given to `deepercluster train --out`"
        )
    payload = load_checkpoint(ckpt)
    if payload.get("clustering") is None:
        raise ValueError(
            f"{ckpt} holds no clustering yet (the run stopped before its first one); "
            "resume the run with the same `deepercluster train` command first"
        )
    state = payload["state"]
    return RunFolder(
        path=ckpt.parent,
        config=config_from_dict(payload["config"]),
        clustering=Clustering.from_dict(tensors_to_arrays(payload["clustering"])),
        model_state=payload["model"],
        n_images=int(payload["n_images"]),
        epoch=int(state["epoch"]),
        clustered_epoch=int(state["clustered_epoch"]),
        skipped=[(str(p), str(r)) for p, r in payload["skipped"]],
    )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records of ``metrics.jsonl`` (or ``metrics.csv``), [] when neither exists."""
    path = Path(path)
    jsonl, table = path / "metrics.jsonl", path / "metrics.csv"
    if jsonl.is_file():
        return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    if table.is_file():
        with table.open(newline="") as fh:
            return [
                {k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)
            ]
    return []


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained trunk and the input geometry it was trained at.

    Attributes:
        backbone: (B, 3, H, W) ImageNet-normalised RGB -> (B, feature_dim), eval mode.
        resolution: training crop side R (evaluation crops the same size).
        resize: shorter side before the centre crop (None: the default R * 256 / 224).
        source: the file it was read from.
        config: the training run's configuration (plain dict; {} for a bare state_dict).
    """

    backbone: Backbone
    resolution: int
    resize: int | None
    source: Path
    config: dict[str, Any]


def backbone_file(path: str | Path) -> Path:
    """The file holding the trunk: a run folder's ``backbone.pth``, else its ``checkpoint.pth``;
    a file is itself.

    Raises:
        FileNotFoundError: nothing to load at ``path`` (the message says what to pass).
    """
    path = Path(path)
    if path.is_dir():
        for name in (BACKBONE_NAME, CHECKPOINT_NAME):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} holds neither {BACKBONE_NAME} nor {CHECKPOINT_NAME}; pass a run folder "
            "written by `deepercluster train` or one of those files"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run folder or a .pth file"
        )
    return path


def weights_id(path: str | Path) -> str:
    """``name:size:mtime`` of the file :func:`backbone_file` finds: what results computed
    from a network record, so that weights retrained in place are not taken for the old ones
    (a run folder moved elsewhere keeps its id)."""
    file = backbone_file(path)
    stat = file.stat()
    return f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}"


def load_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> Pretrained:
    """Load the trunk of a run folder, ``backbone.pth``, ``checkpoint.pth`` or exported file.

    The input geometry comes from the run configuration stored in the file, else from the
    ``config.json`` beside it (an exported file in a run folder), else 224 px.

    Raises:
        FileNotFoundError: nothing to load at ``path``.
        ValueError: the file holds no backbone of ours.
    """
    file = backbone_file(path)
    backbone = load_backbone(file, device=device)
    if not isinstance(backbone, Backbone):  # pragma: no cover - load_backbone builds Backbones
        raise ValueError(f"{file} does not hold a deepercluster backbone")
    config = load_checkpoint(file).get("config")
    beside = file.parent / CONFIG_NAME
    if not isinstance(config, dict):
        config = json.loads(beside.read_text()) if beside.is_file() else {}
    data = config.get("data", {})
    resolution = int(data.get("resolution", 224))
    resize = int(data.get("resize", 0)) or None
    return Pretrained(backbone, resolution, resize, file, config)
