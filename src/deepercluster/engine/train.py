"""One training epoch: predict (rotation, super-cluster) and the sub-cluster under it.

ALGORITHM.md section 3: the loss of a sample is CE(super-class head) + CE(its own super-class's
sub-class head). Unreadable images found while training are dropped from their batch and
reported; they never stop the epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from deepercluster import distributed
from deepercluster.config import ClusterConfig
from deepercluster.features import autocast
from deepercluster.losses import hierarchical_loss, super_class_targets
from deepercluster.models import HierarchicalHeads

if TYPE_CHECKING:
    from deepercluster.engine.clustering import Clustering


@dataclass(frozen=True)
class Targets:
    """Pseudo-labels of every image, as tensors indexed by dataset id.

    Attributes:
        super_clusters: (N,) int64 super-cluster of each image (in [0, m)).
        sub_clusters: (N,) int64 sub-cluster inside its super-cluster (in [0, k/m)).
        n_super_clusters: m.
        rotation: whether rotations are part of the super-classes.
    """

    super_clusters: Tensor
    sub_clusters: Tensor
    n_super_clusters: int
    rotation: bool

    @classmethod
    def of(cls, clustering: Clustering, cluster: ClusterConfig) -> Targets:
        """The targets of a clustering, under ``cluster``'s super-clusters and rotation."""
        return cls(
            super_clusters=torch.from_numpy(clustering.super_clusters),
            sub_clusters=torch.from_numpy(clustering.sub_clusters),
            n_super_clusters=cluster.super_clusters,
            rotation=cluster.rotation,
        )


@dataclass
class EpochStats:
    """Running sums of one epoch (kept so a resumed epoch reports the whole epoch)."""

    images: int = 0
    loss_sum: float = 0.0
    super_loss_sum: float = 0.0
    sub_loss_sum: float = 0.0
    super_correct: int = 0
    sub_correct: int = 0
    seconds: float = 0.0
    rotation_correct: int = 0

    def summary(self, *, rotation: bool = True) -> dict[str, float]:
        """The epoch's means; the rotation accuracy only when rotations are predicted."""
        n = max(self.images, 1)
        out = {
            "train/loss": self.loss_sum / n,
            "train/super_loss": self.super_loss_sum / n,
            "train/sub_loss": self.sub_loss_sum / n,
            "train/super_acc": self.super_correct / n,
            "train/sub_acc": self.sub_correct / n,
            "train/images_per_s": self.images / max(self.seconds, 1e-9),
            "train/images": float(self.images),
            "time/train_s": self.seconds,
        }
        if rotation:
            out["train/rotation_acc"] = self.rotation_correct / n
        return out


def train_one_epoch(
    model: nn.Module,
    heads: HierarchicalHeads,
    loader: Iterable[tuple[Tensor, Tensor, Tensor, list[str]]],
    optimizer: torch.optim.Optimizer,
    *,
    targets: Targets,
    lrs: np.ndarray,
    device: torch.device,
    precision: str = "fp32",
    stats: EpochStats | None = None,
    on_step: Callable[[int, EpochStats], None] | None = None,
    on_skip: Callable[[int, str], None] | None = None,
    image_shape: tuple[int, int, int] = (3, 32, 32),
    sync: Callable[[int, int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    eta: Callable[[int], str] | None = None,
) -> EpochStats:
    """Train ``model`` and ``heads`` over one epoch's loader.

    Args:
        model: backbone, (B, 3, H, W) -> (B, D).
        heads: super-class and per-super-class sub-class heads.
        loader: yields (images (B, 3, H, W) already rotated, indices (B,), rotations (B,),
            errors: list of B strings, "" = ok), see :class:`deepercluster.data.TrainView`.
        optimizer: SGD over model and heads.
        targets: pseudo-labels by dataset index.
        lrs: learning rate of each remaining step of this epoch; one step per entry (on every
            rank when distributed).
        device: where to train.
        precision: ``fp32`` or ``bf16`` autocast.
        stats: sums carried over from before an interruption (resumed epoch).
        on_step: called after every optimizer step with (iterations done in this call, stats);
            the driver checkpoints from here.
        on_skip: called with (index, reason) for each unreadable image.
        image_shape: (3, R, R), the shape of an empty batch on a rank with no share of a step.
        sync: distributed runs: ``sync(n_local, n_step)`` reduces the gradients after the
            backward pass (see :func:`deepercluster.engine.layout.sync_gradients`).
        progress: show a progress bar.
        desc: the bar's label, e.g. ``"epoch 3/30"``.
        eta: ``eta(steps done in this call)``: the whole run's time left, shown on the bar
            (see :class:`deepercluster.engine.eta.RunClock`).

    Returns:
        The epoch's :class:`EpochStats`.
    """
    stats = stats if stats is not None else EpochStats()
    model.train()
    heads.train()
    distributed_run = distributed.world_size() > 1
    bar = tqdm(total=len(lrs), desc=desc, unit="it", disable=not progress, leave=False)
    batches = iter(loader)
    tic = time.perf_counter()
    try:
        # Exactly len(lrs) steps on every rank: a rank whose share of the last global batch is
        # empty still takes part in the step's collectives (batch-norm sync, gradient sum).
        for step in range(len(lrs)):
            batch = next(batches, None)
            if batch is None and not distributed_run:
                break
            if batch is None:
                images = torch.zeros((0, *image_shape))
                indices = rotations = torch.zeros(0, dtype=torch.int64)
                errors: list[str] = []
            else:
                images, indices, rotations, errors = batch
            ok = torch.tensor([not e for e in errors], dtype=torch.bool)
            if on_skip is not None:
                for i in torch.nonzero(~ok).flatten().tolist():
                    on_skip(int(indices[i]), errors[i])
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            n = int(ok.sum())
            # The step's loss is the mean over the samples of all ranks: each rank divides its
            # sum by the global count and the gradients are then summed over ranks. One rank
            # with batch 2b and two ranks with batch b then compute the same update.
            n_step = int(distributed.all_reduce_sum(torch.tensor([n]))) if distributed_run else n
            # n_step == 0: nothing readable anywhere in this step (same on every rank).
            if n_step > 0:
                optimizer.zero_grad(set_to_none=True)
                if n < len(ok):  # boolean indexing copies the batch: only when there is a hole
                    images, indices, rotations = images[ok], indices[ok], rotations[ok]
                with autocast(device, precision):
                    features = model(images.to(device, non_blocking=True))
                if n > 0:
                    super_t = super_class_targets(
                        rotations,
                        targets.super_clusters[indices],
                        n_super_clusters=targets.n_super_clusters,
                        rotation=targets.rotation,
                    ).to(device)
                    sub_t = targets.sub_clusters[indices].to(device)
                    out = hierarchical_loss(
                        heads,
                        features.float(),
                        super_t,
                        sub_t,
                        n_super_clusters=targets.n_super_clusters,
                    )
                    loss = out.loss * (n / n_step) if distributed_run else out.loss
                    # note: a CPU-GPU sync point; one transfer for the three losses, not three.
                    losses = torch.stack([out.loss.detach(), out.super_loss, out.sub_loss])
                    loss_value, super_value, sub_value = losses.tolist()
                    stats.images += n
                    stats.loss_sum += loss_value * n
                    stats.super_loss_sum += super_value * n
                    stats.sub_loss_sum += sub_value * n
                    stats.super_correct += out.super_correct
                    stats.sub_correct += out.sub_correct
                    stats.rotation_correct += out.rotation_correct
                else:
                    # An empty share: a zero loss that still runs the backward collectives.
                    loss = features.float().sum() * 0.0
                loss.backward()  # type: ignore[no-untyped-call]
                if sync is not None:
                    sync(n, n_step)
                optimizer.step()
            toc = time.perf_counter()
            stats.seconds += toc - tic
            bar.update(1)
            if progress:
                left = f", run left {eta(step + 1)}" if eta is not None else ""
                bar.set_postfix_str(f"loss={stats.loss_sum / max(stats.images, 1):.3f}{left}")
            if on_step is not None:
                on_step(step + 1, stats)
            tic = time.perf_counter()
    finally:
        bar.close()
    return stats


def rank_positions(start: int, size: int, *, batch_size: int, rank: int, world: int) -> np.ndarray:
    """This rank's positions of an epoch plan, from ``start`` to ``size``.

    Global step t covers plan positions [start + t*B, start + (t+1)*B) with B = batch_size *
    world; rank r takes the r-th slice of batch_size of each. Concatenating the ranks' batches
    of a step gives exactly the batch a single process with batch B would see.

    Returns:
        (n_r,) int64 positions into the epoch plan, in training order.
    """
    positions = np.arange(start, size, dtype=np.int64)
    slot = ((positions - start) % (batch_size * world)) // batch_size
    mine: np.ndarray = positions[slot == rank]
    return mine


def steps_left(start: int, size: int, *, global_batch: int) -> int:
    """Optimizer steps from plan position ``start`` to the end of an epoch of ``size``."""
    return max(0, math.ceil((size - start) / global_batch))


def reduce_stats(stats: EpochStats) -> EpochStats:
    """The epoch's sums over all ranks (identity in one process); seconds are averaged."""
    world = distributed.world_size()
    if world == 1:
        return stats
    values = torch.tensor(
        [
            stats.images,
            stats.loss_sum,
            stats.super_loss_sum,
            stats.sub_loss_sum,
            stats.super_correct,
            stats.sub_correct,
            stats.seconds,
            stats.rotation_correct,
        ],
        dtype=torch.float64,
    )
    v = distributed.all_reduce_sum(values).tolist()
    return EpochStats(int(v[0]), v[1], v[2], v[3], int(v[4]), int(v[5]), v[6] / world, int(v[7]))
