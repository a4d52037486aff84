"""Command line: ``deepercluster <command>``. The only package that reads sys.argv.

Each command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; :data:`COMMANDS` lists them in the order ``--help`` shows them.
Nothing here imports torch at import time: :func:`main` first sets OpenMP's wait policy for
this process (:mod:`deepercluster.cli.cpu`), which OpenMP reads once, when torch loads it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from deepercluster.cli.cpu import set_wait_policy

COMMANDS: tuple[str, ...] = (
    "train",
    "demo",
    "evaluate",
    "compare",
    "inspect",
    "curate",
    "search",
    "plan",
)
"""Modules of this package that define commands (``deepercluster.cli.<name>.register``)."""


def build_parser() -> argparse.ArgumentParser:
    from deepercluster.cli.exits import exit_codes_help

    parser = argparse.ArgumentParser(
        prog="deepercluster",
        description="DeeperCluster: unsupervised pre-training of convnets on non-curated images.",
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of a failure on the console (train.log always has it)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"deepercluster.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see ``deepercluster --help``).

    Every failure ends in one line on stderr naming the fix and an exit code of the table in
    :mod:`deepercluster.cli.exits`. Called in-process (``argv`` given), a Ctrl-C or a stop
    signal that ended the command is passed on to the caller's own handler afterwards.
    """
    # The process the user launched gets OpenMP's policy before anything imports torch; a call
    # from Python code (argv given) leaves its caller's environment alone.
    policy = set_wait_policy() if argv is None else os.environ.get("OMP_WAIT_POLICY", "unset")
    from deepercluster.cli.exits import EXIT_INTERRUPTED, EXIT_PREEMPTED, CommandSignals, describe

    parser = build_parser()
    args = parser.parse_args(argv)
    args.wait_policy = policy
    signals = CommandSignals()
    try:
        with signals:
            code: int = args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        code, message = describe(exc)
        if args.debug:
            traceback.print_exception(exc)
        prefix = "" if code in (EXIT_PREEMPTED, EXIT_INTERRUPTED) else "error: "
        hint = _traceback_hint(exc, code, debug=args.debug)
        print(f"deepercluster: {prefix}{message}{hint}", file=sys.stderr)
        if argv is not None:
            signals.pass_on(signals.received or getattr(exc, "signum", None))
    return code


def _traceback_hint(exc: BaseException, code: int, *, debug: bool) -> str:
    from deepercluster.cli.exits import EXIT_BUG

    if code != EXIT_BUG or debug:
        return ""
    log = getattr(exc, "logged_in", None)  # set by the run that wrote it (engine.claim)
    if log is not None:
        return f"; the traceback is in {log}"
    return "; run again with `deepercluster --debug ...` to see the traceback"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
