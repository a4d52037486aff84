"""``deepercluster demo``: the whole method on an embedded data set."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole method on scikit-learn's handwritten digits (CPU, a few minutes)",
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    demo.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change a demo setting, e.g. --set cluster.rotation=false (DeepCluster)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from deepercluster.cli.cpu import cpu_defaults, env_threads, usable_cores, workers_chosen
    from deepercluster.demo import DEMO_SETTINGS, run_demo

    chosen = dict(o.replace(" ", "").split("=", 1) for o in args.overrides if "=" in o)
    cpu = cpu_defaults(
        cores=usable_cores(),
        omp_threads=env_threads(),
        threads=int(chosen.get("train.threads", "0") or 0),
        workers=DEMO_SETTINGS["data"]["workers"],
        workers_set=workers_chosen(args.overrides, None),
    )
    defaults = [f"train.threads={cpu.threads}"] if "train.threads" not in chosen else []
    if cpu.capped_from is not None:
        defaults.append(f"data.workers={cpu.workers}")
    print(cpu.describe(getattr(args, "wait_policy", "unset")), file=sys.stderr)
    run_demo(
        out=args.out,
        epochs=args.epochs,
        overrides=[*defaults, *args.overrides],
        progress=not args.no_progress,
    )
    return 0
