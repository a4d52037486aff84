"""Command line: ``deepercluster <command>``. The only package that reads sys.argv.

Each command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; :data:`COMMANDS` lists them in the order ``--help`` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: tuple[str, ...] = ("train", "demo", "evaluate", "inspect", "plan")
"""Modules of this package that define commands (``deepercluster.cli.<name>.register``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepercluster",
        description="DeeperCluster: unsupervised pre-training of convnets on non-curated images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"deepercluster.cli.{name}").register(sub)
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
