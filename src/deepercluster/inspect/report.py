"""``deepercluster inspect``: a static HTML report of what a run's clusters found.

The report folder (``runs/x/report/`` by default) holds ``index.html`` (run summary, training
curves, cluster statistics, sizes per super-cluster), ``tree.html`` (super-clusters and their
clusters), ``clusters/page-NNNN.html`` (``per_page`` cluster cards each: the members nearest
the centroid and random members, with over-represented tags when metadata is given),
``figures/*.png``, ``thumbs/`` (cached thumbnails) and ``cache/`` (the run's features).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepercluster.data import Collection
from deepercluster.data.pathmatch import csv_values, display_paths
from deepercluster.engine.run_folder import RunFolder, open_run
from deepercluster.evaluation.tags import Enriched, TagPairs, overrepresented
from deepercluster.inspect.curation import CurationSection, curation_html, curation_section
from deepercluster.inspect.embed import run_embedding
from deepercluster.inspect.html import ClusterCard, PageSet, write_pages
from deepercluster.inspect.plots import CURVES, STAGES, plot_curves, plot_sizes, plot_stage_times
from deepercluster.inspect.thumbnails import ThumbnailCache

__all__ = ["ReportOptions", "cluster_cards", "inspect_run", "render_report"]


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """How the report looks.

    Attributes:
        per_page: cluster cards per page (pages load lazily: 10,000 clusters = 100 pages).
        nearest: members nearest to the centroid shown per cluster.
        random: other members drawn at random per cluster.
        thumb_size: longest thumbnail side in pixels.
        top_tags: over-represented tags shown per cluster.
        seed: for the random members.
    """

    per_page: int = 100
    nearest: int = 8
    random: int = 4
    thumb_size: int = 128
    top_tags: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_page < 1 or self.nearest < 1 or self.random < 0:
            raise ValueError(
                f"per_page ({self.per_page}) and nearest ({self.nearest}) must be >= 1 and "
                f"random ({self.random}) >= 0"
            )


def cluster_cards(
    labels: np.ndarray,
    super_clusters: np.ndarray,
    sub_clusters: np.ndarray,
    distances: np.ndarray,
    k: int,
    options: ReportOptions,
    tags: Sequence[list[Enriched]] | None = None,
) -> list[ClusterCard]:
    """One card per cluster: its nearest and random members, size and tags.

    Args:
        labels: (N,) global cluster per image, -1 for unreadable ones.
        super_clusters, sub_clusters: (N,) the hierarchy of each image.
        distances: (N,) distance to the own centroid (NaN: unknown, sorted last).
        k: number of clusters.
        options: how many members to show.
        tags: per cluster, its over-represented tags.
    """
    rng = np.random.default_rng(options.seed)
    ids = np.flatnonzero(labels >= 0)
    order = ids[np.lexsort((np.nan_to_num(distances[ids], nan=np.inf), labels[ids]))]
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    per_super = k // max(int(super_clusters[ids].max()) + 1, 1) if ids.size else k
    cards = []
    for c in range(k):
        members = order[bounds[c] : bounds[c + 1]]
        rest = members[options.nearest :]
        chosen = rng.choice(rest, size=min(options.random, rest.size), replace=False)
        d = distances[members]
        cards.append(
            ClusterCard(
                cluster=c,
                super_cluster=int(super_clusters[members[0]]) if members.size else c // per_super,
                sub_cluster=int(sub_clusters[members[0]]) if members.size else c % per_super,
                size=int(members.size),
                nearest=members[: options.nearest].tolist(),
                random=np.sort(chosen).tolist(),
                tags=list(tags[c]) if tags is not None else [],
                mean_distance=float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"),
            )
        )
    return cards


def render_report(
    out: Path,
    *,
    title: str,
    summary: Sequence[tuple[str, str]],
    config: Sequence[tuple[str, str]],
    records: Sequence[dict[str, Any]],
    cards: Sequence[ClusterCard],
    collection: Collection,
    paths: Sequence[str],
    skipped: Sequence[tuple[str, str]] = (),
    options: ReportOptions = ReportOptions(),
    progress: bool = False,
    curation: CurationSection | None = None,
) -> Path:
    """Figures, thumbnails and pages for already computed cluster cards.

    ``curation``: a section on a curation of these images for the index page.

    Returns:
        The path of ``index.html``.
    """
    figures_dir = out / "figures"
    figures: list[tuple[str, str]] = []
    if records:
        for name, (caption, panels) in CURVES.items():
            plot_curves(records, panels, figures_dir / name)
            figures.append((name, caption))
        plot_stage_times(records, figures_dir / "stages.png")
        figures.append(("stages.png", "time per stage"))
    sizes = np.array([c.size for c in cards])
    plot_sizes(sizes, np.array([c.super_cluster for c in cards]), figures_dir / "sizes.png")
    figures.append(("sizes.png", "cluster sizes per super-cluster"))

    thumbs = ThumbnailCache(out / "thumbs", size=options.thumb_size)
    shown = [i for c in cards for i in (*c.nearest, *c.random)]
    shown += curation.shown if curation is not None else []
    _, failed = thumbs.ensure(collection, shown, progress=progress)
    bad = set(failed)
    thumb = {i: "thumbs/" + thumbs.relative(i) for i in shown if i not in bad}
    pages = PageSet(
        title=title,
        summary=summary,
        config=config,
        figures=figures,
        skipped=skipped,
        paths=paths,
        thumb=thumb,
        per_page=options.per_page,
        extra=curation_html(curation, thumb, paths) if curation is not None else "",
    )
    return write_pages(out, cards, pages)


def inspect_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    data: str | None = None,
    metadata: str | Path | None = None,
    path_column: str = "file",
    tags_column: str = "tags",
    options: ReportOptions = ReportOptions(),
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    curation: str | Path | None = None,
) -> Path:
    """Write the HTML report of the run in ``run_dir``; returns the path of ``index.html``.

    Args:
        run_dir: the run folder.
        out: report folder (default ``run_dir/report``).
        data: the run's images, when they moved or were in memory (same N images).
        metadata: CSV with an image path column and a comma-separated tags column.
        options: page layout.
        batch_size, workers, device: feature extraction (once; cached in ``out/cache``).
        progress: progress bars.
        curation: a kept list of ``deepercluster curate`` over this run: adds a section
            (balance over the metadata's tags, else over the folder classes, when known).
    """
    run = open_run(run_dir)
    report = Path(out) if out is not None else run.path / "report"
    collection = run.collection(data)
    tic = time.perf_counter()
    emb = run_embedding(
        run,
        collection,
        cache_dir=report / "cache",
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
    )
    t_features = time.perf_counter() - tic
    paths = display_paths(collection)
    tags = None
    values: list[str] | None = None
    if metadata is not None:
        values = [
            v or "" for v in csv_values(paths, metadata, tags_column, path_column=path_column)
        ]
        shown = emb.labels >= 0
        pairs = TagPairs.from_strings([v or "" for v, s in zip(values, shown, strict=True) if s])
        tags = overrepresented(emb.labels[shown], pairs, run.k, top=options.top_tags)
    cards = cluster_cards(
        emb.labels, emb.super_clusters, emb.sub_clusters, emb.distances, run.k, options, tags
    )
    section = None
    if curation is not None:
        if values is None:
            values = _class_names(collection)
        section = curation_section(curation, paths, emb.labels, values)
    records = run.metrics()
    summary = _summary(run, records, t_features)
    config = _flatten(run.config.to_dict())
    return render_report(
        report,
        title=f"{run.path.resolve().name}: deepercluster report",
        summary=summary,
        config=config,
        records=records,
        cards=cards,
        collection=collection,
        paths=paths,
        skipped=run.skipped,
        options=options,
        progress=progress,
        curation=section,
    )


def _class_names(collection: Collection) -> list[str] | None:
    """The folder class of every image, when the collection has them."""
    labels = getattr(collection, "labels", None)
    names = list(getattr(collection, "class_names", []))
    if labels is None or not names:
        return None
    return [names[int(i)] for i in labels]


def _summary(
    run: RunFolder, records: Sequence[dict[str, Any]], t_features: float
) -> list[tuple[str, str]]:
    c = run.config
    valid = int(run.clustering.valid.sum())
    rows = [
        ("run folder", str(run.path.resolve())),
        ("method", f"{c.model.arch} (Sobel: {c.model.sobel}), {c.data.resolution} px"),
        ("clusters", f"k = {run.k} in m = {run.m} super-clusters ({c.cluster.sub_per_super} each)"),
        ("images", f"{run.n_images:,} ({valid:,} readable, {len(run.skipped):,} skipped)"),
        ("epochs trained", f"{run.epoch} of {c.train.epochs}"),
        ("clusters shown", f"from the clustering of epoch {run.clustered_epoch + 1}"),
    ]
    for key, name in STAGES.items():
        total = sum(float(r.get(key, 0.0)) for r in records)
        if total:
            rows.append((f"time: {name}", f"{total:.1f} s"))
    rows.append(
        ("time: features for this report", f"{t_features:.1f} s (extracted once per checkpoint)")
    )
    last = run.summary()
    for key in ("train/loss", "train/super_acc", "train/sub_acc", "cluster/nmi_previous"):
        if key in last:
            rows.append((f"last epoch: {key}", f"{float(last[key]):.4g}"))
    return rows


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in sorted(tree.items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, str(value)))
    return rows
