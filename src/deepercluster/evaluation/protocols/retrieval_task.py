"""What ``deepercluster eval retrieval`` does: describe, whiten, rank, score, report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepercluster.data import Collection, open_collection
from deepercluster.data.pathmatch import display_paths
from deepercluster.engine.run_folder import load_pretrained
from deepercluster.evaluation.average_precision import retrieval_map
from deepercluster.evaluation.protocols.report import markdown_table, output_dir, write_result
from deepercluster.evaluation.protocols.retrieval import (
    RetrievalImages,
    RetrievalSettings,
    describe,
    fit_whitening,
    rank,
)
from deepercluster.evaluation.protocols.retrieval_gt import GroundTruth, locate, read_ground_truth
from deepercluster.models import Backbone

__all__ = ["RetrievalInputs", "run_retrieval_task"]

_SHOWN_QUERIES = 4
_SHOWN_RESULTS = 6


@dataclass(frozen=True)
class RetrievalInputs:
    """Where the weights, images and ground truth are, and how to run the network.

    Attributes:
        checkpoint: run folder, ``backbone.pth`` or ``checkpoint.pth``.
        database: the images searched (folder, list, CSV or tar shards).
        gt: ground-truth file (see :mod:`~.retrieval_gt`).
        queries: where the query images are (default: the database).
        whiten_data: a separate collection to learn the PCA whitening on (None: no whitening).
        max_whiten: use at most this many whitening images (0: all).
        out: results folder (default ``<run>/eval``).
        device, workers, precision, progress: how to run the network.
    """

    checkpoint: str
    database: str
    gt: str
    queries: str | None = None
    whiten_data: str | None = None
    max_whiten: int = 0
    out: str | None = None
    device: str = "cpu"
    workers: int = 0
    precision: str = "fp32"
    progress: bool = True


def _unique_locate(collection: Collection, names: list[str], flag: str) -> np.ndarray:
    unique = sorted(set(names))
    where = locate(display_paths(collection), unique, flag)
    lookup = dict(zip(unique, where, strict=True))
    return np.array([lookup[n] for n in names], dtype=np.int64)


def _describe(
    backbone: Backbone,
    images: RetrievalImages,
    settings: RetrievalSettings,
    inputs: RetrievalInputs,
) -> tuple[np.ndarray, np.ndarray]:
    return describe(
        backbone,
        images,
        settings,
        device=torch.device(inputs.device),
        workers=inputs.workers,
        precision=inputs.precision,
        progress=inputs.progress,
    )


def _plot_top(
    path: Path,
    gt: GroundTruth,
    order: np.ndarray,
    setup: str,
    images: tuple[Collection, np.ndarray, Collection, np.ndarray],
) -> None:
    """A grid: each row a query and its top results, framed green (positive), red (wrong)
    or grey (junk)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q_coll, q_idx, d_coll, d_idx = images
    positives, junk = gt.answers(setup)
    shown = min(_SHOWN_QUERIES, order.shape[0])
    cols = 1 + min(_SHOWN_RESULTS, order.shape[1])
    fig, axes = plt.subplots(shown, cols, figsize=(1.6 * cols, 1.7 * shown), squeeze=False)
    for q in range(shown):
        for c in range(cols):
            ax = axes[q][c]
            ax.set_xticks([])
            ax.set_yticks([])
            try:
                if c == 0:
                    ax.imshow(q_coll.read(int(q_idx[q])))
                    ax.set_title(f"query {q + 1}", fontsize=8)
                    continue
                hit = int(order[q, c - 1])
                ax.imshow(d_coll.read(int(d_idx[hit])))
            except Exception:  # an unreadable image leaves a blank cell
                continue
            colour = ("tab:green" if hit in positives[q] else "grey" if hit in junk[q]
                      else "tab:red")  # fmt: skip
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(3)
    fig.suptitle(f"Top {cols - 1} results ({setup}): green right, red wrong, grey junk",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_retrieval_task(
    inputs: RetrievalInputs, settings: RetrievalSettings
) -> tuple[str, dict[str, Any]]:
    """Rank the database for every query and score mAP per protocol; writes
    ``retrieval.{json,md,png}``.

    Returns:
        ``(markdown table, JSON payload)``.
    """
    gt = read_ground_truth(inputs.gt)
    pre = load_pretrained(inputs.checkpoint, device="cpu")
    database = open_collection(inputs.database)
    queries = open_collection(inputs.queries) if inputs.queries else database
    d_idx = _unique_locate(database, gt.database, f"--database {inputs.database}")
    if gt.whole_database:
        gt = gt.on_collection(d_idx, display_paths(database))
        d_idx = np.arange(len(database))
    q_idx = _unique_locate(queries, gt.queries, f"--queries {inputs.queries or inputs.database}")
    size = settings.image_size
    d_desc, d_ok = _describe(pre.backbone, RetrievalImages(database, d_idx, size), settings, inputs)
    q_desc, q_ok = _describe(
        pre.backbone, RetrievalImages(queries, q_idx, size, gt.boxes), settings, inputs
    )
    if not q_ok.all():
        bad = queries.path(int(q_idx[np.flatnonzero(~q_ok)[0]]))
        raise ValueError(f"query image {bad} cannot be read; fix it or drop the query")
    whitening = None
    if inputs.whiten_data:
        w_coll = open_collection(inputs.whiten_data)
        w_idx = np.arange(len(w_coll))
        if 0 < inputs.max_whiten < len(w_idx):
            w_idx = np.sort(np.random.default_rng(0).choice(w_idx, inputs.max_whiten, False))
        w_desc, w_ok = _describe(
            pre.backbone, RetrievalImages(w_coll, w_idx, size), settings, inputs
        )
        whitening = fit_whitening(w_desc[w_ok], settings.whiten_dim)
    order = rank(q_desc, d_desc, whitening, d_ok)
    results: dict[str, Any] = {}
    for setup in gt.setups:
        positives, junk = gt.answers(setup)
        if gt.whole_database and inputs.queries is None:
            # Each query is an image of the database it searches: it finds itself first,
            # which says nothing; it is junk unless listed among its own positives.
            junk = [
                np.union1d(j, np.setdiff1d([d], p))
                for j, p, d in zip(junk, positives, q_idx, strict=True)
            ]
        mean, aps = retrieval_map(order, positives, junk)
        results[setup] = {"map": mean, "ap": [None if np.isnan(a) else a for a in aps]}
    rows = [[name, f"{100 * r['map']:.2f}"] for name, r in results.items()]
    whitened = (
        f"PCA-whitened to {whitening.dim} dims on `{inputs.whiten_data}`"
        if whitening else "not whitened (no --whiten-data)"
    )  # fmt: skip
    header = (
        f"Retrieval with `{pre.source}`: {len(gt.queries)} queries, {len(gt.database)} "
        f"database images ({int((~d_ok).sum())} unreadable); {settings.pooling.upper()} of "
        f"{settings.layer or pre.backbone.conv_layer_names[-1]} at scales "
        f"{[round(s, 3) for s in settings.scales]} of at most {size} px, {whitened}.\n\n"
    )
    table = markdown_table(["protocol", "mAP %"], rows)
    payload = {
        "checkpoint": str(pre.source),
        "database": inputs.database,
        "gt": inputs.gt,
        "whiten_data": inputs.whiten_data,
        "whiten_dim": whitening.dim if whitening else 0,
        "n_queries": len(gt.queries),
        "n_database": len(gt.database),
        "unreadable_database": int((~d_ok).sum()),
        "settings": asdict(settings),
        "protocols": results,
        "top": order[:, :10].tolist(),
    }
    folder = output_dir(inputs.checkpoint, inputs.out)
    write_result(folder, "retrieval", payload, header + table)
    setup = "medium" if "medium" in gt.setups else next(iter(gt.setups))
    _plot_top(folder / "retrieval.png", gt, order, setup, (queries, q_idx, database, d_idx))
    return header + table, payload
