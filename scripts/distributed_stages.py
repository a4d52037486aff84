"""Benchmark: wall time of each stage with 1, 2 and 4 CPU processes (torchrun, gloo).

Builds a tar shard of the first N CIFAR-10 training images (read in place by the tar reader),
runs one epoch (extract + PCA + k-means + train) under ``torchrun --nproc_per_node=P`` for each
P, and writes the per-stage seconds from each run's metrics.jsonl to a JSON results file.
On a 2-core machine, 4 processes oversubscribe the cores: this reports, it does not expect,
speed-ups.

    python scripts/distributed_stages.py --images 5000 --procs 1 2 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

STAGES = ("time/extract_s", "time/pca_s", "time/kmeans_s", "time/train_s")


def subset_tar(src: Path, dst: Path, n: int) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        copied = 0
        for member in tin:
            if member.isfile() and member.name.endswith(".jpg"):
                tout.addfile(member, tin.extractfile(member))
                copied += 1
                if copied == n:
                    break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10/train.tar")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--work", default="runs/distributed-stages")
    p.add_argument("--results", default="results/distributed_stages.json")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shard = work / "subset.tar"
    subset_tar(Path(args.data), shard, args.images)
    results = {}
    for nproc in args.procs:
        out = work / f"p{nproc}"
        threads = max(1, 2 // nproc)
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "deepercluster", "train",
            "--data", str(shard), "--out", str(out), "--no-progress",
            "--set", "model.arch=small", "--set", "data.resolution=32",
            "--set", "data.workers=0", "--set", "cluster.k=100",
            "--set", "cluster.super_clusters=4", "--set", "cluster.reassign=1",
            "--set", "cluster.pca_dim=64", "--set", "train.epochs=1",
            "--set", f"train.batch_size={128 // nproc}", "--set", f"train.threads={threads}",
        ]  # fmt: skip
        tic = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - tic
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        results[nproc] = {s.split("/")[1]: round(record[s], 2) for s in STAGES}
        results[nproc]["wall_incl_startup"] = round(wall, 2)
        print(f"{nproc} process(es): {results[nproc]}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(
        json.dumps({"images": args.images, "global_batch": 128, "seconds": results}, indent=2)
        + "\n"
    )
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
