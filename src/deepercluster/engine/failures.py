"""The failures a run folder can meet, as exceptions whose message names the fix.

The command line turns each into its own exit code (``deepercluster.cli.exits``), so that a
requeue script can tell "run again" from "a person must act": a folder in use or holding a
run that cannot continue (:class:`RunFolderError`), a damaged checkpoint
(:class:`CheckpointError`), a full disk or a failing device (:func:`io_error_of`).
"""

from __future__ import annotations

import errno
from pathlib import Path

__all__ = ["IO_ERRNOS", "CheckpointError", "NoReadableImages", "RunFolderError", "io_error_of"]

IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
"""Errors of the storage rather than of the run: freeing space (or fixing the disk) and
running the same command again continues."""

# Torch's serializer reports a failed write of its own (C++) writer in a RuntimeError whose
# message may carry the system's words and nothing else.
_IO_WORDS = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "input/output error": errno.EIO,
    "read-only file system": errno.EROFS,
}


class RunFolderError(Exception):
    """The run folder cannot be used as asked: another run holds it, or it holds a run that
    cannot continue. The message names the holder or the files, and the way out."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: cut short, overwritten, not ours, or holding pickled
    Python objects (never unpickled).

    Args:
        path: the file.
        problem: what is wrong, as a predicate ("is damaged (cut short)").
        fix: what to do about it; each caller knows its own way out.
    """

    def __init__(self, path: Path, problem: str, fix: str = "") -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{self.path} {problem}" + (f"; {fix}" if fix else ""))

    def with_fix(self, fix: str) -> CheckpointError:
        """The same problem with another way out."""
        return CheckpointError(self.path, self.problem, fix)


def io_error_of(exc: BaseException) -> OSError | None:
    """The storage error behind ``exc`` (full disk, quota, EIO, read-only), if there is one.

    Looks at ``exc`` itself, then its ``__cause__``/``__context__`` chain (torch raises a
    ``RuntimeError: [enforce fail at inline_container.cc...]`` while handling the OSError),
    then the messages' text (torch's C++ writer sometimes only has the words).

    Returns:
        The OSError, or a new one with the errno read from a message; None otherwise.
    """
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in IO_ERRNOS:
            return node
        text = str(node).lower()
        for words, code in _IO_WORDS.items():
            if words in text:
                return OSError(code, words.capitalize())
        node = node.__cause__ or node.__context__
    return None


class NoReadableImages(ValueError):
    """No image of the collection could be read.

    Args:
        message: what was tried.
        unreadable: (image index, reason) of the images tried, for ``skipped.csv``.
    """

    def __init__(self, message: str, unreadable: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.unreadable = list(unreadable or [])
