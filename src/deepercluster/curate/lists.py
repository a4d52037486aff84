"""The files of a curation: what was kept, what was dropped and why, every duplicate group.

For ``--out curated.csv``:

- ``curated.csv``: ``path, super_cluster, sub_cluster, reason``, one row per kept image. The
  ``path`` column is what ``deepercluster train --data curated.csv`` reads (the other columns
  become metadata), so the file trains as it is.
- ``curated.dropped.csv``: the same columns plus ``outcome`` (``duplicate``, ``over_quota`` or
  ``unreadable``) for every other image, the reason saying why in words
  (``duplicate of <path> (cosine 0.987)``, ``over the cap: ...`` or ``over its cluster's
  quota: ...``, ``unreadable``).
- ``curated.groups.csv``: ``group, path, survivor, cosine``, one row per member of every
  near-duplicate group (``survivor`` 1 for the member that stayed in the pool).
- ``curated.json``: the settings, the counts and each cluster's pool and quota.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepercluster.curate.select import DUPLICATE, KEPT, OVER_QUOTA, UNREADABLE, Curation

__all__ = ["OUTCOMES", "CurationFiles", "companion", "read_curation", "write_curation"]

COLUMNS = ("path", "super_cluster", "sub_cluster", "reason")
OUTCOMES = {DUPLICATE: "duplicate", OVER_QUOTA: "over_quota", UNREADABLE: "unreadable"}
"""The ``outcome`` column of the dropped list."""


def companion(out: str | Path, what: str) -> Path:
    """The file beside ``out`` holding ``what`` (``dropped``, ``groups``, ``json``)."""
    out = Path(out)
    suffix = ".json" if what == "json" else f".{what}.csv"
    return out.with_name(out.stem + suffix)


def _sub_index(super_of: np.ndarray) -> np.ndarray:
    """(k,) position of each cluster among the clusters of its super-cluster."""
    sub = np.zeros(len(super_of), dtype=np.int64)
    seen: dict[int, int] = {}
    for c, s in enumerate(super_of.tolist()):
        sub[c] = seen.get(s, 0)
        seen[s] = sub[c] + 1
    return sub


def _reason(cur: Curation, i: int, c: int, paths: Sequence[str], pick: str, cap: int | None) -> str:
    status = int(cur.status[i])
    if status == DUPLICATE:
        return f"duplicate of {paths[int(cur.duplicate_of[i])]} (cosine {cur.similarity[i]:.3f})"
    if c < 0:
        return "unreadable"
    share = f"cluster {c} gave {int(cur.quota[c])} of {int(cur.pool[c])}"
    if status == OVER_QUOTA:
        if cap is not None and int(cur.quota[c]) == cap < int(cur.pool[c]):
            return f"over the cap of {cap} per cluster: {share}"
        return f"over its cluster's quota of the --size budget: {share}"
    return f"{share} ({pick})"


def write_curation(
    cur: Curation,
    paths: Sequence[str],
    out: str | Path,
    *,
    pick: str,
    cap: int | None = None,
    summary: dict[str, Any],
) -> list[Path]:
    """Write the four files of a curation (see the module docstring).

    Args:
        cur: the decisions.
        paths: (N,) display path of every image.
        out: the kept list, e.g. ``curated.csv``.
        pick: the rule that chose inside clusters (for the reasons).
        cap: the per-cluster cap, if any (for the reasons).
        summary: extra entries of the JSON file (settings, run, timings).

    Returns:
        The files written, the kept list first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sub_of = _sub_index(cur.super_of)
    survivors = np.zeros(len(paths), dtype=np.int64)
    np.add.at(survivors, cur.duplicate_of[cur.duplicate_of >= 0], 1)
    dropped_file = companion(out, "dropped")
    with out.open("w", newline="") as kept_fh, dropped_file.open("w", newline="") as drop_fh:
        kept, dropped = csv.writer(kept_fh), csv.writer(drop_fh)
        kept.writerow(COLUMNS)
        dropped.writerow((*COLUMNS, "outcome"))
        for i, c in enumerate(cur.labels.tolist()):
            where = (int(cur.super_of[c]), int(sub_of[c])) if c >= 0 else (-1, -1)
            reason = _reason(cur, i, c, paths, pick, cap)
            if cur.status[i] == KEPT:
                if survivors[i]:
                    reason += f"; stands for {survivors[i]} near-duplicate(s)"
                kept.writerow((paths[i], *where, reason))
            else:
                dropped.writerow((paths[i], *where, reason, OUTCOMES[int(cur.status[i])]))
    groups_file = companion(out, "groups")
    with groups_file.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("group", "path", "survivor", "cosine"))
        members = np.flatnonzero(cur.group >= 0)
        members = members[np.lexsort((members, cur.group[members]))]
        _, index = np.unique(cur.group[members], return_inverse=True)
        for g, i in zip(index.tolist(), members.tolist(), strict=True):
            dup = cur.duplicate_of[i] >= 0
            cosine = f"{cur.similarity[i]:.4f}" if dup else ""
            writer.writerow((g, paths[i], 0 if dup else 1, cosine))
    summary_file = companion(out, "json")
    summary_file.write_text(
        json.dumps(
            {
                **summary,
                "counts": cur.counts(),
                "duplicate_groups": int(np.unique(cur.group[cur.group >= 0]).size),
                "pairs_compared": cur.compared,
                "clusters": {
                    "super_cluster": cur.super_of.tolist(),
                    "pool": cur.pool.tolist(),
                    "quota": cur.quota.tolist(),
                },
            },
            indent=1,
        )
    )
    return [out, dropped_file, groups_file, summary_file]


@dataclass(frozen=True)
class CurationFiles:
    """A curation read back (``deepercluster inspect --curation``).

    Attributes:
        kept: paths of the kept images, in file order.
        dropped: (path, outcome) of the others, outcome one of :data:`OUTCOMES`' values.
        groups: near-duplicate groups, each a list of (path, survivor, cosine or NaN).
        summary: the JSON file ({} when it is missing).
    """

    kept: list[str]
    dropped: list[tuple[str, str]]
    groups: list[list[tuple[str, bool, float]]]
    summary: dict[str, Any]


def _outcome(row: dict[str, str]) -> str:
    """A dropped row's outcome; lists written before the column existed say it in words."""
    if row.get("outcome"):
        return row["outcome"]
    reason = row["reason"]
    if reason.startswith("duplicate of"):
        return "duplicate"
    return "unreadable" if reason == "unreadable" else "over_quota"


def read_curation(out: str | Path) -> CurationFiles:
    """Read the files written by :func:`write_curation` for the kept list ``out``.

    Raises:
        FileNotFoundError: ``out`` does not exist.
        ValueError: ``out`` has no ``path`` column (not a curation list).
    """
    out = Path(out)
    if not out.is_file():
        raise FileNotFoundError(f"{out} not found; pass the --out file of `deepercluster curate`")
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "path" not in rows[0]:
        raise ValueError(
            f"{out} has no 'path' column; pass a list written by `deepercluster curate`"
        )
    kept = [r["path"] for r in rows]
    dropped: list[tuple[str, str]] = []
    if companion(out, "dropped").is_file():
        with companion(out, "dropped").open(newline="") as fh:
            dropped = [(r["path"], _outcome(r)) for r in csv.DictReader(fh)]
    groups: dict[int, list[tuple[str, bool, float]]] = {}
    if companion(out, "groups").is_file():
        with companion(out, "groups").open(newline="") as fh:
            for r in csv.DictReader(fh):
                cosine = float(r["cosine"]) if r["cosine"] else float("nan")
                groups.setdefault(int(r["group"]), []).append(
                    (r["path"], r["survivor"] == "1", cosine)
                )
    summary_file = companion(out, "json")
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return CurationFiles(kept, dropped, [groups[g] for g in sorted(groups)], summary)
