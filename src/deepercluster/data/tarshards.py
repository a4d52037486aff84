"""Random access to images stored in plain ``.tar`` shards, without extracting them.

Large image sets travel as tar shards (WebDataset style): millions of small files are slow
to copy and list, a few hundred archives are not. A plain tar stores each member's bytes
contiguously, so one header scan gives ``(shard, offset, size)`` per image and any image can
then be read with one seek and one read.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from .decode import IMAGE_EXTENSIONS, BadImageError
from .pathtable import PathTable

__all__ = ["COMPRESSED_TAR_SUFFIXES", "TarShards", "is_image_name"]

#: Archive endings whose members cannot be reached by seeking (the stream must be decompressed).
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")

# Thousands of shards may be indexed; keeping every one open would exhaust the process's file
# descriptors (often 1024), and each DataLoader worker holds its own set.
_MAX_OPEN_SHARDS = 32


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

    File handles are opened lazily and remembered together with the process id: a
    DataLoader worker forked after indexing shares the parent's open file *description*
    (hence its file offset), so concurrent seek+read calls from several workers would race.
    Each process therefore reopens its own handles.

    Args:
        shards: Paths of plain (uncompressed) ``.tar`` files, in the order that defines ids.

    Raises:
        ValueError: A shard is compressed or not a tar archive.
    """

    def __init__(self, shards: Sequence[str]) -> None:
        self.shards: list[str] = [str(s) for s in shards]
        shard_ids: list[np.ndarray] = []
        offsets: list[int] = []
        sizes: list[int] = []
        names: list[str] = []
        for shard_id, shard in enumerate(self.shards):
            before = len(offsets)
            for member in _scan(shard):
                names.append(member.name)
                offsets.append(member.offset_data)
                sizes.append(member.size)
            shard_ids.append(np.full(len(offsets) - before, shard_id, dtype=np.int32))
        # Arrays rather than per-member objects: millions of members stay compact and pickle
        # quickly when a DataLoader spawns workers.
        self.names = PathTable(names)
        self.shard_of = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> str:
        """Display path ``"<shard>:<member name>"`` of image ``index``."""
        return f"{self.shards[int(self.shard_of[index])]}:{self.names[index]}"

    def read_bytes(self, index: int) -> bytes:
        """The encoded bytes of image ``index``, read straight from its shard.

        Raises:
            BadImageError: The shard vanished or the member is cut short (truncated copy).
        """
        size = int(self.sizes[index])
        try:
            handle = self._handle(int(self.shard_of[index]))
            handle.seek(int(self.offsets[index]))
            data = handle.read(size)
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _handle(self, shard_id: int) -> BinaryIO:
        pid = os.getpid()
        if pid != self._pid:
            # Forked: the inherited handles share their offset with the parent. Closing our
            # copies only releases this process's descriptors; the parent's stay open.
            self.close()
            self._pid = pid
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = open(self.shards[shard_id], "rb", buffering=0)  # noqa: SIM115 (cached)
            self._handles[shard_id] = handle
            if len(self._handles) > _MAX_OPEN_SHARDS:
                _, oldest = self._handles.popitem(last=False)
                oldest.close()
        else:
            self._handles.move_to_end(shard_id)
        return handle


def _scan(shard: str) -> list[tarfile.TarInfo]:
    """Headers of the image members of one shard, in archive order."""
    if shard.lower().endswith(COMPRESSED_TAR_SUFFIXES):
        raise ValueError(compressed_tar_message(shard))
    try:
        # "r:" refuses compressed streams: with "r:*" a .tar that is secretly gzipped would be
        # indexed, but its offsets would point into compressed data.
        archive = tarfile.open(shard, mode="r:")  # noqa: SIM115 (closed by the with below)
    except tarfile.ReadError as err:
        raise ValueError(
            f"{shard} is not a plain (uncompressed) tar archive ({err}); if it is compressed, "
            f"repack it as a plain .tar (e.g. `gzip -dc {shard} > shard.tar`)"
        ) from None
    members: list[tarfile.TarInfo] = []
    with archive:
        try:
            for m in archive:
                # Zero-byte image members are kept: reading them reports "zero-byte file" in
                # the skip log, as for a folder, instead of the image silently vanishing.
                if m.isreg() and not m.issparse() and is_image_name(m.name):
                    members.append(m)
        except tarfile.ReadError:
            # The shard ends inside a member (an interrupted copy): keep what was indexed;
            # the cut member reads as "truncated image" and is skipped like any bad file.
            pass
    return members
