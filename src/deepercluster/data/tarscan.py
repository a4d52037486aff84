"""One pass over a tar shard's headers that survives damage: members, and the spans lost.

``tarfile`` ends its listing at the first header it cannot parse, so one flipped byte in
member 5 of 20 silently drops the 15 members after it. GNU tar instead skips to the next
512-byte block that holds a valid header ("Skipping to next header") and reads on. This
scan does the same, and reports each skipped span so that it can be listed in
``skipped.csv``.

It drives ``tarfile`` through three attributes of ``TarFile`` that every Python 3 version
has: ``offset`` (where the next header is looked for), ``ignore_zeros`` (skip blocks that
are no header instead of stopping) and ``members`` (every header seen, which we empty).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .files import BadImageError, open_regular

__all__ = ["LostSpan", "Member", "scan_shard"]

_BLOCK = tarfile.BLOCKSIZE
# Compressed streams a ".tar" may secretly hold: their members cannot be reached by seeking.
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


@dataclass(frozen=True)
class Member:
    """A regular member: its name, where its data starts and how many bytes it has."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class LostSpan:
    """Bytes ``[start, end)`` of a shard that hold no readable header (a damaged one and
    the data of its member); ``end`` is the next valid header, or the shard's size when
    ``last`` (no valid header follows)."""

    start: int
    end: int
    last: bool = False


def scan_shard(path: str) -> Iterator[Member | LostSpan]:
    """The regular, non-sparse members of the tar file ``path`` and its lost spans, in
    archive order. The scan stops at the end-of-archive marker, as tar does.

    A member cut short by the end of the file is listed (reading it reports a truncated
    image); a header cut short, a damaged one and the blocks up to the next valid header
    are one ``LostSpan``.

    Raises:
        BadImageError: The whole shard cannot be read: not a regular file, unreadable,
            empty, compressed, or without one valid header. ``reason`` says which.
    """
    try:
        f = open_regular(path)
    except BadImageError as err:
        raise BadImageError(f"unreadable tar shard: {err.reason}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise BadImageError("empty tar shard: 0 bytes")
        head = f.read(8)
        f.seek(0)
        packed = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
        if packed is not None:
            raise BadImageError(
                f"unreadable tar shard: {packed} data, not a plain (uncompressed) tar archive; "
                f"repack it as a plain .tar (`{packed} -dc {path} > plain.tar`)"
            )
        try:
            # "r:" refuses compressed streams; ignore_zeros makes the search for the first
            # header skip a damaged one as the search for any later one does below.
            archive = tarfile.open(fileobj=f, mode="r:", ignore_zeros=True)  # noqa: SIM115
        except tarfile.ReadError as err:
            raise BadImageError(f"unreadable tar shard: not a tar archive ({err})") from None
        with archive:
            yield from _walk(archive, f, size)


def _walk(archive: tarfile.TarFile, f: BinaryIO, size: int) -> Iterator[Member | LostSpan]:
    expected = 0  # where the next header starts if nothing is damaged
    archive.ignore_zeros = False  # outside a resync, a zero block ends the archive
    while True:
        try:
            member = archive.next()
        except tarfile.ReadError:
            # A damaged header right after a pax or GNU long-name header, or a member cut
            # short by the end of the file: handled with the other misses below.
            member = None
        archive.ignore_zeros = False
        # tarfile keeps every header it parsed; we keep three numbers per member instead.
        archive.members.clear()  # type: ignore[attr-defined]  # (not in typeshed)
        if member is not None:
            if member.offset > expected and not _zeros(f, expected, member.offset):
                yield LostSpan(expected, member.offset)
            expected = archive.offset
            if member.isreg() and not member.issparse():
                yield Member(member.name, member.offset_data, member.size)
            continue
        at = archive.offset
        if at < size and not _zeros(f, at, min(at + _BLOCK, size)):
            # A damaged header: search on from the next block, past zero blocks too (they
            # may be the lost member's data), as GNU tar does.
            archive.offset = at + _BLOCK
            archive.ignore_zeros = True
            continue
        # The end-of-archive marker or the end of the file. A search that ran into it
        # found no header after `expected`: that span is lost.
        lost = expected < min(at, size) and not _zeros(f, expected, min(at, size))
        if expected == 0:  # not one valid header
            raise BadImageError(
                f"unreadable tar shard: no valid tar header in its {size:,} bytes (not a tar "
                f"archive)"
                if lost
                else "empty tar shard: no members"
            )
        if lost:
            yield LostSpan(expected, size, last=True)
        return


def _zeros(f: BinaryIO, start: int, end: int) -> bool:
    """Whether bytes ``[start, end)`` of ``f`` are all zero (read in bounded chunks)."""
    f.seek(start)
    while start < end:
        chunk = f.read(min(end - start, 1 << 20))
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        start += len(chunk)
    return True
