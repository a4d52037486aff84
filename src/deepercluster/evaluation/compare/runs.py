"""Pre-training one (method, seed) of a comparison into a run folder of its own.

Each run is an ordinary ``deepercluster train`` folder (``--out/runs/<method>/seed<k>``): a
killed comparison resumes it, a finished one (its ``backbone.pth`` written) is reused. The
folder also keeps ``compare-run.json``, the settings the comparison gave it; running the
comparison again with other settings for the same folder is refused, never silently mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from deepercluster.config import RunConfig, diff_configs
from deepercluster.data import Collection
from deepercluster.engine.checkpoint import save_backbone
from deepercluster.engine.eta import ROUND_TIMES
from deepercluster.engine.failures import RunFolderError
from deepercluster.engine.fit import fit
from deepercluster.engine.run_folder import BACKBONE_NAME, read_metrics
from deepercluster.evaluation.compare.methods import setting_value
from deepercluster.models import build_backbone

__all__ = ["RUN_RECORD", "check_run_folder", "pretrain", "pretrain_seconds", "training_curves"]

RUN_RECORD = "compare-run.json"

MACHINE_SETTINGS = frozenset(
    {"out", "data.workers", "train.device", "train.threads", "train.checkpoint_every"}
)
"""Settings that change where and how fast a run trains, not what it learns."""

CURVES = (
    "train/loss",
    "train/super_acc",
    "train/rotation_acc",
    "train/sub_acc",
    "cluster/nmi_previous",
)
"""Per-epoch metrics of metrics.jsonl that the report shows as curves."""


RANDOM_SETTINGS = ("model.", "data.resolution", "train.seed")
"""What the random network depends on: it is drawn, never trained on the images."""


def check_run_folder(
    folder: Path, cfg: RunConfig, images: dict[str, Any], *, random: bool = False
) -> None:
    """Refuse a run folder that an earlier comparison filled with other settings.

    Args:
        folder: the run folder.
        cfg: the configuration this comparison would train it with.
        images: what identifies the pre-training images (data, labels, cap, count).
        random: the folder holds a random network: only :data:`RANDOM_SETTINGS` count.

    Raises:
        RunFolderError: the folder's recorded settings differ (the message lists them).
    """
    record = folder / RUN_RECORD
    if not record.is_file():
        return
    saved = json.loads(record.read_text())
    now = {"config": cfg.to_dict(), "images": images}
    changed = [
        f"config.{k}"
        for k in diff_configs(saved["config"], now["config"])
        if k not in MACHINE_SETTINGS
    ]
    changed += [f"images.{k}" for k in diff_configs(saved["images"], images)]
    if random:
        changed = [k for k in changed if k.removeprefix("config.").startswith(RANDOM_SETTINGS)]
    if changed:
        details = ", ".join(
            f"{key.split('.', 1)[1]}: {setting_value(saved, key)!r} there "
            f"vs {setting_value(now, key)!r} now"
            for key in changed[:4]
        )
        raise RunFolderError(
            f"{folder} was pre-trained with other settings ({details}); run the comparison "
            "with the settings it had, pass another --out, or delete that folder to train it "
            "again"
        )


def pretrain(
    cfg: RunConfig,
    collection: Collection,
    images: dict[str, Any],
    *,
    random: bool,
    progress: bool,
) -> bool:
    """Pre-train (or initialise, for the random network) one run; reuse it when finished.

    Args:
        cfg: the run's configuration; ``cfg.out`` is its folder.
        collection: the pre-training images.
        images: what identifies them, recorded in the folder (see :func:`check_run_folder`).
        random: only initialise the network with ``cfg.train.seed`` and save it.
        progress: show the training's progress bars.

    Returns:
        True when the run was finished already (nothing trained).
    """
    folder = Path(cfg.out)
    check_run_folder(folder, cfg, images, random=random)
    record = {"config": cfg.to_dict(), "images": images}
    if (folder / BACKBONE_NAME).is_file():
        if random:  # the same network under the comparison's current budget
            _write_json(folder / RUN_RECORD, record)
        return True
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / RUN_RECORD, record)
    if random:
        save_initial_network(folder, cfg)
    else:
        fit(cfg, collection=collection, progress=progress)
    return False


def save_initial_network(folder: Path, cfg: RunConfig) -> None:
    """The network as ``cfg.train.seed`` draws it, saved in ``folder`` as a backbone to score.

    The same draw as the first thing `fit` does, so it is the pre-trained runs' start.
    """
    torch.manual_seed(cfg.train.seed)
    model = build_backbone(cfg.model.arch, sobel=cfg.model.sobel, resolution=cfg.data.resolution)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(cfg.to_json() + "\n")
    save_backbone(folder / BACKBONE_NAME, model, cfg)


def pretrain_seconds(folder: Path) -> float:
    """Training plus clustering seconds of a run, summed over its epochs' metrics.

    Read from the run's own log, it counts every epoch once however often it was resumed.
    """
    keys = ("time/train_s", *ROUND_TIMES)
    return float(sum(float(r.get(k, 0.0)) for r in read_metrics(folder) for k in keys))


def training_curves(folder: Path) -> dict[str, list[list[float]]]:
    """``{metric: [[epoch, value], ...]}`` of the metrics in :data:`CURVES` that were logged.

    The clusters' metrics are repeated on every epoch that trains on them; a curve keeps them
    only on the epochs that re-clustered (``cluster/epoch``), one point per clustering.
    """
    curves: dict[str, list[list[float]]] = {}
    for row in read_metrics(folder):
        for key in CURVES:
            if key not in row:
                continue
            if key.startswith("cluster/") and row.get("cluster/epoch") != row["epoch"]:
                continue
            curves.setdefault(key, []).append([float(row["epoch"]), float(row[key])])
    return curves


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
