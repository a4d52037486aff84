"""Exit codes, one table: what each means, and which failure leads to it.

A requeue script must tell "run again" (1, 74 once space is freed, 75) from "a person must
act" (2, 70, 73). Every failure ends with one line on stderr that names the fix; the full
traceback goes to the run's ``train.log`` (or the console with ``deepercluster --debug``).
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from deepercluster.engine.preemption import EXIT_PREEMPTED as EXIT_PREEMPTED

EXIT_DONE = 0
EXIT_LOST_CONTACT = 1
EXIT_BAD_INPUT = 2
EXIT_BUG = 70  # sysexits' EX_SOFTWARE
EXIT_RUN_FOLDER = 73  # sysexits' EX_CANTCREAT: the output cannot be used
EXIT_IO = 74  # sysexits' EX_IOERR
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_DONE, "done"),
    (EXIT_LOST_CONTACT, "lost contact with the other processes of a distributed run: run the "
                        "same command again to resume"),
    (EXIT_BAD_INPUT, "bad settings or data: the message names the setting or file to change"),
    (EXIT_BUG, "internal error (a bug): the traceback is in train.log, or on the console with "
               "--debug; please report it"),
    (EXIT_RUN_FOLDER, "the run folder is in use by another run, or holds a run or checkpoint "
                      "that cannot be used: wait, --restart, another --out, or move the damaged "
                      "file away, as the message says"),
    (EXIT_IO, "I/O error such as a full disk or quota: free space, then run the same command "
              "again (it resumes)"),
    (EXIT_PREEMPTED, "stopped by SIGTERM/SIGUSR1 (pre-emption) after saving at the next safe "
                     "point: run the same command again to continue"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C): run the same command again to resume"),
)  # fmt: skip
"""(code, meaning) of every exit code, for ``--help`` and the README."""


_WRONG_PATH = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
"""Errors of a path the user gave (--data, --out, a checkpoint): bad settings, exit 2."""


def exit_codes_help() -> str:
    """The table as ``--help`` prints it."""
    lines = [
        textwrap.fill(meaning, 92, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, meaning in EXIT_CODES
    ]
    return "Exit codes:\n" + "\n".join(lines) + "\n"


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code of a failure and its one-line message (with the fix).

    The order matters: a damaged checkpoint is also a ValueError, a full disk hides inside
    torch's RuntimeError, and a lost process shows as a RuntimeError of the collectives.
    """
    from deepercluster import distributed
    from deepercluster.engine.failures import CheckpointError, RunFolderError, io_error_of
    from deepercluster.engine.preemption import Preempted

    text = _first_line(exc)
    if isinstance(exc, Preempted):
        return EXIT_PREEMPTED, text
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; run the same command again to resume"
    if isinstance(exc, CheckpointError):
        return EXIT_RUN_FOLDER, str(exc if exc.fix else exc.with_fix(_reader_fix(exc.path)))
    if isinstance(exc, RunFolderError):
        return EXIT_RUN_FOLDER, text
    io = io_error_of(exc)
    if io is not None:
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        return EXIT_IO, (
            f"I/O error{where}: {io.strerror or io}; free space (or fix the disk), then run "
            "the same command again: it resumes from the last checkpoint"
        )
    if distributed.is_communication_error(exc):
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        return EXIT_LOST_CONTACT, (
            f"rank {rank} of {world} lost contact with the other processes "
            f"({type(exc).__name__}: {text}); a process died or stopped answering within "
            "--timeout. Run the same command again to resume from the last checkpoint."
        )
    if isinstance(exc, (ValueError, *_WRONG_PATH)):
        return EXIT_BAD_INPUT, text
    return EXIT_BUG, f"internal error ({type(exc).__name__}: {text})"


def _reader_fix(path: Path) -> str:
    """How to get a damaged file of a run folder back (``inspect``, ``eval``, ...)."""
    from deepercluster.engine.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME

    again = "run the run's `deepercluster train` command again: it"
    if path.name == CHECKPOINT_NAME and (path.parent / PREVIOUS_NAME).is_file():
        return f"{again} resumes from {PREVIOUS_NAME} and rewrites it"
    if path.name != CHECKPOINT_NAME and (path.parent / CHECKPOINT_NAME).is_file():
        return f"{again} rewrites it from {CHECKPOINT_NAME}; or pass {CHECKPOINT_NAME} itself"
    return "restore it from a copy, or pass another file"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class CommandSignals:
    """SIGINT during one command, and the caller's handlers back after it.

    The command turns Ctrl-C into exit 130 with a message; an in-process caller (a test
    session, a program embedding :func:`deepercluster.cli.main`) gets the signal back once
    its own handlers are restored, so Ctrl-C still stops it. SIGTERM/SIGUSR1 are handled by
    the run itself (:class:`~deepercluster.engine.preemption.StopSignal`).
    """

    received: int | None = None
    _previous: Any = None

    def __enter__(self) -> CommandSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        raise KeyboardInterrupt

    def pass_on(self, signum: int | None) -> None:
        """Deliver ``signum`` again, now to the caller's handler (call after exiting)."""
        if signum is not None:
            signal.raise_signal(signal.Signals(signum))
