"""Benchmark: a multi-epoch training run with and without torch's transparent huge pages.

``import deepercluster`` asks torch's CPU allocator for transparent huge pages
(``allocator.request_huge_pages``; ``THP_MEM_ALLOC_ENABLE=0`` turns it off). The suite in
``bench/`` measures that on short calls; this script runs the real command line, several
epochs of extraction, PCA, k-means and training on CIFAR-10 with a DataLoader worker, once per
setting, the settings interleaved (off, on, off, on by default), and reports per run:

* the wall time and each epoch's stage times (from the run's ``metrics.jsonl``);
* the training process's peak resident memory (``wait4``'s rusage; workers not included), and
  the largest ``AnonHugePages`` and ``Rss`` seen in its ``/proc/<pid>/smaps_rollup`` (polled);
* the kernel's counters over the run (``/proc/vmstat``): huge pages given at a fault, faults
  that fell back to 4 KiB pages, and compaction stalls (a fault waiting for the kernel to
  defragment memory, the cost huge pages can bring on a long-running machine).

Usage::

    OMP_WAIT_POLICY=PASSIVE python scripts/huge_pages_run.py --data ../shared/data/cifar10/train.tar
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deepercluster.allocator import kernel_thp_mode

VMSTAT_KEYS = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "thp_collapse_alloc")
STAGES = ("extract", "pca", "kmeans", "train")


def vmstat() -> dict[str, int]:
    """The kernel's huge-page and compaction counters (zeros where the kernel has none)."""
    values = dict.fromkeys(VMSTAT_KEYS, 0)
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in values:
                values[key] = int(value)
    except OSError:
        pass
    return values


def smaps_kib(pid: int) -> dict[str, int]:
    """``Rss`` and ``AnonHugePages`` of a process in KiB ({} once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "AnonHugePages"):
            out[key] = int(rest.split()[0])
    return out


def run_once(variant: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One training run with huge pages ``on`` (the default) or ``off``."""
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if variant == "off":
        env["THP_MEM_ALLOC_ENABLE"] = "0"
    shutil.rmtree(out, ignore_errors=True)
    settings = [
        "model.arch=small",
        "data.resolution=32",
        f"data.workers={args.workers}",
        "cluster.k=1000",
        "cluster.super_clusters=4",
        "cluster.reassign=1",
        "cluster.pca_dim=128",
        f"train.epochs={args.epochs}",
        "train.batch_size=128",
        f"train.epoch_size={args.epoch_size}",
    ]
    command = [sys.executable, "-m", "deepercluster", "train", "--data", args.data]
    command += ["--out", str(out), "--preset", "deepercluster"]
    for setting in settings:
        command += ["--set", setting]
    before = vmstat()
    tic = time.perf_counter()
    peak = {"Rss": 0, "AnonHugePages": 0}
    with open(f"{out}.log", "w") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            for key, value in smaps_kib(child.pid).items():
                peak[key] = max(peak[key], value)
            time.sleep(1.0)
    wall = time.perf_counter() - tic
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {variant} run failed; see {out}.log")
    after = vmstat()
    epochs = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        epochs.append({stage: round(record[f"time/{stage}_s"], 2) for stage in STAGES})
    return {
        "huge_pages": variant,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "polled_max_rss_mib": round(peak["Rss"] / 1024, 1),
        "polled_max_anon_huge_mib": round(peak["AnonHugePages"] / 1024, 1),
        "vmstat": {key: after[key] - before[key] for key in VMSTAT_KEYS},
        "epochs": epochs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10/train.tar")
    p.add_argument("--out", default="runs/huge-pages")
    p.add_argument("--results", default="results/huge_pages_run.json")
    p.add_argument("--order", default="off,on,off,on", help="settings in run order")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-size", type=int, default=20000, help="images trained per epoch")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    thp = Path("/sys/kernel/mm/transparent_hugepage")
    kernel = {name: kernel_thp_mode(thp / name) for name in ("enabled", "defrag")}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs = []
    for i, variant in enumerate(args.order.split(",")):
        if variant not in ("on", "off"):
            raise SystemExit(f"--order takes 'on' and 'off', got {variant!r}")
        runs.append(run_once(variant, Path(args.out) / f"run{i}-{variant}", args))
        print(json.dumps(runs[-1]), flush=True)
    summary = {"kernel_thp": kernel, "cpu_count": os.cpu_count(), "runs": runs}
    for variant in ("off", "on"):
        walls = sorted(r["wall_s"] for r in runs if r["huge_pages"] == variant)
        print(f"huge pages {variant}: wall {walls} s")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
