"""SkipLog: which images were skipped and why, written next to the run's outputs."""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SkipLog"]


class SkipLog:
    """Paths of skipped images with their reasons, deduplicated by path in first-seen order.

    Every epoch and every feature extraction meets the same bad files again, so recording is
    idempotent: the first reason recorded for a path is kept.

    Example:
        >>> log = SkipLog()
        >>> log.record("/data/a.jpg", "zero-byte file")
        >>> log.summary()
        '1 image skipped (1 zero-byte file)'
    """

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self._reasons: dict[str, str] = {}
        self._written_to: str | None = None
        for path, reason in entries:
            self.record(path, reason)

    def record(self, path: str, reason: str) -> None:
        """Remember that ``path`` was skipped because of ``reason`` (no-op if already known)."""
        self._reasons.setdefault(path, reason)

    def merge(self, other: SkipLog) -> None:
        """Add the entries of ``other`` (e.g. gathered from another process) to this log."""
        for path, reason in other.entries:
            self.record(path, reason)

    @property
    def entries(self) -> list[tuple[str, str]]:
        """``(path, reason)`` pairs in the order the paths were first recorded."""
        return list(self._reasons.items())

    def __len__(self) -> int:
        return len(self._reasons)

    def __contains__(self, path: object) -> bool:
        return path in self._reasons

    def __repr__(self) -> str:
        return f"SkipLog({len(self)} entries)"

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write ``path,reason`` rows to ``path`` atomically (temp file + ``os.replace``).

        Readers (and a run killed mid-write) therefore see either the old or the new file,
        never half of one. Parent folders are created.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A pid-named temp file opened normally (not mkstemp) gets the usual umask permissions,
        # so skipped.csv is as readable as the other files of the run folder.
        tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "reason"])
                writer.writerows(self._reasons.items())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._written_to = str(target)

    def summary(self) -> str:
        """One line for the log, e.g. ``"3 images skipped (2 truncated image, 1 zero-byte file);
        see runs/x/skipped.csv"``. Reasons are grouped by their kind (the text before ``": "``);
        the CSV is mentioned once ``write_csv`` has been called."""
        if not self._reasons:
            return "no images skipped"
        kinds = Counter(reason.split(":", 1)[0].strip() for reason in self._reasons.values())
        ordered = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        detail = ", ".join(f"{count} {kind}" for kind, count in ordered)
        noun = "image" if len(self) == 1 else "images"
        text = f"{len(self):,} {noun} skipped ({detail})"
        if self._written_to is not None:
            text += f"; see {self._written_to}"
        return text
