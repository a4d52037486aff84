"""A finished (or interrupted) run folder, opened read-only for inspection and export.

A run folder (``deepercluster train --out runs/x``) holds ``checkpoint.pth`` with the network,
the last clustering (labels, PCA, centroids) and the config, plus ``metrics.jsonl``,
``summary.json`` and ``skipped.csv``. Everything in :mod:`deepercluster.inspect` starts here.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepercluster.config import RunConfig, config_from_dict
from deepercluster.data import Collection, open_collection
from deepercluster.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, tensors_to_arrays
from deepercluster.engine.clustering import Clustering
from deepercluster.models import Backbone, build_backbone

__all__ = ["RunFolder", "open_run", "read_metrics"]


@dataclass(frozen=True)
class RunFolder:
    """What inspection needs from a run folder.

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
            spec, max_pixels=self.config.data.max_pixels, path_column=self.config.data.path_column
        )
        if len(collection) != self.n_images:
            raise ValueError(
                f"{spec} holds {len(collection)} images but {self.path} was trained on "
                f"{self.n_images}; point --data at the run's original images"
            )
        return collection


def open_run(path: str | Path) -> RunFolder:
    """Read a run folder's checkpoint (weights-only load).

    Raises:
        FileNotFoundError: no ``checkpoint.pth`` in ``path``.
        ValueError: the checkpoint holds no clustering yet (killed before the first one).
    """
    path = Path(path)
    ckpt = path / CHECKPOINT_NAME
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
        path=path,
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
