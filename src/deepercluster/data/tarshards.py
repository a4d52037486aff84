"""Random access to images stored in plain ``.tar`` shards, without extracting them.

Large image sets travel as tar shards (WebDataset style): millions of small files are slow
to copy and list, a few hundred archives are not. A plain tar stores each member's bytes
contiguously, so one header scan gives ``(shard, offset, size)`` per image and any image can
then be read with one seek and one read.
"""

from __future__ import annotations

import os
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np

from deepercluster.log import get_logger

from .decode import IMAGE_EXTENSIONS
from .files import DEFAULT_MAX_BYTES, BadImageError, open_regular, too_large
from .pathtable import PathTable
from .tarscan import Member, scan_shard

__all__ = ["COMPRESSED_TAR_SUFFIXES", "TarShards", "is_image_name"]

#: Archive endings whose members cannot be reached by seeking (the stream must be decompressed).
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")

# Thousands of shards may be indexed; keeping every one open would exhaust the process's file
# descriptors (often 1024), and each DataLoader worker holds its own set.
_MAX_OPEN_SHARDS = 32
_log = get_logger("data")


def is_image_name(name: str) -> bool:
    """True for a member or file name with an image extension that is not hidden.

    Hidden names (``.DS_Store``, macOS ``._photo.jpg`` resource forks, ``.cache/``) are not
    images even when their extension says so.
    """
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") for p in parts):
        return False
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def compressed_tar_message(path: str) -> str:
    """The error text for a compressed archive, with the one-line repack command."""
    return (
        f"{path} is a compressed tar archive: its members cannot be read by seeking, so every "
        f"image read would decompress the archive from its start. Repack it once as a plain "
        f".tar (e.g. `gzip -dc {path} > shard.tar`, or `xz -dc`/`zstd -dc` for those formats) "
        f"and point the data path at the .tar files"
    )


class TarShards:
    """An index of the image members of one or more plain tar shards.

    Ids follow the shard order given, then the member order inside each archive, so they
    are stable as long as the shards are unchanged.

    A damaged header does not end a shard's listing: the scan resynchronises at the next
    valid header (see ``tarscan``). Each lost span, and each shard that cannot be read or
    holds no image, keeps an id (in its place in that order) whose read raises
    ``BadImageError`` with the reason, so it is listed in the run's ``skipped.csv`` like a
    bad image; ``problems`` maps those ids to their reasons.

    File handles are opened lazily and remembered together with the process id: a
    DataLoader worker forked after indexing shares the parent's open file *description*
    (hence its file offset), so concurrent seek+read calls from several workers would race.
    Each process therefore reopens its own handles.

    Args:
        shards: Paths of plain (uncompressed) ``.tar`` files, in the order that defines ids.
    """

    def __init__(self, shards: Sequence[str]) -> None:
        self.shards: list[str] = [str(s) for s in shards]
        # Arrays rather than per-member objects: millions of members stay compact and pickle
        # quickly when a DataLoader spawns workers.
        shard_of, offsets, sizes = array("i"), array("q"), array("q")
        self.problems: dict[int, str] = {}

        def names() -> Iterator[str]:
            # One pass: the names stream into the PathTable while the numbers are appended.
            for shard_id, shard in enumerate(self.shards):
                for name, offset, size, reason in _entries(shard):
                    if reason is not None:
                        self.problems[len(offsets)] = reason
                    shard_of.append(shard_id)
                    offsets.append(offset)
                    sizes.append(size)
                    yield name

        self.names = PathTable(names(), prefix="")
        self.shard_of = np.frombuffer(shard_of, dtype=np.int32).copy()
        self.offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self.sizes = np.frombuffer(sizes, dtype=np.int64).copy()
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()
        self._pid = os.getpid()

    @property
    def n_members(self) -> int:
        """How many ids are image members (the others stand for lost spans or bad shards)."""
        return len(self) - len(self.problems)

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> str:
        """Display path of image ``index``: ``"<shard>:<member name>"``; for a lost span
        ``"<shard>@<byte offset>"``, for a shard that gave nothing ``"<shard>"``."""
        shard = self.shards[int(self.shard_of[index])]
        if self.sizes[index] < 0:
            return f"{shard}{self.names[index]}"
        return f"{shard}:{self.names[index]}"

    def read_bytes(self, index: int, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """The encoded bytes of image ``index``, read straight from its shard.

        Args:
            index: The image id.
            max_bytes: A member larger than this is not read.

        Raises:
            BadImageError: The id stands for a lost span or a bad shard, the member is
                larger than ``max_bytes``, the shard vanished, or the member is cut short
                (truncated copy).
        """
        size = int(self.sizes[index])
        if size < 0:
            raise BadImageError(self.problems[index])
        if size > max_bytes:
            raise too_large(size, max_bytes)
        try:
            handle = self._handle(int(self.shard_of[index]))
            handle.seek(int(self.offsets[index]))
            data = handle.read(size)
        except BadImageError as err:
            raise BadImageError(f"unreadable tar shard: {err.reason}") from None
        except OSError as err:
            raise BadImageError(f"unreadable tar shard: {err.strerror or err}") from None
        if len(data) != size:
            raise BadImageError(
                f"truncated image: tar member has {len(data)} of {size} bytes (shard cut short)"
            )
        return data

    def close(self) -> None:
        """Close the file handles this process opened (they reopen on the next read)."""
        while self._handles:
            _, handle = self._handles.popitem()
            handle.close()

    def __del__(self) -> None:
        # Unclosed files trigger ResourceWarning at garbage collection; close them ourselves.
        handles = getattr(self, "_handles", None)
        if handles:
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Open files cannot be pickled (DataLoader workers under "spawn"); each process opens
        # its own on first read anyway.
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def _handle(self, shard_id: int) -> BinaryIO:
        pid = os.getpid()
        if pid != self._pid:
            # Forked: the inherited handles share their offset with the parent. Closing our
            # copies only releases this process's descriptors; the parent's stay open.
            self.close()
            self._pid = pid
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = open_regular(self.shards[shard_id], buffering=0)
            self._handles[shard_id] = handle
            if len(self._handles) > _MAX_OPEN_SHARDS:
                _, oldest = self._handles.popitem(last=False)
                oldest.close()
        else:
            self._handles.move_to_end(shard_id)
        return handle


def _entries(shard: str) -> Iterator[tuple[str, int, int, str | None]]:
    """``(name, offset, size, problem)`` of each id of one shard, in archive order.

    An image member gives its name, data offset, size and None. A lost span gives
    ``("@<start>", start, -1, reason)``; a shard that cannot be read, or holds neither an
    image member nor a lost span, one ``("", 0, -1, reason)``. Each problem is logged as a
    warning too.
    """
    found = False
    try:
        for entry in scan_shard(shard):
            if isinstance(entry, Member):
                if is_image_name(entry.name):
                    # Zero-byte image members are kept: reading them reports "zero-byte
                    # file" in the skip log, as for a folder, instead of the image vanishing.
                    found = True
                    yield entry.name, entry.offset, entry.size, None
                continue
            found = True
            # The span may hold a whole member, or only the extended (pax) header of the
            # member found next: either way nothing in it can be read.
            lost = f"{entry.end - entry.start:,} bytes skipped"
            reason = f"damaged tar header at offset {entry.start:,}: " + (
                f"{lost} to the end of the shard (no valid header follows)"
                if entry.last
                else f"{lost} up to the next valid header at offset {entry.end:,}"
            )
            reason += "; any member stored in them is lost"
            _log.warning("%s@%d: %s", shard, entry.start, reason)
            yield f"@{entry.start}", entry.start, -1, reason
    except (BadImageError, OSError) as err:
        reason = (
            err.reason
            if isinstance(err, BadImageError)
            else f"unreadable tar shard: {err.strerror or err}"
        )
        _log.warning("skipping %s: %s", shard, reason)
        yield "", 0, -1, reason
        return
    if not found:
        shown = ", ".join(IMAGE_EXTENSIONS[:4])
        reason = f"empty tar shard: no image members ({shown}, ...)"
        _log.warning("skipping %s: %s", shard, reason)
        yield "", 0, -1, reason
