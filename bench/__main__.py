"""Command line of the benchmark suite: ``python -m bench {all,train,heads,...} [--quick]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.common import Context, Row, format_value, machine

BENCHES = ("train", "heads", "kmeans", "extract", "data", "cycle")
_MODULES = {
    "train": "bench.train_step",
    "heads": "bench.heads",
    "kmeans": "bench.kmeans",
    "extract": "bench.extract",
    "data": "bench.data",
    "cycle": "bench.cycle",
}


def _table(rows: list[Row]) -> str:
    lines = [f"{'bench':8} {'figure':78} {'value':>10}  {'target':9} {'ok':3} repetitions"]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        value = format_value(r.value, r.unit)
        reps = r.detail.get("per_rep")
        spread = f"{min(reps):.2f}-{max(reps):.2f}" if reps else ""
        lines.append(f"{r.bench:8} {r.name[:78]:78} {value:>10}  {r.target:9} {ok:3} {spread}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "name",
        choices=("all", *BENCHES),
        help="which benchmark (all: every one)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        dest="size",
        const="quick",
        help="scaled shapes, minutes on 2 CPU cores (the default)",
    )
    size.add_argument(
        "--tiny",
        action="store_const",
        dest="size",
        const="tiny",
        help="toy shapes, seconds: keeps the code working in CI (no thresholds)",
    )
    size.add_argument(
        "--full",
        action="store_const",
        dest="size",
        const="full",
        help="larger shapes where they matter (whole CIFAR-10 cycle)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (default 5, tiny 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (default: torch's choice, the cores)",
    )
    p.add_argument("--out", default="results/bench", help="folder of the JSON results")
    args = p.parse_args(argv)
    size = args.size or "quick"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (2 if size == "tiny" else 5)
    ctx = Context(device=device, size=size, reps=reps, warmup=1)
    names = BENCHES if args.name == "all" else (args.name,)
    record: dict[str, object] = {
        "size": size,
        "reps": reps,
        "machine_before": machine(device),
    }
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for name in names:
        tic = time.perf_counter()
        module = importlib.import_module(_MODULES[name])
        new = module.run(ctx)
        seconds[name] = time.perf_counter() - tic
        print(_table(new), flush=True)
        print(f"[{name}: {seconds[name]:.1f} s, load {os.getloadavg()[0]:.2f}]", flush=True)
        rows.extend(new)
    record["machine_after"] = machine(device)
    record["seconds"] = seconds
    record["rows"] = [r.to_dict() for r in rows]
    print("\n" + _table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}-{size}-{device.type}.json"
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
