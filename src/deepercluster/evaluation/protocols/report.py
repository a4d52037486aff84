"""Results on disk: a JSON file for programs, a Markdown table for people, a PNG where a curve
says more than a table (accuracy per layer, NMI per epoch)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["markdown_table", "output_dir", "plot_curves", "plot_pr_curves", "write_result"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; floats get 2 decimals."""

    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_curves(
    path: Path,
    curves: dict[str, tuple[Sequence[object], Sequence[float], Sequence[float] | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> None:
    """Write a line plot: ``{label: (x values, y values, y std or None)}``, one line each."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys, err) in curves.items():
        positions = list(range(len(xs)))
        ax.errorbar(positions, ys, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xticks(positions, [str(x) for x in xs])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_pr_curves(
    path: Path,
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    title: str,
) -> None:
    """Write precision-recall curves: ``{label: (recall (K,), precision (K,))}``, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for label, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=label)
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def output_dir(run: str | Path, out: str | None) -> Path:
    """Where results go: ``out`` if given, else ``<run folder>/eval`` (``run``: the folder or
    a file in it)."""
    if out:
        return Path(out)
    path = Path(run)
    return (path if path.is_dir() else path.parent) / "eval"


def write_result(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> list[Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    md_path = out_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    md_path.write_text(markdown)
    return [json_path, md_path]
