"""CIFAR-10 in miniature: random init vs RotNet vs DeepCluster vs DeeperCluster.

The same small convnet (``arch = "small"``, Sobel front, 32 px) is pre-trained with the same
budget (images, epochs, batch size, optimiser) by each method, then every network is scored
with the same protocols: per-layer linear probes, weighted kNN and k-means NMI on the final
features, and (for the clustering methods) the NMI of the run's own clusters vs the labels.

Usage (from the repository root, ~30 minutes on 2 shared CPU cores)::

    nice -n 10 python studies/cifar10/run_study.py --out runs/cifar10-study

It reads ``/work/shared/data/cifar10/{train,test}.tar`` (override with --cifar), extracts the
training tar under --scratch to build the pre-training subset (symlinks, the first
``--per-class`` images of every class in sorted file order), reads the test tar in place, and
writes ``docs/results/cifar10.{md,json,png}``. Every number in those files comes from the JSON
files the ``deepercluster eval`` commands write under ``--out/<method>/eval``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METHODS = ("random", "rotnet", "deepcluster", "deepercluster")


def sh(cmd: list[str], log: list[dict[str, Any]]) -> float:
    """Run one command (output to this process's stdout), record it with its wall time."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    log.append({"command": shlex.join(cmd), "seconds": round(seconds, 1)})
    return seconds


def prepare(cifar: Path, scratch: Path, per_class: int) -> Path:
    """Extract train.tar under scratch once; link the first per_class images of each class."""
    train = scratch / "train"
    if not train.exists():
        with tarfile.open(cifar / "train.tar") as tar:
            tar.extractall(scratch, filter="data")
    subset = scratch / f"train-{per_class}-per-class"
    if not subset.exists():
        tmp = subset.with_name(subset.name + ".tmp")
        for cls in sorted(os.listdir(train)):
            (tmp / cls).mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(train / cls))[:per_class]:
                (tmp / cls / name).symlink_to(train / cls / name)
        tmp.rename(subset)
    return subset


def random_backbone(path: Path) -> None:
    """A randomly initialised network of the same architecture (the 'random' row)."""
    import torch

    from deepercluster.config import load_config
    from deepercluster.engine.checkpoint import save_backbone
    from deepercluster.models import build_backbone

    cfg = load_config(toml_path=HERE / "deepercluster.toml")
    torch.manual_seed(cfg.train.seed)
    model = build_backbone(cfg.model.arch, sobel=cfg.model.sobel, resolution=cfg.data.resolution)
    save_backbone(path, model, cfg)


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cifar", type=Path, default=Path("/work/shared/data/cifar10"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/cifar10-study"))
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10-study"))
    parser.add_argument(
        "--per-class", type=int, default=500, help="pre-training / probe-training images per class"
    )
    parser.add_argument(
        "--max-test", type=int, default=2000, help="test images (class-balanced, seed 0)"
    )
    parser.add_argument("--probe-epochs", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the eval commands (1 is faster on a loaded machine)",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="pre-training setting for every method, e.g. --set train.epochs=20 (repeatable)",
    )
    parser.add_argument("--device", default="cpu", help="device of the eval commands")
    parser.add_argument("--workers", type=int, default=0, help="loader workers of the evals")
    parser.add_argument("--results", type=Path, default=Path("docs/results"))
    args = parser.parse_args()

    exe = [sys.executable, "-m", "deepercluster"]
    log: list[dict[str, Any]] = []
    start = time.perf_counter()
    train_dir = prepare(args.cifar, args.scratch, args.per_class)
    test = str(args.cifar / "test.tar")
    summary: dict[str, Any] = {}
    for method in args.methods.split(","):
        run = args.out / method
        entry: dict[str, Any] = {"run": str(run)}
        if method == "random":
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "backbone.pth").exists():  # kept: its cached features stay valid
                random_backbone(run / "backbone.pth")
            entry["pretrain_seconds"] = 0.0
        elif not (run / "summary.json").exists():  # a finished run is reused, not retrained
            cmd = [
                *exe,
                "train",
                "--config",
                str(HERE / f"{method}.toml"),
                "--data",
                str(train_dir),
                "--out",
                str(run),
                "--no-progress",
                *(arg for o in args.overrides for arg in ("--set", o)),
            ]
            entry["pretrain_seconds"] = sh(cmd, log)
        common = [
            "--checkpoint",
            str(run),
            "--train-data",
            str(train_dir),
            "--test-data",
            test,
            "--max-test",
            str(args.max_test),
            "--no-progress",
            "--threads",
            str(args.threads),
            "--device",
            args.device,
            "--workers",
            str(args.workers),
        ]
        entry["linear_seconds"] = sh(
            [
                *exe,
                "eval",
                "linear",
                *common,
                "--epochs",
                str(args.probe_epochs),
                "--seeds",
                "0,1,2",
            ],
            log,
        )
        entry["knn_seconds"] = sh(
            [*exe, "eval", "knn", *common, "--k", "20", "--kmeans", "10"], log
        )
        if method in ("deepcluster", "deepercluster"):
            entry["clusters_seconds"] = sh([*exe, "eval", "clusters", "--run", str(run)], log)
        summary[method] = entry
    wall = time.perf_counter() - start
    meta = {
        "invocation": "nice -n 10 python " + shlex.join(sys.argv),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        + (_gpu_name() or "no GPU"),
        "overrides": args.overrides,
        "python": platform.python_version(),
        "wall_seconds": round(wall, 1),
        "per_class": args.per_class,
        "max_test": args.max_test,
        "probe_epochs": args.probe_epochs,
        "commands": log,
        "methods": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(meta, indent=2) + "\n")
    from report import write_report  # studies/cifar10/report.py, next to this script

    write_report(args.out, args.results)
    print(f"study done in {wall / 60:.1f} min; results in {args.results}/cifar10.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
