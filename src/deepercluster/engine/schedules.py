"""Learning-rate schedules as precomputed per-iteration arrays (DINO's cosine_scheduler habit).

A schedule is a pure function of the configuration and the number of iterations per epoch, so
a resumed run indexes the same array and gets exactly the learning rate it would have had.
"""

from __future__ import annotations

import numpy as np


def lr_schedule(
    *,
    base_lr: float,
    epochs: int,
    iters_per_epoch: int,
    kind: str = "constant",
    warmup_epochs: int = 0,
    step_epochs: int = 30,
    final_lr: float = 0.0,
) -> np.ndarray:
    """Learning rate of every training iteration of the run.

    Args:
        base_lr: peak learning rate (reference DeeperCluster: 0.1, constant).
        epochs: total epochs.
        iters_per_epoch: optimizer steps per epoch.
        kind: ``constant``, ``cosine`` (to ``final_lr``) or ``step`` (x0.1 every
            ``step_epochs``).
        warmup_epochs: linear warm-up from ``base_lr / 100`` over this many epochs.
        step_epochs: period of the step schedule.
        final_lr: end value of the cosine schedule.

    Returns:
        Array of shape (epochs * iters_per_epoch,) float64.
    """
    if iters_per_epoch < 1 or epochs < 1:
        raise ValueError("lr_schedule needs epochs >= 1 and iters_per_epoch >= 1")
    total = epochs * iters_per_epoch
    warm = min(warmup_epochs * iters_per_epoch, total - 1)
    it = np.arange(total, dtype=np.float64)
    if kind == "constant":
        lrs = np.full(total, base_lr)
    elif kind == "cosine":
        progress = (it - warm) / max(1, total - warm)
        lrs = final_lr + 0.5 * (base_lr - final_lr) * (1 + np.cos(np.pi * progress))
    elif kind == "step":
        lrs = base_lr * 0.1 ** np.floor(it / (step_epochs * iters_per_epoch))
    else:
        raise ValueError(f"unknown schedule {kind!r}; use constant, cosine or step")
    if warm > 0:
        lrs[:warm] = np.linspace(base_lr / 100, base_lr, warm, endpoint=False)
    assert len(lrs) == total
    return lrs
