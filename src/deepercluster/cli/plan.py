"""``deepercluster plan``: RAM, GPU memory, disk and time of a run, before launching it."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from deepercluster.cli.common import add_config_args, config_from_args, quote

if TYPE_CHECKING:  # the command imports torch only when it runs
    from deepercluster.config import RunConfig
    from deepercluster.engine.plan import Assumptions, Plan

EPILOG = """\
Examples:
  deepercluster plan --images 96000000 --k 320000 --super-clusters 4 --dim-pca 256 \\
      --world-size 64 --arch vgg16
  deepercluster plan --data 'shards/{000000..009999}.tar' --config my.toml --world-size 8
  deepercluster plan --images 1000000 --k 10000 --feature-store disk --memory-limit 8GB

Sizes are counted from the arrays each stage holds. With --calibrate, times come from running
each stage's own code on a sample of --data on this machine (the only reliable figure for a
CPU); without it, from FLOP counts divided by the stated throughputs below (GPU defaults).
Exit code 2 when the configuration cannot run (each problem is listed with its fix).
"""

_SHORTCUTS = {
    "k": ("cluster.k", int),
    "super_clusters": ("cluster.super_clusters", int),
    "dim_pca": ("cluster.pca_dim", int),
    "arch": ("model.arch", str),
    "resolution": ("data.resolution", int),
    "batch_size": ("train.batch_size", int),
    "epochs": ("train.epochs", int),
    "feature_store": ("cluster.feature_store", str),
    "memory_limit": ("cluster.memory_limit", str),
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate RAM, GPU memory, disk and time per stage and validate a configuration",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--images", type=int, help="number of images (or give --data to count them)")
    p.add_argument("--world-size", type=int, default=1, help="processes (GPUs) of the job")
    p.add_argument("--k", type=int, help="cluster.k, sub-clusters in all (paper: 320000)")
    p.add_argument("--super-clusters", type=int, help="cluster.super_clusters, m (paper: 4)")
    p.add_argument("--dim-pca", type=int, help="cluster.pca_dim (256)")
    p.add_argument("--arch", help="model.arch: vgg16, resnet18, resnet50, small")
    p.add_argument("--resolution", type=int, help="data.resolution (224)")
    p.add_argument("--batch-size", type=int, help="train.batch_size per process (48)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--feature-store", choices=("memory", "disk"), help="cluster.feature_store")
    p.add_argument("--memory-limit", metavar="SIZE", help="cluster.memory_limit, e.g. 20GB")
    p.add_argument("--gpu-tflops", type=float, help="effective convnet TFLOPS per process (25)")
    p.add_argument("--kmeans-gflops", type=float, help="k-means GFLOPS per process (250)")
    p.add_argument("--gpu-memory", type=float, metavar="GB", help="accelerator memory (80)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="first run each stage on a sample of --data here, at the configured batch size, "
        "workers and device, and plan from the measured rates (seconds to a minute)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    import torch

    from deepercluster.data import Collection, open_collection
    from deepercluster.engine.calibrate import calibrate
    from deepercluster.engine.fit import resolve_device
    from deepercluster.engine.plan import Assumptions, make_plan

    for name, (key, kind) in _SHORTCUTS.items():
        value = getattr(args, name)
        if value is not None:
            text = quote(value) if kind is str else str(value)
            args.overrides = [f"{key}={text}", *args.overrides]
    cfg = config_from_args(args)
    if args.images is None and not cfg.data.path:
        raise ValueError("give --images N, or --data PATH to count the images")
    collection: Collection | None = None
    if cfg.data.path and (args.images is None or args.calibrate):
        collection = open_collection(
            cfg.data.path,
            max_pixels=cfg.data.max_pixels,
            path_column=cfg.data.path_column,
            max_bytes=cfg.data.max_file_bytes,
        )
    n_images = args.images if args.images is not None else len(collection)  # type: ignore[arg-type]
    assume = (
        calibrate(cfg, device=resolve_device(cfg.train.device), collection=collection)
        if args.calibrate
        else Assumptions()
    )
    changes = {
        "gpu_tflops": args.gpu_tflops,
        "kmeans_gflops": args.kmeans_gflops,
        "gpu_memory_gb": args.gpu_memory,
    }
    assume = replace(assume, **{k: v for k, v in changes.items() if v is not None})
    on_cpu = cfg.train.device == "cpu" or (
        cfg.train.device == "auto" and not torch.cuda.is_available()
    )
    plan = make_plan(
        cfg, n_images=n_images, world_size=args.world_size, assume=assume, on_cpu=on_cpu
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan, cfg))
    return 2 if plan.problems else 0


def format_plan(plan: Plan, cfg: RunConfig) -> str:
    """The plan as a table for the console."""
    c = cfg.cluster
    lines = [
        f"{plan.n_images:,} images, k = {c.k:,} ({c.super_clusters} x {c.sub_per_super:,}), "
        f"PCA {plan.feature_dim} -> {min(c.pca_dim, plan.feature_dim)}, {cfg.model.arch} at "
        f"{cfg.data.resolution} px, {plan.world_size} process(es), {plan.layout} layout "
        f"({plan.layout_reason}), feature store: {c.feature_store} ({c.feature_dtype})",
        "",
        f"{'stage (per rank)':<22}{'RAM':>10}{'GPU':>10}{'disk':>10}{'time':>10}  note",
    ]
    for s in plan.stages:
        lines.append(
            f"{s.stage:<22}{_size(s.ram):>10}{_size(s.gpu):>10}{_size(s.disk):>10}"
            f"{_duration(s.seconds):>10}  {s.note}"
        )
    a = plan.assumptions
    lines += [
        "",
        f"one clustering round {_duration(plan.round_seconds)}, one epoch "
        f"{_duration(plan.epoch_seconds)}, the whole run ({cfg.train.epochs} epochs, re-clustering "
        f"every {c.reassign}) {_duration(plan.run_seconds)}",
        _assumed(a, workers=max(cfg.data.workers, 1)),
    ]
    lines += (
        ["", "problems:", *(f"  - {p}" for p in plan.problems)]
        if plan.problems
        else ["", "configuration OK"]
    )
    return "\n".join(lines)


def _assumed(a: Assumptions, *, workers: int) -> str:
    """The line that says where the times come from: measured rates or stated throughputs."""
    if a.train_images_per_s:
        return (
            f"measured here: extraction {a.extract_images_per_s:,.0f} images/s (+"
            f"{a.extract_fixed_s:.1f} s a pass), training {a.train_images_per_s:,.0f} images/s "
            f"(+{a.train_fixed_s:.1f} s an epoch), k-means {a.kmeans_level1_s_per_row * 1e9:.0f}"
            f" / {a.kmeans_level2_s_per_row * 1e9:.0f} ns per row and iteration (level 1 / 2); "
            f"{a.gpu_memory_gb:g} GB per accelerator"
        )
    return (
        f"assumed: convnet {a.gpu_tflops:g} TFLOPS/process, k-means {a.kmeans_gflops:g} GFLOPS, "
        f"PCA moments {a.pca_gflops:g} GFLOPS, decoding {a.decode_per_worker:g} images/s per "
        f"worker x {workers}, {a.gpu_memory_gb:g} GB per accelerator (measure them on the "
        "machine that will run with --calibrate)"
    )


def _size(n: int) -> str:
    if n == 0:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _duration(s: float) -> str:
    if s <= 0:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400 * 2:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"
