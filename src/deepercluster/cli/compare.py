"""``deepercluster compare``: several pre-training methods, one budget, the same probes."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from deepercluster.cli.common import add_overrides
from deepercluster.cli.cpu import set_torch_threads

EPILOG = """\
Methods: random (the network at its initialisation), the presets (rotnet, deepcluster,
deepercluster, ...), or variants named in a --variants TOML file:
  methods = ["random", "rotnet", "dc-m4"]            # optional default for --methods
  [variant.dc-m4]
  preset = "deepercluster"
  set = ["cluster.super_clusters=4"]
Settings of each run: defaults < --config FILE < the method's preset < the variant's set <
--set (shared by all methods: the budget) < the seed, --train-data and run folder.

Labelled images: a folder with one sub-folder per class, tar shards whose members sit under
<class>/ folders, a CSV list of images with a label column, or any collection plus
--train-labels/--test-labels CSV (path,label).

Resumable: each (method, seed) is a run folder under OUT/runs/<method>/seed<k> and each score a
JSON file under OUT/scores/; the same command after a kill finishes the job, reusing what is
done. A run folder made with other settings is refused (exit 73).
Example:
  deepercluster compare --train-data lab/train --test-data lab/test --out cmp \\
      --methods random,rotnet,deepcluster,deepercluster --seeds 3 --set train.epochs=15
"""


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def register(sub: Any) -> None:
    from deepercluster.cli.exits import exit_codes_help

    p = sub.add_parser(
        "compare",
        help="pre-train several methods on the same budget and score them alike (Markdown, "
        "JSON, plot)",
        epilog=EPILOG + exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--train-data", required=True, help="labelled images: pre-training and probes")
    p.add_argument("--test-data", required=True, help="labelled test images")
    p.add_argument("--out", required=True, help="the comparison's folder (resumed when it exists)")
    p.add_argument(
        "--methods",
        help="comma-separated methods (default: random,rotnet,"
        "deepcluster,deepercluster, or the variants file's methods)",
    )
    p.add_argument("--variants", metavar="FILE", help="TOML file of [variant.NAME] methods")
    p.add_argument("--seeds", type=int, default=3, help="pre-training seeds 0..N-1 per method")
    add_overrides(p, "a setting for every method, e.g. --set train.epochs=15 (repeatable)")
    p.add_argument("--config", metavar="FILE", help="TOML of settings shared by every method")
    p.add_argument("--train-labels", help="CSV with path and label columns for --train-data")
    p.add_argument("--test-labels", help="CSV with path and label columns for --test-data")
    p.add_argument(
        "--max-train",
        type=int,
        default=0,
        help="pre-train and fit probes on at most N images, class-balanced (0: all)",
    )
    p.add_argument("--max-test", type=int, default=0, help="score on at most N test images")
    p.add_argument(
        "--probe-epochs", type=int, default=10, help="epochs of each linear probe (default 10)"
    )
    p.add_argument("--probe-seeds", default="0", help="seeds of the final probes, e.g. 0,1,2")
    p.add_argument("--lrs", type=_floats, default=(0.01, 0.1), help="probe lr_0 grid")
    p.add_argument("--wds", type=_floats, default=(1e-4, 1e-3, 1e-2), help="probe wd grid")
    p.add_argument(
        "--widen",
        type=int,
        default=2,
        metavar="N",
        help="grow the probe grid past an edge the choice sits on, up to N times",
    )
    p.add_argument("--knn-k", type=int, default=20, help="neighbours of the kNN classifier")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="loader workers of the scores")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads of the whole comparison (0: torch's default)",
    )
    p.add_argument(
        "--keep-features",
        action="store_true",
        help="keep each run's cached probe features (large: images x 10,000 x layers)",
    )
    p.add_argument("--progress", action="store_true", help="progress bars inside each step")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.compare import CompareSettings, run_compare
    from deepercluster.evaluation.protocols.linear import LinearProtocol

    overrides = list(args.overrides)
    # The probes run in this process too: the setting must hold beyond the training.
    set_torch_threads(args.threads)
    if args.threads > 0:
        overrides.append(f"train.threads={args.threads}")

    protocol = LinearProtocol(
        lrs=args.lrs,
        weight_decays=args.wds,
        epochs=args.probe_epochs,
        seeds=tuple(int(s) for s in args.probe_seeds.split(",")),
        widen=args.widen,
    )
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else ()
    settings = CompareSettings(
        train_data=args.train_data,
        test_data=args.test_data,
        out=Path(args.out),
        methods=methods,
        seeds=args.seeds,
        overrides=tuple(overrides),
        config=args.config,
        variants=args.variants,
        train_labels=args.train_labels,
        test_labels=args.test_labels,
        max_train=args.max_train,
        max_test=args.max_test,
        probe=protocol,
        knn_k=args.knn_k,
        device=args.device,
        workers=args.workers,
        progress=args.progress,
        keep_features=args.keep_features,
        command=_command_line(args),
    )
    report = run_compare(settings)
    print(report.read_text().split("\n## ", 1)[0], end="")
    print(f"results: {report}, {report.with_suffix('.json')}, {report.with_suffix('.png')}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command as it could be typed again: every option given, in a fixed order."""
    words = ["deepercluster", "compare"]
    for name in (
        "train_data",
        "test_data",
        "out",
        "methods",
        "variants",
        "config",
        "train_labels",
        "test_labels",
    ):
        if getattr(args, name):
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    words += ["--seeds", str(args.seeds)]
    for item in args.overrides:
        words += ["--set", item]
    for name in ("max_train", "max_test"):
        if getattr(args, name):
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    words += ["--probe-epochs", str(args.probe_epochs), "--probe-seeds", args.probe_seeds]
    words += ["--lrs", ",".join(f"{v:g}" for v in args.lrs)]
    words += ["--wds", ",".join(f"{v:g}" for v in args.wds), "--widen", str(args.widen)]
    words += ["--knn-k", str(args.knn_k), "--device", args.device]
    if args.threads:
        words += ["--threads", str(args.threads)]
    return shlex.join(words)
