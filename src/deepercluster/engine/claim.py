"""Taking a run folder for one run, and leaving it whole however the run ends.

:func:`claim_run_folder` wraps a whole run (``fit``). On entry, rank 0: opens ``train.log``,
takes the folder's lock (:mod:`~deepercluster.engine.lock`), removes the temporary files of
dead processes, archives the old run on ``--restart``, and refuses a folder that holds a run
it cannot continue (trained files but no checkpoint), so a run never starts over another one
silently. On exit: the failure, with its traceback, goes to ``train.log`` (the console gets
one line from the command line); a folder this run created and left holding nothing but its
log is removed, so a refused command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepercluster import distributed
from deepercluster.distributed import DistEnv
from deepercluster.engine.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from deepercluster.engine.failures import RunFolderError
from deepercluster.engine.lock import LOCK_NAME, RunLock
from deepercluster.engine.preemption import Preempted
from deepercluster.engine.run_folder import read_metrics
from deepercluster.log import FILE_ONLY, close_log_file, get_logger, setup_logging

log = get_logger("fit")

TRAINED_FILES = ("metrics.jsonl", "metrics.csv", "summary.json", "backbone.pth")
"""Files a run writes once it has trained: their presence means the folder holds a run."""

ARCHIVE_DIR = "archive"
"""``--restart`` moves the old run's files to ``<run>/archive/<UTC time>/``."""

_LOG_NAME = "train.log"
_TEMP = re.compile(r"\.tmp-(\d+)(\.|$)")


@contextlib.contextmanager
def claim_run_folder(out_dir: Path, env: DistEnv, *, restart: bool = False) -> Iterator[None]:
    """Hold ``out_dir`` for one run (a collective call: every rank enters it).

    Args:
        out_dir: the run folder (created if needed).
        env: this process's place in the job; rank 0 does the folder's work.
        restart: archive a run found in the folder and start afresh (``--restart``).

    Raises:
        RunFolderError: another run holds the folder, or it holds a run without checkpoint
            (on every rank, together).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder (a new one, or a run's)")
    created = not out_dir.exists()
    setup_logging(
        out_dir if env.is_main else None, level=logging.INFO if env.is_main else logging.WARNING
    )
    lock = RunLock(out_dir) if env.is_main else None
    try:
        error = None
        if lock is not None:
            try:
                lock.acquire()
                remove_dead_temp_files(out_dir)
                if restart:
                    archive_run(out_dir)
                check_not_orphaned(out_dir)
            except RunFolderError as exc:
                error = str(exc)
        error = distributed.broadcast_tree(error)  # the other ranks stop too, none hangs
        if error is not None:
            raise RunFolderError(error)
        yield
    except BaseException as exc:
        if env.is_main:
            _log_failure(exc, out_dir / _LOG_NAME)
        raise
    finally:
        close_log_file()
        if lock is not None and lock.held:
            if created and _holds_only_its_log(out_dir):
                shutil.rmtree(out_dir, ignore_errors=True)
            lock.release()


def remove_dead_temp_files(out_dir: Path) -> None:
    """Remove ``.<name>.tmp-<pid>`` files left by killed processes (a checkpoint's size each).

    Called under the folder's lock, so no other run writes here; the pid check also spares
    a file of a live process on this machine.
    """
    freed = 0
    for path in out_dir.rglob(".*.tmp-*"):
        match = _TEMP.search(path.name)
        if match is None or not path.is_file() or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            path.unlink()
            freed += size
            log.info("removed %s, left by a stopped process", path)
    if freed:
        log.info("%.1f MB of temporary files left by stopped processes removed", freed / 1e6)


def archive_run(out_dir: Path) -> None:
    """Move the folder's run files to ``archive/<UTC time>/`` (``--restart``)."""
    keep = {LOCK_NAME, _LOG_NAME, ARCHIVE_DIR}
    files = sorted(p for p in out_dir.iterdir() if p.name not in keep)
    if not files:
        return
    target = out_dir / ARCHIVE_DIR / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        os.replace(path, target / path.name)
    log.warning(
        "--restart: the previous run's files (%s) moved to %s; delete that folder to free "
        "its space",
        ", ".join(p.name for p in files),
        target,
    )


def check_not_orphaned(out_dir: Path) -> None:
    """Refuse a folder that holds a trained run but no checkpoint to continue it.

    Raises:
        RunFolderError: naming the files found and the two ways out.
    """
    if (out_dir / CHECKPOINT_NAME).exists() or (out_dir / PREVIOUS_NAME).exists():
        return
    found = [name for name in TRAINED_FILES if (out_dir / name).exists()]
    if found:
        raise RunFolderError(
            f"{out_dir} holds a run ({', '.join(found)}) but no {CHECKPOINT_NAME} to continue "
            "it; add --restart to archive the old run's files and start over, or choose "
            "another --out"
        )


def write_missing_summary(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``summary.json``: this call's last epoch, else (a finished run re-run after a kill
    lost it) the last row of ``metrics.jsonl``."""
    path = out_dir / "summary.json"
    last = history[-1] if history else None
    if last is None and not path.exists():
        rows = read_metrics(out_dir)
        last = rows[-1] if rows else None
        if last is not None:
            log.info("summary.json was missing: written from the last row of metrics.jsonl")
    if last is not None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(last, indent=2, sort_keys=True, default=float))
        os.replace(tmp, path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _holds_only_its_log(out_dir: Path) -> bool:
    try:
        return {p.name for p in out_dir.iterdir()} <= {LOCK_NAME, _LOG_NAME}
    except OSError:
        return False


def _log_failure(exc: BaseException, log_file: Path) -> None:
    """The end of a failed run in ``train.log``: one line, then the traceback (file only).

    The exception gets a ``logged_in`` attribute (the log file), which the command line's
    one-line message names.
    """
    if isinstance(exc, Preempted):
        return  # the stop is logged where it happened
    if isinstance(exc, KeyboardInterrupt):
        log.warning("interrupted (Ctrl-C); run the same command again to resume")
        return
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    log.error("stopped: %s: %s", type(exc).__name__, first, exc_info=exc, extra=FILE_ONLY)
    if log_file.is_file():
        with contextlib.suppress(AttributeError):  # some exceptions take no attributes
            exc.logged_in = log_file  # type: ignore[attr-defined]
