"""Resuming a run: rank 0 reads the checkpoint, every rank restores its part.

The checkpoint is sent from rank 0 to the others (no shared disk needed); the sub-heads
travel apart, as tensors, so each training group receives only its own slice. A damaged
latest checkpoint falls back to the one before it (``checkpoint.prev.pth``), with a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepercluster import distributed
from deepercluster.config import RunConfig
from deepercluster.data import SkipLog
from deepercluster.distributed import DistEnv
from deepercluster.engine.checkpoint import (
    PREVIOUS_NAME,
    TrainingState,
    check_resumable,
    load_checkpoint,
    set_rng_state,
    tensors_to_arrays,
)
from deepercluster.engine.clustering import Clustering
from deepercluster.engine.failures import CheckpointError, RunFolderError
from deepercluster.engine.layout import TrainingLayout, load_heads_state
from deepercluster.engine.train import EpochStats
from deepercluster.log import get_logger
from deepercluster.models import Backbone, HierarchicalHeads

log = get_logger("fit")


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues.

    Attributes:
        state: epoch, iteration and plan position to continue from.
        clustering: the current targets (None if the run stopped before its first one).
        stats: the interrupted epoch's sums so far (None at an epoch boundary).
    """

    state: TrainingState
    clustering: Clustering | None
    stats: EpochStats | None


def resume_from_checkpoint(
    ckpt_path: Path,
    cfg: RunConfig,
    env: DistEnv,
    *,
    backbone: Backbone,
    heads: HierarchicalHeads,
    optimizer: torch.optim.Optimizer,
    layout: TrainingLayout,
    n_images: int,
    skip_log: SkipLog,
) -> Resumed | None:
    """Restore weights, optimizer, RNG and skip log from ``ckpt_path`` (a collective call).

    Returns:
        Where to continue, or None when there is no checkpoint (a fresh run).

    Raises:
        IncompatibleCheckpointError: the checkpoint was made with settings that change results.
        RunFolderError: the checkpoint and the one before it are both damaged or missing.
    """
    # Rank 0 reads the checkpoint and sends it to the others: no shared disk needed. The
    # sub-heads travel apart, as tensors, so each group receives only its own slice.
    payload, error = None, None
    if env.is_main:
        try:
            payload, ckpt_path = load_latest(ckpt_path)
        except CheckpointError as exc:
            error = str(exc)
    error = distributed.broadcast_tree(error)  # every rank stops, none waits for the others
    if error is not None:
        raise RunFolderError(error)
    saved_heads = (payload.pop("heads"), payload.pop("optimizer")) if payload else None
    payload = distributed.broadcast_tree(payload)
    if payload is None:
        return None
    tolerated = check_resumable(payload, cfg, n_images=n_images, path=ckpt_path)
    backbone.load_state_dict(payload["model"])
    load_heads_state(heads, optimizer, saved_heads, layout)
    rngs = payload["rng"]
    if len(rngs) == env.world_size:
        set_rng_state(rngs[env.rank])
    state = TrainingState(**payload["state"])
    saved_layout = payload.get("layout", {"layout": "replicated", "group_size": 0})
    same_plan = saved_layout["layout"] == layout.plan.layout and (
        not layout.plan.grouped or saved_layout["group_size"] == layout.share[1]
    )
    if state.position and not same_plan:
        # Another layout samples other plans: the interrupted epoch starts over.
        log.warning("layout changed to %s: epoch %d restarts", layout.plan.layout, state.epoch + 1)
        state = TrainingState(state.epoch, 0, state.clustered_epoch, 0)
    clustering: Clustering | None = None
    stats: EpochStats | None = None
    if payload["clustering"] is not None:
        clustering = Clustering.from_dict(tensors_to_arrays(payload["clustering"]))
    # The epoch's sums so far are global: rank 0 carries them, the others start at zero,
    # except the (rank-averaged) seconds, which every rank carries so the mean stays right.
    if payload["stats"] and state.position:
        saved = EpochStats(**payload["stats"])
        stats = saved if env.is_main else EpochStats(seconds=saved.seconds)
    for path, reason in payload["skipped"]:
        skip_log.record(path, reason)
    changed = f" (changed: {', '.join(tolerated)})" if tolerated else ""
    if state.iteration:
        where = f"at epoch {state.epoch + 1}, iteration {state.iteration}"
    else:
        where = f"with {state.epoch} of {cfg.train.epochs} epochs done"
    log.info("resuming from %s %s%s", ckpt_path, where, changed)
    return Resumed(state, clustering, stats)


_TRAINING_KEYS = ("model", "heads", "optimizer", "state", "config", "rng", "clustering")


def load_latest(path: Path) -> tuple[dict[str, Any] | None, Path]:
    """The run's latest readable training checkpoint: ``path``, else the previous one.

    Args:
        path: ``<run>/checkpoint.pth``.

    Returns:
        (payload, the file it came from); (None, path) when the run has no checkpoint.

    Raises:
        CheckpointError: ``path`` is damaged and no previous checkpoint can stand in (the
            message names both ways out: moving the file away, or ``--restart``).
    """
    previous = path.with_name(PREVIOUS_NAME)
    restart = (
        "start the run over with `deepercluster train ... --restart` (the old files are "
        "archived), or choose a new --out"
    )
    try:
        return _load_training(path), path
    except FileNotFoundError:
        if not previous.exists():
            return None, path
        why = f"{path} is missing"
    except CheckpointError as exc:
        if not previous.exists():
            raise exc.with_fix(f"no earlier checkpoint to fall back to: {restart}") from None
        why = str(exc)
    try:
        payload = _load_training(previous)
    except CheckpointError as exc:
        raise exc.with_fix(f"{why}, and this earlier one cannot stand in: {restart}") from None
    if path.exists():
        # Out of the way of the next save, which would keep it as the previous checkpoint.
        os.replace(path, path.with_name(path.name + ".damaged"))
        why += f" (moved to {path.name}.damaged)"
    log.warning("%s: resuming from %s, an earlier point of the run", why, previous.name)
    return payload, previous


def _load_training(path: Path) -> dict[str, Any]:
    payload = load_checkpoint(path)
    missing = [key for key in _TRAINING_KEYS if key not in payload]
    if missing:
        raise CheckpointError(path, f"is not a training checkpoint (no {', '.join(missing)})")
    return payload
