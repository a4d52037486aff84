"""Training step of our loop vs a bare forward + backward + SGD step (data in memory).

Ours: ``engine.train.train_one_epoch`` over batches already in memory (targets lookup,
super-class targets, grouped sub-heads, loss statistics, learning-rate setting). Bare: the
same backbone, a super-class ``nn.Linear`` and one sub-class ``nn.Linear`` (every sample
through the same sub-head, no grouping), two cross-entropies, backward, the same SGD.
Each setting (fp32 NCHW, fp32 channels_last, bf16 autocast + channels_last) is timed
interleaved, ours then bare, ``steps`` optimizer steps per timed call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.common import (
    Context,
    Row,
    at_most,
    info,
    interleaved,
    median,
    per_rep,
    ratio,
    without_emulated_bf16,
)
from deepercluster.engine.train import Targets, train_one_epoch
from deepercluster.features import autocast
from deepercluster.models import HierarchicalHeads, build_backbone

NAME = "train"


def _optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-5)


def _setting(
    ctx: Context,
    arch: str,
    res: int,
    batch: int,
    precision: str,
    channels_last: bool,
    train_fn: Callable[..., object] = train_one_epoch,
) -> tuple[Callable[[], object], Callable[[], object], int]:
    """(ours, bare, steps per call) for one configuration; ``train_fn`` is our loop."""
    device = ctx.device
    m, n_sub = 4, ctx.pick(8, 250, 2500)
    n_images = 4 * batch
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, 3, res, res, generator=gen)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = Targets(
        super_clusters=torch.randint(m, (n_images,), generator=gen),
        sub_clusters=torch.randint(n_sub, (n_images,), generator=gen),
        n_super_clusters=m,
        rotation=True,
    )
    rotations = torch.randint(4, (n_images,), generator=gen)
    steps = ctx.pick(2, 3, 8)
    batches = []
    for s in range(steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % n_images
        batches.append((images[idx], idx, rotations[idx], [""] * batch))
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def model() -> nn.Module:
        torch.manual_seed(0)
        return build_backbone(arch, sobel=True, resolution=res).to(device, memory_format=fmt)

    backbone = model()
    heads = HierarchicalHeads(backbone.feature_dim, 4 * m, n_sub).to(device)
    opt = _optimizer([*backbone.parameters(), *heads.parameters()])
    lrs = np.full(steps, 0.01)

    def ours() -> object:
        return train_fn(
            backbone,
            heads,
            batches,
            opt,
            targets=targets,
            lrs=lrs,
            device=device,
            precision=precision,
            image_shape=(3, res, res),
            progress=False,
        )

    bare_net = model()
    super_head = nn.Linear(bare_net.feature_dim, 4 * m).to(device)
    sub_head = nn.Linear(bare_net.feature_dim, n_sub).to(device)
    bare_opt = _optimizer(
        [*bare_net.parameters(), *super_head.parameters(), *sub_head.parameters()]
    )
    bare_net.train()
    on_device = [
        (
            x.to(device),
            (rot * m + targets.super_clusters[idx]).to(device),
            targets.sub_clusters[idx].to(device),
        )
        for x, idx, rot, _ in batches
    ]

    def bare() -> object:
        loss: Tensor | None = None
        for x, y_super, y_sub in on_device:
            bare_opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                f = bare_net(x)
            h = F.relu(f.float())
            loss = F.cross_entropy(super_head(h), y_super) + F.cross_entropy(sub_head(h), y_sub)
            loss.backward()  # type: ignore[no-untyped-call]
            bare_opt.step()
        return loss

    return ours, bare, steps


def run(ctx: Context) -> list[Row]:
    arch = "small"
    res, batch = ctx.pick((16, 8), (32, 128), (32, 128))
    settings = [("fp32", False), ("fp32", True), ("bf16", True)]
    if ctx.tiny:
        settings = settings[:1]
    settings, skipped = without_emulated_bf16(ctx, NAME, settings)
    fns: dict[str, Callable[[], object]] = {}
    steps = 1
    for precision, cl in settings:
        label = f"{precision}{' channels_last' if cl else ''}"
        fns[f"ours {label}"], fns[f"bare {label}"], steps = _setting(
            ctx, arch, res, batch, precision, cl
        )
    # Every setting in one interleaved round, so the levers' ratios share the machine's load.
    times = interleaved(fns, ctx)
    rows: list[Row] = list(skipped)
    for precision, cl in settings:
        label = f"{precision}{' channels_last' if cl else ''}"
        step_ours = median(times[f"ours {label}"]) / steps
        step_bare = median(times[f"bare {label}"]) / steps
        rows.append(
            at_most(
                NAME,
                f"our step / bare step ({arch} {res}px b{batch}, {label})",
                ratio(times, f"ours {label}", f"bare {label}"),
                1.10,
                ours_s_per_step=step_ours,
                bare_s_per_step=step_bare,
                ours_images_per_s=batch / step_ours,
                bare_images_per_s=batch / step_bare,
                per_rep=per_rep(times, f"ours {label}", f"bare {label}"),
            )
        )
        if label != "fp32":
            rows.append(
                info(
                    NAME,
                    f"lever: {label} speed-up of our step vs fp32 NCHW",
                    ratio(times, "ours fp32", f"ours {label}"),
                    "x",
                )
            )
    return rows
