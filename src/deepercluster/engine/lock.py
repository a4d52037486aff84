"""One run per folder: an OS lock on ``<run>/.lock``, held by rank 0 for the whole run.

Two ``train`` commands on one folder would overwrite each other's checkpoints, stage files
and metrics. The lock is ``flock`` on a file of the folder: the kernel releases it when the
process ends, however it ends (``kill -9`` included), so a crashed run never leaves the
folder locked. The holder writes its pid, host and start time into the file, and a refused
second run names them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from deepercluster.engine.failures import RunFolderError
from deepercluster.log import get_logger

log = get_logger("lock")

LOCK_NAME = ".lock"

_HELD: set[int] = set()
"""Descriptors of the locks this process holds: closed in forked children (DataLoader
workers), whose copies would otherwise keep the lock for a few seconds after a kill -9 of
the run, until they notice their parent is gone."""
_at_fork_registered = False


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)  # close only: an unlock here would free the parent's lock
    _HELD.clear()


class RunLock:
    """An exclusive, non-blocking lock on ``folder/.lock``.

    Args:
        folder: the run folder (must exist).
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's pid, host and start time into the file.

        Raises:
            RunFolderError: another process holds it (the message names it).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(
                f"{self.path.parent} is in use by another run ({_holder(self.path)}); wait for "
                "it to finish or stop it, or choose another --out"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            # A file system without locks (some network mounts): run, but say so.
            log.warning("%s cannot be locked (%s): nothing stops a second run here", self.path, exc)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        global _at_fork_registered
        if not _at_fork_registered:
            os.register_at_fork(after_in_child=_close_in_child)
            _at_fork_registered = True
        _HELD.add(fd)

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with a starting run)."""
        if self._fd is not None:
            _HELD.discard(self._fd)
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _holder(path: Path) -> str:
    """``pid 123 on host, started 2026-01-01 10:00:00 UTC``, or what is known of it."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is starting"
