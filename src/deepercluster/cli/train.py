"""``deepercluster train`` (pre-training, resumable) and ``deepercluster config``."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from typing import Any

from deepercluster.cli.common import CONFIG_HELP, add_config_args, config_from_args, quote
from deepercluster.cli.cpu import cpu_defaults, env_threads, usable_cores, workers_chosen
from deepercluster.cli.exits import exit_codes_help

RESUME_HELP = """
An existing run in --out is resumed; a crash (kill -9) loses at most the work since the last
save. A folder holding a run that cannot be resumed is refused (exit 73): --restart archives
its files to <out>/archive/<UTC time>/ and starts over. One run per folder: a second train on
a folder in use is refused (exit 73), naming the run that holds it.
"""


def register(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="pre-train a convnet (resumes when --out holds a run)",
        epilog=CONFIG_HELP + RESUME_HELP + exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bars (batch jobs)")
    train.add_argument(
        "--restart",
        action="store_true",
        help="start over: move the run found in --out to <out>/archive/<UTC time>/ first "
        "(nothing is deleted) instead of resuming it",
    )
    train.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="distributed runs: a rank that stops answering makes the others exit with an "
        "error after this long instead of hanging (must exceed the longest clustering step)",
    )
    train.add_argument(
        "--feature-store",
        choices=("memory", "disk"),
        help="cluster.feature_store: disk streams the features from the run folder in blocks, "
        "so clustering needs bounded RAM at any collection size (memory is faster)",
    )
    train.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="cluster.memory_limit, e.g. 20GB: RAM budget per process for the clustering data "
        "(check a setting first with `deepercluster plan`)",
    )
    train.set_defaults(func=_cmd_train)

    config = sub.add_parser(
        "config",
        help="print the fully resolved configuration",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(config)
    config.add_argument("--format", choices=("toml", "json"), default="toml")
    config.set_defaults(func=_cmd_config)


def _cmd_train(args: argparse.Namespace) -> int:
    from deepercluster import distributed
    from deepercluster.engine.fit import fit

    if args.feature_store:
        args.overrides = [f"cluster.feature_store={args.feature_store}", *args.overrides]
    if args.memory_limit:
        args.overrides = [f"cluster.memory_limit={quote(args.memory_limit)}", *args.overrides]
    cfg = config_from_args(args)
    if not cfg.data.path:
        raise ValueError("no data: pass --data PATH (or set data.path in the --config file)")
    cpu = cpu_defaults(
        cores=usable_cores(),
        omp_threads=env_threads(),
        threads=cfg.train.threads,
        workers=cfg.data.workers,
        workers_set=workers_chosen(args.overrides, args.config),
    )
    cfg = replace(
        cfg,
        train=replace(cfg.train, threads=cpu.threads),
        data=replace(cfg.data, workers=cpu.workers),
    )
    # Under torchrun this joins the process group (gloo on CPU, NCCL on GPU); alone, it is a
    # no-op and the run is single-process. Failures become exit codes in cli.exits.
    env = distributed.init_from_env(cfg.train.device, timeout_s=args.timeout)
    if env.is_main:
        print(cpu.describe(getattr(args, "wait_policy", "unset")), file=sys.stderr)
    try:
        result = fit(cfg, progress=not args.no_progress, env=env, restart=args.restart)
    finally:
        distributed.shutdown()
    if env.is_main:
        skipped = (
            f", {result.n_skipped} unreadable images skipped (listed in "
            f"{result.out_dir / 'skipped.csv'})"
            if result.n_skipped
            else ""
        )
        trained = len(result.history)
        print(
            f"done: epoch {cfg.train.epochs}/{cfg.train.epochs} (this command trained "
            f"{trained} epoch{'s' if trained != 1 else ''}){skipped}; run folder {result.out_dir}"
        )
        print(next_steps(str(result.out_dir)))
    return 0


def next_steps(run: str) -> str:
    """The commands to try on a finished run, with its folder filled in."""
    q = shlex.quote(run)
    rows = [
        (f"deepercluster inspect {q}", "HTML report of the clusters"),
        (
            f"deepercluster eval clusters --run {q} --labels LABELS.csv",
            "clusters vs labels (or --metadata TAGS.csv)",
        ),
        (f"deepercluster assignments {q}", "image -> cluster CSV"),
        (f"deepercluster export {q} --to backbone.pt", "the backbone, for other code"),
    ]
    width = max(len(command) for command, _ in rows)
    return "\n".join(["next:", *(f"  {c:<{width}}  # {what}" for c, what in rows)])


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(cfg.to_json() if args.format == "json" else cfg.to_toml(), end="")
    if args.format == "json":
        print()
    return 0
