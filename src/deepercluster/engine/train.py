"""One training epoch: predict (rotation, super-cluster) and the sub-cluster under it.

ALGORITHM.md section 3: the loss of a sample is CE(super-class head) + CE(its own super-class's
sub-class head). Unreadable images found while training are dropped from their batch and
reported; they never stop the epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from deepercluster.features import autocast
from deepercluster.losses import hierarchical_loss, super_class_targets
from deepercluster.models import HierarchicalHeads


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

    def summary(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {
            "train/loss": self.loss_sum / n,
            "train/super_loss": self.super_loss_sum / n,
            "train/sub_loss": self.sub_loss_sum / n,
            "train/super_acc": self.super_correct / n,
            "train/sub_acc": self.sub_correct / n,
            "train/images_per_s": self.images / max(self.seconds, 1e-9),
            "train/images": float(self.images),
            "time/train_s": self.seconds,
        }


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
    progress: bool = True,
) -> EpochStats:
    """Train ``model`` and ``heads`` over one epoch's loader.

    Args:
        model: backbone, (B, 3, H, W) -> (B, D).
        heads: super-class and per-super-class sub-class heads.
        loader: yields (images (B, 3, H, W) already rotated, indices (B,), rotations (B,),
            errors: list of B strings, "" = ok), see :class:`deepercluster.data.TrainView`.
        optimizer: SGD over model and heads.
        targets: pseudo-labels by dataset index.
        lrs: learning rate of each remaining iteration of this epoch (len >= batches).
        device: where to train.
        precision: ``fp32`` or ``bf16`` autocast.
        stats: sums carried over from before an interruption (resumed epoch).
        on_step: called after every optimizer step with (iterations done in this call, stats);
            the driver checkpoints from here.
        on_skip: called with (index, reason) for each unreadable image.
        progress: show a progress bar.

    Returns:
        The epoch's :class:`EpochStats`.
    """
    stats = stats if stats is not None else EpochStats()
    model.train()
    heads.train()
    bar = tqdm(total=len(lrs), desc="train", unit="it", disable=not progress, leave=False)
    tic = time.perf_counter()
    try:
        for step, (images, indices, rotations, errors) in enumerate(loader):
            ok = torch.tensor([not e for e in errors], dtype=torch.bool)
            if on_skip is not None:
                for i in torch.nonzero(~ok).flatten().tolist():
                    on_skip(int(indices[i]), errors[i])
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            if ok.any():
                images, indices, rotations = images[ok], indices[ok], rotations[ok]
                super_t = super_class_targets(
                    rotations,
                    targets.super_clusters[indices],
                    n_super_clusters=targets.n_super_clusters,
                    rotation=targets.rotation,
                ).to(device)
                sub_t = targets.sub_clusters[indices].to(device)
                with autocast(device, precision):
                    features = model(images.to(device, non_blocking=True))
                out = hierarchical_loss(heads, features.float(), super_t, sub_t)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                n = int(ok.sum())
                stats.images += n
                stats.loss_sum += float(out.loss.detach()) * n
                stats.super_loss_sum += float(out.super_loss) * n
                stats.sub_loss_sum += float(out.sub_loss) * n
                stats.super_correct += out.super_correct
                stats.sub_correct += out.sub_correct
            toc = time.perf_counter()
            stats.seconds += toc - tic
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss_sum / max(stats.images, 1):.3f}")
            if on_step is not None:
                on_step(step + 1, stats)
            tic = time.perf_counter()
    finally:
        bar.close()
    return stats
