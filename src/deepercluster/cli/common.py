"""Arguments shared by the commands that take a run configuration."""

from __future__ import annotations

import argparse

from deepercluster.config import PRESETS, RunConfig, load_config

CONFIG_HELP = """\
Settings are resolved as: defaults < --preset < --config FILE < --data/--out < --set.
Examples:
  deepercluster train --data /photos --out runs/photos --preset deepercluster
  deepercluster train --data 'shards/train-{000..099}.tar' --config my.toml --set cluster.k=10000
  deepercluster config --preset rotnet
"""


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="method preset: deepercluster (rotation x clusters), rotnet, deepcluster, paper "
        "(the reference exactly)",
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
    add_overrides(
        p, "override one setting, e.g. --set cluster.k=1000 --set train.epochs=30 (repeatable)"
    )


def add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.overrides``."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=help,
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = []
    if args.data is not None:
        overrides.append(f"data.path={quote(args.data)}")
    if args.out is not None:
        overrides.append(f"out={quote(args.out)}")
    return load_config(
        preset=args.preset, toml_path=args.config, overrides=[*overrides, *args.overrides]
    )


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
