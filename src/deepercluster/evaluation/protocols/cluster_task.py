"""Cluster analysis of a run (``deepercluster eval clusters``): its clusters against class
labels or against multi-label tags.

The paper (Caron et al., ICCV 2019, section 4.3) reads what the clusters capture from
metadata: NMI against ImageNet labels, hashtags, GPS. Here: NMI, AMI, ARI and purity of the
super-clusters and of the sub-clusters against class labels; against tags, the per-tag mutual
information, the most over-represented tags of each cluster, and NMI against each image's most
specific tag next to the NMI that random clusters of the same sizes reach; and the NMI between
consecutive clusterings over the epochs (from the run's ``metrics.jsonl``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from deepercluster.data.pathmatch import csv_values, display_paths
from deepercluster.engine.run_folder import open_run
from deepercluster.evaluation import ami, ari, nmi, purity
from deepercluster.evaluation.protocols.labels import class_labels
from deepercluster.evaluation.protocols.report import (
    markdown_table,
    output_dir,
    plot_curves,
    write_result,
)
from deepercluster.evaluation.tags import (
    TagPairs,
    enrichment,
    most_specific_tag,
    random_nmi,
    tag_mutual_information,
)

__all__ = ["label_agreement", "run_clusters_task", "tag_analysis"]


def label_agreement(
    clusters: np.ndarray, classes: np.ndarray, *, seed: int = 0
) -> dict[str, float]:
    """NMI, AMI, ARI, purity of ``clusters`` against ``classes``, and NMI of random clusters.

    Args:
        clusters: (N,) cluster ids; images with class -1 are left out.
        classes: (N,) class ids, -1 = unknown.

    Returns:
        ``{"images", "clusters", "nmi", "ami", "ari", "purity", "nmi_random",
        "nmi_random_std"}``.
    """
    keep = np.asarray(classes) >= 0
    c, y = np.asarray(clusters)[keep], np.asarray(classes)[keep]
    if c.size == 0:
        raise ValueError("no image has a class label; check --labels or the folder layout")
    chance, chance_std = random_nmi(c, y, seed=seed)
    return {
        "images": int(c.size),
        "clusters": int(np.unique(c).size),
        "nmi": nmi(c, y),
        "ami": ami(c, y),
        "ari": ari(c, y),
        "purity": purity(c, y),
        "nmi_random": chance,
        "nmi_random_std": chance_std,
    }


def tag_analysis(
    clusters: np.ndarray,
    pairs: TagPairs,
    *,
    top: int = 5,
    min_count: int = 3,
    specific_min_count: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Clusters against multi-label tags (see :mod:`deepercluster.evaluation.tags`).

    Args:
        clusters: (N,) cluster id of every image.
        pairs: the images' tags.
        top: tags listed per cluster and in the overall MI ranking.
        min_count: minimum count of a tag inside a cluster to be listed as enriched.
        specific_min_count: minimum use of a tag to serve as an image's most specific tag.
        seed: seeds the random-cluster baseline.

    Returns:
        A JSON-ready dict: ``specific`` (NMI/AMI vs most specific tag, random NMI),
        ``top_mi_tags`` and ``clusters`` (size and enriched tags of each cluster).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    mi, fraction = tag_mutual_information(clusters, pairs)
    counts = pairs.tag_counts()
    order = np.argsort(-mi, kind="stable")[:top]
    specific = most_specific_tag(pairs, min_count=specific_min_count)
    tagged = specific >= 0
    chance, chance_std = random_nmi(clusters[tagged], specific[tagged], seed=seed)
    sizes = np.bincount(clusters)
    per_cluster = enrichment(clusters, pairs, top=top, min_count=min_count)
    return {
        "images": pairs.n_images,
        "tags": len(pairs.vocabulary),
        "specific": {
            "images": int(tagged.sum()),
            "distinct_tags": int(np.unique(specific[tagged]).size),
            "min_count": specific_min_count,
            "nmi": nmi(clusters[tagged], specific[tagged]),
            "ami": ami(clusters[tagged], specific[tagged]),
            "nmi_random": chance,
            "nmi_random_std": chance_std,
        },
        "top_mi_tags": [
            {
                "tag": pairs.vocabulary[t],
                "images": int(counts[t]),
                "mi_nats": float(mi[t]),
                "fraction_of_entropy": float(fraction[t]),
            }
            for t in order
        ],
        "clusters": [
            {"cluster": k, "size": int(sizes[k]), "enriched": [asdict(e) for e in tags]}
            for k, tags in sorted(per_cluster.items())
        ],
    }


def run_clusters_task(
    run: str,
    *,
    data: str | None = None,
    labels_csv: str | None = None,
    metadata_csv: str | None = None,
    column: str = "tags",
    out: str | None = None,
    top: int = 5,
    min_count: int = 3,
    specific_min_count: int = 5,
    seed: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Score the run's last clustering; writes ``clusters.{json,md}`` (+ ``.png`` of the NMI
    between consecutive clusterings when the run logged several).

    Args:
        run: run folder (or its checkpoint.pth).
        data: the images the run clustered (default: the run's ``data.path``).
        labels_csv: CSV with path and ``label`` columns (default: class folders of ``data``).
        metadata_csv: CSV with path and ``column`` holding comma-separated tags: tag analysis
            instead of class labels.
        column: the tags column of ``metadata_csv``.
        out: results folder (default ``<run>/eval``).
        top, min_count, specific_min_count, seed: see :func:`tag_analysis`.

    Returns:
        ``(markdown, JSON payload)``.
    """
    opened = open_run(run)
    folder = opened.path
    if opened.k <= 1:
        raise ValueError(
            f"{folder} comes from a run without clustering (cluster.k = 1); evaluate its "
            "features with `eval linear` or `eval knn` instead"
        )
    out_dir = output_dir(run, out)
    collection = opened.collection(data)
    spec = data or opened.config.data.path
    clusters = opened.clustering
    valid = clusters.valid.astype(bool)
    levels = {
        "sub-clusters": clusters.labels.astype(np.int64),
        "super-clusters": clusters.super_clusters.astype(np.int64),
    }
    payload: dict[str, Any] = {"run": str(folder), "data": spec, "images": int(valid.sum())}
    text = f"Clusters of `{folder}` ({int(valid.sum())} clustered images of {spec}).\n\n"
    if metadata_csv is not None:
        tags = csv_values(display_paths(collection), metadata_csv, column)
        keep = valid & np.array([t is not None for t in tags])
        pairs = TagPairs.from_strings([t or "" for t, k in zip(tags, keep, strict=True) if k])
        payload["tags"] = {}
        for level, assignment in levels.items():
            if np.unique(assignment[keep]).size < 2:
                continue
            analysis = tag_analysis(
                assignment[keep],
                pairs,
                top=top,
                min_count=min_count,
                specific_min_count=specific_min_count,
                seed=seed,
            )
            payload["tags"][level] = analysis
            text += _tags_markdown(level, analysis)
    else:
        classes, names = class_labels(collection, labels_csv)
        payload["classes"] = names
        rows = []
        for level, assignment in levels.items():
            if np.unique(assignment[valid]).size < 2:
                continue
            scores = label_agreement(assignment[valid], classes[valid], seed=seed)
            payload[level] = scores
            shown = ("nmi", "nmi_random", "ami", "ari", "purity")
            rows.append([level, scores["clusters"], *(f"{scores[s]:.3f}" for s in shown)])
        text += markdown_table(
            ["level", "clusters", "NMI", "NMI random", "AMI", "ARI", "purity"], rows
        )
    history = [
        (int(r["epoch"]), float(r["cluster/nmi_previous"]))
        for r in opened.metrics()
        if "cluster/nmi_previous" in r
    ]
    if history:
        payload["nmi_previous"] = [{"epoch": e, "nmi": v} for e, v in history]
        text += "\nNMI between consecutive clusterings (stability over epochs):\n\n"
        text += markdown_table(["epoch", "NMI(t-1, t)"], [[e, f"{v:.3f}"] for e, v in history])
        if len(history) > 1:
            epochs, values = zip(*history, strict=True)
            plot_curves(
                out_dir / "clusters.png",
                {"NMI(t-1, t)": (epochs, values, None)},
                title="Stability of the clusters",
                xlabel="epoch",
                ylabel="NMI with previous clustering",
            )
    write_result(out_dir, "clusters", payload, text)
    return text, payload


def _tags_markdown(level: str, analysis: dict[str, Any]) -> str:
    s = analysis["specific"]
    text = (
        f"### {level}: clusters vs tags ({analysis['images']} images, {analysis['tags']} tags)\n\n"
        f"NMI against each image's most specific tag (rarest tag used by >= {s['min_count']} "
        f"images; {s['images']} images, {s['distinct_tags']} distinct tags): **{s['nmi']:.3f}** "
        f"(AMI {s['ami']:.3f}); random clusters of the same sizes: {s['nmi_random']:.3f} ± "
        f"{s['nmi_random_std']:.3f}.\n\n"
        "Tags whose presence the clusters predict best (mutual information):\n\n"
    )
    text += markdown_table(
        ["tag", "images", "MI (nats)", "share of tag entropy"],
        [
            [t["tag"], t["images"], f"{t['mi_nats']:.4f}", f"{t['fraction_of_entropy']:.3f}"]
            for t in analysis["top_mi_tags"]
        ],
    )
    text += (
        "\nMost over-represented tags per cluster (lift = P(tag | cluster) / P(tag); count in "
        "cluster / images with the tag):\n\n"
    )
    rows = []
    for c in analysis["clusters"]:
        tags = ", ".join(
            f"{e['tag']} ×{e['lift']:.1f} ({e['count']}/{e['tag_total']})" for e in c["enriched"]
        )
        rows.append([c["cluster"], c["size"], tags or "—"])
    return text + markdown_table(["cluster", "size", "top tags"], rows) + "\n"
