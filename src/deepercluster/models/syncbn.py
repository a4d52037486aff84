"""Batch norm whose training statistics are computed over every rank's batch, on any device.

DeeperCluster (Caron et al., ICCV 2019, arXiv 1905.01278; section 5 of docs/ALGORITHM.md)
synchronises the batch-norm statistics across **all** processes: each training group sees a
single super-class, so per-process statistics would be biased towards it. ``nn.SyncBatchNorm``
runs on CUDA only; :class:`SyncBatchNorm2d` is plain tensor code plus one differentiable
all-reduce (:func:`deepercluster.distributed.all_reduce_sum_autograd`), so the same layer runs
on CPU (gloo) and CUDA.

N ranks holding batches of b_1..b_N rows compute what one ``nn.BatchNorm2d`` computes on the
concatenated batch of sum(b_r) rows: output rows, gradients (summed over ranks, as DDP does) and
running statistics, with the ranks weighted by their element counts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepercluster import distributed
from deepercluster.distributed import ProcessGroup

__all__ = ["SyncBatchNorm2d", "convert_sync_batchnorm"]


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics cover the batches of all ranks.

    In training mode inside a process group of more than one rank, each rank reduces its
    (B_r, C, H, W) input to per-channel shifted sums and an element count, one all-reduce adds
    them up, and every rank normalises with the global mean and biased variance. Running
    statistics get the global mean and the unbiased global variance, exactly as
    ``nn.BatchNorm2d`` would on the concatenated batch. In eval mode, or alone (no process group,
    or a group of one rank), this is ``nn.BatchNorm2d`` itself: the parent's forward runs.

    The state_dict has the same keys as ``nn.BatchNorm2d``'s, so checkpoints load either way.

    Variance formula: each rank sends ``sum(x - K)`` and ``sum((x - K)^2)`` for a per-channel
    shift K equal on every rank; with d = sum(x - K) / n, ``mean = K + d`` and
    ``var = sum((x - K)^2) / n - d^2``. With K = 0 (the textbook ``E[x^2] - E[x]^2``) the two
    terms nearly cancel when |mean| >> std; with K near the mean nothing cancels. K is the
    running mean, which every rank updates from the same all-reduced sums. Stats are
    accumulated in float32 at least, also under autocast, and the variance is clamped at 0
    (for the first steps, when K is still 0, and without running statistics, where K = 0).

    Args:
        num_features: C, the number of channels.
        eps: added to the variance before the square root.
        momentum: running-statistics update factor; None for a cumulative average.
        affine: learn a per-channel scale and bias.
        track_running_stats: keep running mean/variance for eval mode.
        group: the ranks whose batches are pooled; None means all ranks.
        device: where parameters and buffers live.
        dtype: their dtype.

    Shapes:
        forward: (B, C, H, W) -> (B, C, H, W), any memory format (channels_last is kept).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        group: ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.group = group

    def forward(self, input: Tensor) -> Tensor:
        """Normalise with statistics pooled over the ranks (training) or running ones (eval).

        Args:
            input: (B, C, H, W); B may differ between ranks, and may be 0 on some of them.

        Returns:
            (B, C, H, W) in the input's dtype and memory format.
        """
        if not self.training or distributed.world_size(self.group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        channels = self.num_features
        acc = torch.promote_types(input.dtype, torch.float32)
        # Autocast would be free to run the reductions in bf16/fp16; sums over millions of
        # elements need float32 at least.
        with torch.autocast(input.device.type, enabled=False):
            x = input.to(acc)
            shift = self._shift(acc, input.device).view(1, channels, 1, 1)
            centred = x - shift  # (B, C, H, W); kept for the output, so it is not recomputed
            # Elements per channel; a float32 count is exact up to 2^24 and off by < 1e-7 above.
            per_channel = input.numel() // channels
            local = torch.cat(
                [
                    centred.sum(dim=(0, 2, 3)),
                    centred.square().sum(dim=(0, 2, 3)),
                    torch.full((1,), float(per_channel), dtype=acc, device=input.device),
                ]
            )
            # One collective per layer; its backward adds every rank's gradient of the sums,
            # since each rank's loss depends on all ranks' inputs through the statistics.
            total = distributed.all_reduce_sum_autograd(local, self.group)
            s1, s2, count = total[:channels], total[channels : 2 * channels], total[2 * channels]
            offset = s1 / count  # (C,) mean - shift: small once the running mean has settled
            mean = shift.view(channels) + offset
            var = (s2 / count - offset.square()).clamp_min(0.0)
            self._update_running_stats(mean.detach(), var.detach(), count.detach())

            scale = torch.rsqrt(var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight.to(acc)
            # (x - mean) is formed as (x - shift) - offset: no large numbers cancel.
            out = (centred - offset.view(1, channels, 1, 1)) * scale.view(1, channels, 1, 1)
            if self.bias is not None:
                out = out + self.bias.to(acc).view(1, channels, 1, 1)
        return out.to(input.dtype)

    def _shift(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A per-channel value near the mean that every rank agrees on without talking."""
        if self.running_mean is None:
            return torch.zeros(self.num_features, dtype=dtype, device=device)
        # A copy: the running mean is updated in place before backward runs.
        return self.running_mean.detach().to(device=device, dtype=dtype, copy=True)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Mirror ``nn.BatchNorm2d``'s update, with the element count summed over ranks."""
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        # Bessel's correction with the global count; clamped so a single element gives var, not
        # inf (nn.BatchNorm2d refuses that batch outright, which would need a sync to check here).
        unbiased = var * count / (count - 1).clamp_min(1.0)
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module, group: ProcessGroup | None = None) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a :class:`SyncBatchNorm2d`.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, but device-agnostic (works on gloo/CPU
    too). The new layers take over the old ones' Parameter and buffer objects themselves (so an
    optimizer built before still holds the right tensors, ``requires_grad`` included) as well as
    eps, momentum, affine, track_running_stats and the training flag. Subclasses of
    ``nn.BatchNorm2d`` are converted too, except :class:`SyncBatchNorm2d` (left as is). The
    state_dict keys do not change. A layer reachable by two paths becomes one shared new layer.

    Args:
        module: a network, or a single batch-norm layer.
        group: the ranks whose batches are pooled; None means all ranks.

    Returns:
        ``module`` with its batch norms replaced in place, or the new layer when ``module`` is
        itself a ``nn.BatchNorm2d``.
    """
    return _convert(module, group, {})


def _convert(
    module: nn.Module, group: ProcessGroup | None, done: dict[int, nn.Module]
) -> nn.Module:
    if id(module) in done:
        return done[id(module)]
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        out = SyncBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            group=group,
            device="meta",  # placeholders, replaced by the old layer's own tensors below
        )
        out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    done[id(module)] = out
    for name, child in module.named_children():
        out.add_module(name, _convert(child, group, done))
    return out
