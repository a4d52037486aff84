"""Opening the files a data path names: regular files only, and reads of bounded size.

A folder of crawled or shared images can hold anything under an image's name. Opening a
FIFO (named pipe) blocks until a writer appears, which may be never. A symlink to
``/dev/zero`` reads without end, and a multi-gigabyte file read whole costs that much memory
before the decoder can say it is not an image. So a file is opened only once ``stat`` (which
follows symlinks) says it is a regular file, and it is read up to a byte limit.

The check is made when an image is read, not when the folder is indexed: ids are positions
in the sorted listing, so the listing stays a function of the names alone (no ``stat`` of
millions of files up front), the file is checked as it is at the moment it is read, and
the refused one is listed in ``skipped.csv`` with its reason instead of silently vanishing.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["DEFAULT_MAX_BYTES", "BadImageError", "open_regular", "read_file", "too_large"]

#: Default largest file read as an image (256 MiB): far above any photo, far below RAM.
DEFAULT_MAX_BYTES = 256 * 2**20

# O_NONBLOCK: a FIFO swapped in between the stat and the open cannot block the open (it
# has no effect on regular files). Windows has neither FIFOs nor the flag.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class BadImageError(Exception):
    """An image that cannot be read or decoded; ``reason`` says why in a few words.

    The reason starts with a short kind ("zero-byte file", "truncated image", "not an image",
    "not a regular file", "too large", ...), optionally followed by ``": "`` and details, so
    that a ``SkipLog`` can count skipped images per kind.

    Args:
        reason: Short human-readable reason, e.g. ``"truncated image: image file is truncated"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def too_large(size: int, max_bytes: int) -> BadImageError:
    """The error for a file (or tar member) of ``size`` bytes above ``max_bytes``."""
    return BadImageError(
        f"too large: {size:,} bytes > data.max_bytes ({max_bytes:,} bytes); raise "
        f"data.max_bytes to read it"
    )


def open_regular(path: str | os.PathLike[str], *, buffering: int = -1) -> BinaryIO:
    """``path`` opened for binary reading, if it is (or links to) a regular file.

    Args:
        path: The file.
        buffering: As for ``open`` (0: unbuffered, for single large reads after a seek).

    Raises:
        BadImageError: Not a regular file (directory, FIFO, device, socket, or a symlink to
            one), missing, or unreadable; ``reason`` says which.
    """
    try:
        _check_regular(path, os.stat(path))  # before the open: a FIFO's open would block
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise BadImageError("file not found: it was moved or deleted after indexing") from None
    except OSError as err:
        raise BadImageError(f"unreadable file: {err.strerror or err}") from None
    try:
        # Again on what was opened: the path may have been replaced since the stat.
        _check_regular(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=buffering)


def read_file(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """All bytes of the regular file ``path``, if it holds at most ``max_bytes``.

    The size is checked from ``fstat`` before reading and again while reading: at most
    ``max_bytes + 1`` bytes are read, so a file that grows, or whose size ``stat`` does not
    know (``/proc``), cannot make memory grow past the limit.

    Raises:
        BadImageError: As ``open_regular``, or the file is larger than ``max_bytes``.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise too_large(size, max_bytes)
        try:
            # One byte more than stat says, to see a file that grew since: only then read on.
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(max_bytes + 1 - len(data))
        except OSError as err:
            raise BadImageError(f"unreadable file: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    return data


def _check_regular(path: str | os.PathLike[str], info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "an unknown file type")
    if os.path.islink(path):
        kind += f" (a symlink to {os.path.realpath(path)})"
    raise BadImageError(f"not a regular file: {kind}")
