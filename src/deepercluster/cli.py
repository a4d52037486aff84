"""Command line: ``deepercluster {train,config,demo}``. The only module that reads sys.argv."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepercluster.config import PRESETS, RunConfig, load_config

_CONFIG_HELP = """\
Settings are resolved as: defaults < --preset < --config FILE < --data/--out < --set.
Examples:
  deepercluster train --data /photos --out runs/photos --preset deepercluster
  deepercluster train --data 'shards/train-{000..099}.tar' --config my.toml --set cluster.k=10000
  deepercluster config --preset rotnet
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="method preset: deepercluster (rotation x clusters), rotnet, deepcluster",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML file with [data] [model] [cluster] [train]"
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="image folder, list file (.txt/.csv) or tar shards (quote globs and {000..099})",
    )
    p.add_argument("--out", metavar="DIR", help="run folder; an existing run there is resumed")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set cluster.k=1000 --set train.epochs=30 (repeatable)",
    )


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = []
    if args.data is not None:
        overrides.append(f"data.path={_quote(args.data)}")
    if args.out is not None:
        overrides.append(f"out={_quote(args.out)}")
    return load_config(
        preset=args.preset, toml_path=args.config, overrides=[*overrides, *args.overrides]
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cmd_train(args: argparse.Namespace) -> int:
    from deepercluster import distributed
    from deepercluster.engine.fit import fit

    cfg = _config_from_args(args)
    if not cfg.data.path:
        raise ValueError("no data: pass --data PATH (or set data.path in the --config file)")
    # Under torchrun this joins the process group (gloo on CPU, NCCL on GPU); alone, it is a
    # no-op and the run is single-process.
    env = distributed.init_from_env(cfg.train.device, timeout_s=args.timeout)
    try:
        result = fit(cfg, progress=not args.no_progress, env=env)
    except Exception as exc:
        if not distributed.is_communication_error(exc):
            raise
        print(
            f"deepercluster: error: rank {env.rank} of {env.world_size} lost contact with the "
            f"other processes ({type(exc).__name__}: {str(exc).splitlines()[0]}); a process "
            "died or stopped answering within --timeout. Run the same command again to resume "
            "from the last checkpoint.",
            file=sys.stderr,
        )
        return 1
    finally:
        distributed.shutdown()
    if env.is_main:
        skipped = (
            f", {result.n_skipped} unreadable images skipped (listed in "
            f"{result.out_dir / 'skipped.csv'})"
            if result.n_skipped
            else ""
        )
        print(f"done: {len(result.history)} epochs trained{skipped}; run folder {result.out_dir}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    print(cfg.to_json() if args.format == "json" else cfg.to_toml(), end="")
    if args.format == "json":
        print()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from deepercluster.demo import run_demo

    run_demo(
        out=args.out, epochs=args.epochs, overrides=args.overrides, progress=not args.no_progress
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepercluster",
        description="DeeperCluster: unsupervised pre-training of convnets on non-curated images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="pre-train a convnet (resumes when --out holds a run)",
        epilog=_CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bars (batch jobs)")
    train.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="distributed runs: a rank that stops answering makes the others exit with an "
        "error after this long instead of hanging (must exceed the longest clustering step)",
    )
    train.set_defaults(func=_cmd_train)

    config = sub.add_parser(
        "config",
        help="print the fully resolved configuration",
        epilog=_CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(config)
    config.add_argument("--format", choices=("toml", "json"), default="toml")
    config.set_defaults(func=_cmd_config)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad settings or data, with the reason)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"deepercluster: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepercluster: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
