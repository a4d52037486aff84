"""``deepercluster demo``: the whole method on an embedded data set."""

from __future__ import annotations

import argparse
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
    from deepercluster.demo import run_demo

    run_demo(
        out=args.out, epochs=args.epochs, overrides=args.overrides, progress=not args.no_progress
    )
    return 0
