"""The curation section of the report (``deepercluster inspect RUN --curation curated.csv``).

What was kept and what was dropped per cluster, the near-duplicate groups side by side (the
member that stayed first), and the class or tag balance of the pool before and after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from deepercluster.curate.lists import read_curation
from deepercluster.curate.measure import class_balance

__all__ = ["CurationSection", "curation_html", "curation_section"]


@dataclass(frozen=True)
class CurationSection:
    """What the section shows.

    Attributes:
        source: the kept list.
        counts: images per outcome (kept, duplicate, over quota, unreadable).
        clusters: per cluster (cluster, images, kept, near-duplicates dropped, over quota).
        groups: the first near-duplicate groups, image ids with (survivor, cosine).
        n_groups: all groups.
        balance: (class or tag, images before, images after) rows, largest first.
        balance_stats: (entropy, KL to uniform) before and after.
    """

    source: Path
    counts: dict[str, int]
    clusters: list[tuple[int, int, int, int, int]]
    groups: list[list[tuple[int, bool, float]]]
    n_groups: int
    balance: list[tuple[str, int, int]]
    balance_stats: dict[str, dict[str, float]]

    @property
    def shown(self) -> list[int]:
        """Ids whose thumbnails the section uses."""
        return [i for g in self.groups for i, _, _ in g]


def curation_section(
    source: str | Path,
    paths: Sequence[str],
    labels: np.ndarray,
    values: Sequence[str] | None = None,
    *,
    max_groups: int = 40,
) -> CurationSection:
    """Read a curation's files and count them against the run's clusters.

    Args:
        source: the kept list written by ``deepercluster curate``.
        paths: (N,) display path of every image of the run.
        labels: (N,) the run's cluster per image (-1 unreadable).
        values: (N,) a class name or comma-separated tags per image ("" none), or None.
        max_groups: groups shown with thumbnails.

    Raises:
        ValueError: the list names no image of this run (another run's curation).
    """
    files = read_curation(source)
    index = {p: i for i, p in enumerate(paths)}
    kept = np.array([index.get(p, -1) for p in files.kept], dtype=np.int64)
    if len(kept) and (kept < 0).all():
        raise ValueError(
            f"{source} names none of this run's images; pass the run the list was curated from"
        )
    kept = kept[kept >= 0]
    is_dup = np.zeros(len(paths), dtype=bool)
    over = np.zeros(len(paths), dtype=bool)
    for p, outcome in files.dropped:
        i = index.get(p, -1)
        if i >= 0:
            is_dup[i] = outcome == "duplicate"
            over[i] = outcome == "over_quota"
    k = int(labels.max(initial=-1)) + 1
    ok = labels >= 0

    def per_cluster(mask: np.ndarray) -> np.ndarray:
        return np.bincount(labels[mask & ok], minlength=k)

    chosen = np.zeros(len(paths), dtype=bool)
    chosen[kept] = True
    size, n_kept = per_cluster(np.ones(len(paths), bool)), per_cluster(chosen)
    n_dup, n_over = per_cluster(is_dup), per_cluster(over)
    clusters = [(c, int(size[c]), int(n_kept[c]), int(n_dup[c]), int(n_over[c])) for c in range(k)]
    groups = [
        [(index[p], survivor, cos) for p, survivor, cos in g if p in index]
        for g in files.groups[:max_groups]
    ]
    balance: list[tuple[str, int, int]] = []
    stats: dict[str, dict[str, float]] = {}
    if values is not None:
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        for i in np.flatnonzero(ok).tolist():
            for tag in filter(None, (t.strip() for t in (values[i] or "").split(","))):
                before[tag] = before.get(tag, 0) + 1
                if chosen[i]:
                    after[tag] = after.get(tag, 0) + 1
        names = sorted(before, key=lambda t: (-before[t], t))
        balance = [(t, before[t], after.get(t, 0)) for t in names]
        stats = {
            "before": class_balance(np.array([before[t] for t in names])),
            "after": class_balance(np.array([after.get(t, 0) for t in names])),
        }
    counts = dict(files.summary.get("counts", {}))
    if not counts:
        counts = {"kept": len(kept), "duplicate": int(is_dup.sum()), "over_quota": int(over.sum())}
    return CurationSection(
        Path(source), counts, clusters, groups, len(files.groups), balance, stats
    )


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def curation_html(section: CurationSection, thumb: dict[int, str], paths: Sequence[str]) -> str:
    """The section's HTML for the report's index page (thumbnail paths relative to it)."""
    counts = ", ".join(f"{escape(k.replace('_', ' '))}: {v}" for k, v in section.counts.items())
    rows = "".join(
        f"<tr><td>{c}</td><td>{n}</td><td>{kept}</td><td>{dup}</td><td>{over}</td></tr>"
        for c, n, kept, dup, over in section.clusters
    )
    table = (
        "<details><summary>kept and dropped per cluster</summary><table><tr><th>cluster</th>"
        "<th>images</th><th>kept</th><th>near-duplicates dropped</th>"
        "<th>over quota (cap or budget)</th></tr>"
        f"{rows}</table></details>"
    )
    groups = []
    for g in section.groups:
        cells = []
        for i, survivor, cos in g:
            rel = thumb.get(i, "")
            tip = escape(paths[i], quote=True)
            img = f'<img loading="lazy" src="{rel}" title="{tip}" alt="{i}">' if rel else ""
            label = "stays" if survivor else f"cos {_cell(cos)}"
            cells.append(f'<figure>{img}<figcaption class="label">{label}</figcaption></figure>')
        groups.append(f'<div class="grid">{"".join(cells)}</div>')
    more = section.n_groups - len(section.groups)
    shown = "".join(groups) + (
        f"<p>... and {more} more groups (see the groups file)</p>" if more else ""
    )
    balance = ""
    if section.balance:
        b, a = section.balance_stats["before"], section.balance_stats["after"]
        rows = "".join(
            f"<tr><td>{escape(t)}</td><td>{x}</td><td>{y}</td></tr>" for t, x, y in section.balance
        )
        balance = (
            "<h3>Class or tag balance</h3>"
            f"<p>entropy {b['entropy']:.3f} before, {a['entropy']:.3f} after; KL to uniform "
            f"{b['kl_to_uniform']:.3f} before, {a['kl_to_uniform']:.3f} after</p>"
            f"<table><tr><th>class or tag</th><th>before</th><th>after</th></tr>{rows}</table>"
        )
    return (
        f"<h2>Curation ({escape(section.source.name)})</h2><p>{counts}</p>"
        + table
        + f"<h3>Near-duplicate groups ({section.n_groups})</h3>"
        + (shown or "<p>none</p>")
        + balance
    )
