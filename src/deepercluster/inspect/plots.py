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

__all__ = ["CURVES", "STAGES", "plot_curves", "plot_sizes", "plot_stage_times"]

# metrics.jsonl keys of the per-stage wall times, with the names the report shows.
STAGES = {
    "time/extract_s": "feature extraction",
    "time/pca_s": "PCA",
    "time/kmeans_s": "k-means",
    "time/train_s": "training",
}
_DPI = 80


# The per-epoch figures: file name -> (caption, panels), a panel being
# (title, {metrics.jsonl key: line label}).
CURVES = {
    "training.png": (
        "training loss and accuracy per epoch",
        [
            (
                "training loss",
                {
                    "train/loss": "total",
                    "train/super_loss": "super-class",
                    "train/sub_loss": "sub-class",
                },
            ),
            ("training accuracy", {"train/super_acc": "super-class", "train/sub_acc": "sub-class"}),
        ],
    ),
    "clusters.png": (
        "clustering statistics per epoch",
        [
            (
                "k-means objective",
                {"cluster/objective": "sub-clusters", "cluster/super_objective": "super-clusters"},
            ),
            ("NMI with the previous clustering", {"cluster/nmi_previous": "NMI"}),
            (
                "cluster size (images)",
                {
                    "cluster/size_min": "min",
                    "cluster/size_median": "median",
                    "cluster/size_max": "max",
                },
            ),
        ],
    ),
}


def plot_curves(
    records: Sequence[dict[str, Any]], panels: Sequence[tuple[str, dict[str, str]]], path: Path
) -> Path:
    """One panel per ``(title, {key: label})``: the logged values of each key per epoch."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 + 3 * len(panels), 3.4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key, label in keys.items():
            xs = [float(r["epoch"]) for r in records if key in r]  # numbered from 1
            ys = [float(r[key]) for r in records if key in r]
            if xs:
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
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
