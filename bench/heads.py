"""Hierarchical heads vs one flat classifier over every (rotation x cluster) class.

Shapes scaled from the paper's (D = 4096, 16 super-classes, k = 320,000): D = 512,
S = 16 super-classes (4 rotations x m = 4 super-clusters), k = 40,000 clusters, so each
sub-head has k/m = 10,000 classes and the flat head 4k = 160,000. One step = forward of both
heads from (B, D) features (which require grad, as a backbone's output does), the
cross-entropies, and the backward pass; the SGD update is reported apart because both heads
hold the same number of parameters (S x k/m = 4k rows), so it costs the same on both sides.

Activation memory is counted without any allocator: the bytes of the tensors autograd saves
for the backward pass (``saved_tensors_hooks``, deduplicated by storage, weights excluded).
On CUDA the peak allocated memory above the parameters is recorded as well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.common import (
    Context,
    Row,
    SavedTensorBytes,
    at_least,
    info,
    interleaved,
    median,
    per_rep,
    ratio,
)
from deepercluster.losses import hierarchical_loss
from deepercluster.models import HierarchicalHeads

NAME = "heads"


def _steps(
    ctx: Context, dim: int, m: int, k: int, batch: int
) -> tuple[dict[str, Callable[[bool], Tensor]], dict[str, list[nn.Parameter]]]:
    device = ctx.device
    n_super, n_sub = 4 * m, k // m
    torch.manual_seed(0)
    heads = HierarchicalHeads(dim, n_super, n_sub).to(device)
    flat = nn.Linear(dim, n_super * n_sub).to(device)
    nn.init.normal_(flat.weight, 0.0, 0.01)
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(batch, dim, generator=gen).to(device).requires_grad_(True)
    y_super = torch.randint(n_super, (batch,), generator=gen).to(device)
    y_sub = torch.randint(n_sub, (batch,), generator=gen).to(device)
    y_flat = y_super * n_sub + y_sub

    def hier(backward: bool) -> Tensor:
        # The training path: super head + each sample's own sub-head (losses.py).
        loss = hierarchical_loss(heads, features, y_super, y_sub).loss
        if backward:
            loss.backward()  # type: ignore[no-untyped-call]
        return loss

    def flat_step(backward: bool) -> Tensor:
        loss = F.cross_entropy(flat(F.relu(features)), y_flat)
        if backward:
            loss.backward()  # type: ignore[no-untyped-call]
        return loss

    params = {"hier": list(heads.parameters()), "flat": list(flat.parameters())}
    return {"hier": hier, "flat": flat_step}, params


def _activation_bytes(step: Callable[[bool], Tensor], params: list[nn.Parameter]) -> int:
    with SavedTensorBytes(exclude=params) as saved:
        loss = step(False)
    del loss
    return saved.nbytes


def _cuda_peak(step: Callable[[bool], Tensor], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    loss = step(False)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del loss
    return int(peak)


def run(ctx: Context) -> list[Row]:
    dim, m, k, batch = ctx.pick((32, 4, 400, 32), (512, 4, 40_000, 256), (512, 4, 40_000, 256))
    steps, params = _steps(ctx, dim, m, k, batch)
    shape = {"D": dim, "S": 4 * m, "k": k, "n_sub": k // m, "flat_classes": 4 * k, "B": batch}

    def fwd_bwd(name: str) -> Callable[[], object]:
        def fn() -> object:
            # Only this side's gradients: dropping the other side's would charge it the
            # release of that side's memory (the flat head's weight gradient is 328 MB).
            for p in params[name]:
                p.grad = None
            return steps[name](True)

        return fn

    times = interleaved({"hier": fwd_bwd("hier"), "flat": fwd_bwd("flat")}, ctx)
    speedup = ratio(times, "flat", "hier")
    rows = [
        at_least(
            NAME,
            "flat / hierarchical heads, time of forward + backward",
            speedup,
            8.0,
            hier_s=median(times["hier"]),
            flat_s=median(times["flat"]),
            per_rep=per_rep(times, "flat", "hier"),
            theory=(4 * k) / (4 * m + k / m),
            **shape,
        )
    ]
    mem = {name: _activation_bytes(steps[name], params[name]) for name in steps}
    detail: dict[str, object] = {"hier_bytes": mem["hier"], "flat_bytes": mem["flat"]}
    if ctx.device.type == "cuda":
        detail.update(
            {f"{n}_cuda_peak_bytes": _cuda_peak(steps[n], ctx.device) for n in ("hier", "flat")}
        )
    rows.append(
        at_least(
            NAME,
            "flat / hierarchical heads, activation memory (saved for backward)",
            mem["flat"] / mem["hier"],
            8.0,
            **detail,
        )
    )
    if not ctx.tiny:
        # The paper's rows per sub-head: a training group of 4 GPUs x 48 images feeds one
        # sub-head, 192 rows per step, so the flat head's batch is S x 192. At B = 256 each
        # sub-head sees ~16 rows, products with 16 rows run far below the arithmetic peak,
        # and the ratio is lower; the arithmetic intensity, not D or k, is what sets it.
        big_batch = 4 * m * 192
        big_steps, big_params = _steps(ctx, dim, m, k, big_batch)

        def big(name: str) -> Callable[[], object]:
            def fn() -> object:
                for p in big_params[name]:
                    p.grad = None
                return big_steps[name](True)

            return fn

        # Two repetitions: the flat side is slow on a CPU at this batch. On the CPU in the
        # quick run neither side is warmed up: both run the products they have just run at
        # B = 256. A GPU's first call at a new shape may allocate and pick kernels.
        warmup = ctx.repeat_warmup if ctx.device.type == "cpu" else None
        t_big = interleaved({"hier": big("hier"), "flat": big("flat")}, ctx, reps=2, warmup=warmup)
        rows.append(
            at_least(
                NAME,
                f"same, at the paper's 192 rows per sub-head (B={big_batch})",
                ratio(t_big, "flat", "hier"),
                8.0,
                hier_s=median(t_big["hier"]),
                flat_s=median(t_big["flat"]),
                per_rep=per_rep(t_big, "flat", "hier"),
                B=big_batch,
            )
        )
        del big_steps, big_params
    # The optimizer step over equally many parameters, for the record.
    opts = {n: torch.optim.SGD(params[n], lr=0.01, momentum=0.9, weight_decay=1e-5) for n in params}

    def full(name: str) -> Callable[[], object]:
        def fn() -> object:
            opts[name].zero_grad(set_to_none=True)
            steps[name](True)
            opts[name].step()
            return None

        return fn

    times = interleaved({"hier": full("hier"), "flat": full("flat")}, ctx)
    rows.append(
        info(
            NAME,
            "flat / hierarchical heads, forward + backward + SGD (same parameter count)",
            ratio(times, "flat", "hier"),
            "x",
            hier_s=median(times["hier"]),
            flat_s=median(times["flat"]),
        )
    )
    return rows
