"""The report's figures as PNG files (matplotlib, no display needed).

Each function takes plain numbers (the run's ``metrics.jsonl`` records, cluster sizes) and
writes one PNG; none of them reads a run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # file output only: never try to open a window on a server

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

__all__ = ["STAGES", "plot_clusters", "plot_sizes", "plot_stage_times", "plot_training"]

# metrics.jsonl keys of the per-stage wall times, with the names the report shows.
STAGES = {
    "time/extract_s": "feature extraction",
    "time/pca_s": "PCA",
    "time/kmeans_s": "k-means",
    "time/train_s": "training",
}
_DPI = 80


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs = [float(r["epoch"]) for r in records if key in r]  # numbered from 1
    ys = [float(r[key]) for r in records if key in r]
    return xs, ys


def _panel(ax: Any, records: Sequence[dict[str, Any]], keys: dict[str, str], title: str) -> None:
    for key, label in keys.items():
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_training(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Losses and accuracies of both heads per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    _panel(
        axes[0],
        records,
        {"train/loss": "total", "train/super_loss": "super-class", "train/sub_loss": "sub-class"},
        "training loss",
    )
    _panel(
        axes[1],
        records,
        {"train/super_acc": "super-class", "train/sub_acc": "sub-class"},
        "training accuracy",
    )
    return _save(fig, path)


def plot_clusters(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """k-means objective, NMI between rounds and cluster sizes per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    _panel(
        axes[0],
        records,
        {"cluster/objective": "sub-clusters", "cluster/super_objective": "super-clusters"},
        "k-means objective",
    )
    _panel(axes[1], records, {"cluster/nmi_previous": "NMI"}, "NMI with the previous clustering")
    _panel(
        axes[2],
        records,
        {"cluster/size_min": "min", "cluster/size_median": "median", "cluster/size_max": "max"},
        "cluster size (images)",
    )
    return _save(fig, path)


def plot_stage_times(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Total wall time per stage over the run, as horizontal bars (seconds)."""
    totals = {name: sum(float(r.get(key, 0.0)) for r in records) for key, name in STAGES.items()}
    fig, ax = plt.subplots(figsize=(6, 2.4))
    names = list(totals)
    ax.barh(names, [totals[n] for n in names], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds (whole run)")
    ax.set_title("time per stage", fontsize=10)
    return _save(fig, path)


def plot_sizes(sizes: np.ndarray, super_of: np.ndarray, path: Path) -> Path:
    """Distribution of cluster sizes inside each super-cluster (box plots, log scale).

    Args:
        sizes: (k,) images per cluster.
        super_of: (k,) super-cluster of each cluster.
    """
    supers = np.unique(super_of)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(supers) + 2), 3.4))
    data = [np.maximum(sizes[super_of == s], 1) for s in supers]
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(np.arange(1, len(supers) + 1), [str(s) for s in supers])
    ax.set_yscale("log")
    ax.set_xlabel("super-cluster")
    ax.set_ylabel("images per cluster")
    ax.set_title("cluster sizes per super-cluster", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path
