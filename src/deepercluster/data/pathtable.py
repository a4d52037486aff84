"""Millions of paths in two numpy arrays instead of millions of Python strings.

A Python ``str`` costs 49 bytes plus its characters, and every DataLoader worker and every
rank holds a copy of the index. A :class:`PathTable` stores the UTF-8 bytes of all paths back
to back (after their common prefix, stored once) and an int64 offset per path, with no
per-row object (it also pickles as two buffers when DataLoader workers start).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

__all__ = ["PathTable", "common_folder"]


class PathTable(Sequence[str]):
    """An immutable sequence of strings stored as one byte buffer and offsets.

    Args:
        paths: the strings, in order (any iterable; consumed once, never held as a list).
        prefix: stored once and prepended to every entry; None computes the longest common
            prefix of the entries (two passes over a sequence, none over an iterator).
    """

    def __init__(self, paths: Iterable[str], prefix: str | None = None) -> None:
        if prefix is None:
            prefix = common_folder(paths) if isinstance(paths, Sequence) else ""
        self.prefix = prefix
        cut = len(prefix)
        data = bytearray()
        offsets = array("q", [0])
        for path in paths:
            if not path.startswith(prefix):
                raise ValueError(f"{path!r} does not start with the table prefix {prefix!r}")
            data += path[cut:].encode("utf-8", "surrogateescape")
            offsets.append(len(data))
        self._data = np.frombuffer(bytes(data), dtype=np.uint8)
        self._offsets = np.frombuffer(offsets, dtype=np.int64).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} paths")
        i = index % n
        start, stop = int(self._offsets[i]), int(self._offsets[i + 1])
        return self.prefix + self._data[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence, like list


def common_folder(paths: Iterable[str]) -> str:
    """Longest common prefix of ``paths`` that ends at a separator (their shared folder).

    One streaming pass: the common prefix of all strings is that of the smallest and the
    largest one.
    """
    lo = hi = None
    for path in paths:
        lo = path if lo is None or path < lo else lo
        hi = path if hi is None or path > hi else hi
    if lo is None or hi is None:
        return ""
    prefix = os.path.commonprefix([lo, hi])  # noqa: RUF071 (cut at a separator below)
    return prefix[: prefix.rfind(os.sep) + 1]
