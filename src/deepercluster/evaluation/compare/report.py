"""``compare.md`` and ``compare.png``: the comparison for people (``compare.json`` has it all)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepercluster.evaluation.compare.summary import MethodSummary, Stat
from deepercluster.evaluation.protocols.report import markdown_table, plot_curves

__all__ = ["CURVE_TITLES", "markdown", "plot_layers", "thin_epochs"]

CURVE_TITLES = {
    "train/loss": "training loss",
    "train/super_acc": "training accuracy of the super-class head (rotation × super-cluster)",
    "train/rotation_acc": "training accuracy of the rotation alone (the super-class head's "
    "prediction has the right rotation)",
    "cluster/nmi_previous": "NMI between consecutive clusterings",
}
"""The training curves shown, by metric of metrics.jsonl."""

_MAX_EPOCH_COLUMNS = 12


def _cell(value: Stat | None, digits: int = 1, scale: float = 1.0) -> str:
    if value is None:
        return "—"
    std = None if value.std is None else value.std * scale
    return Stat(value.mean * scale, std, value.n).text(digits)


def _minutes(value: Stat | None) -> str:
    return "—" if value is None else f"{value.mean / 60:.1f}"


def main_table(summaries: Sequence[MethodSummary]) -> str:
    """The headline table: one row per method."""
    rows = []
    for s in summaries:
        edge = " ⚠" if s.best_layer and s.edges.get(s.best_layer) else ""
        best = f"{s.best_layer}: {_cell(s.best)}{edge}" if s.best_layer else "—"
        rows.append(
            [
                s.method,
                len(s.seeds),
                _minutes(s.pretrain_s),
                _minutes(s.probe_s),
                best,
                _cell(s.knn),
                _cell(s.kmeans_nmi, 3),
                _cell(s.clusters_nmi, 3),
                _cell(s.super_acc, 1, 100.0),
            ]
        )
    header = [
        "method",
        "seeds",
        "pre-train min",
        "scoring min",
        "best layer (held-out choice): test %",
        "kNN %",
        "k-means NMI",
        "run's clusters NMI",
        "rotation / super-class acc % (last epoch)",
    ]
    return markdown_table(header, rows)


def layers_table(summaries: Sequence[MethodSummary]) -> str:
    """Test % per layer, with every seed's chosen lr/wd and any grid edge left."""
    names = list(dict.fromkeys(n for s in summaries for n in s.layers))
    rows = []
    for s in summaries:
        cells: list[object] = [s.method]
        for name in names:
            choice = ", ".join(dict.fromkeys(s.choices.get(name, [])))
            edges = s.edges.get(name)
            flag = f" ⚠ {', '.join(edges)}" if edges else ""
            if s.widened.get(name):
                flag += f"; grid widened ×{s.widened[name]}"
            cells.append(f"{_cell(s.layers.get(name))} ({choice}{flag})")
        rows.append(cells)
    return markdown_table(["method", *[f"{n}: test % (lr/wd)" for n in names]], rows)


def thin_epochs(epochs: Sequence[float], limit: int = _MAX_EPOCH_COLUMNS) -> list[float]:
    """At most ``limit`` of ``epochs``, evenly spread, always with the first and the last."""
    if len(epochs) <= limit:
        return list(epochs)
    step = (len(epochs) - 1) / (limit - 1)
    return [epochs[round(i * step)] for i in range(limit)]


def curves_tables(summaries: Sequence[MethodSummary]) -> str:
    """One table per training curve (methods × epochs, mean over seeds); '' when none."""
    text = ""
    for metric, title in CURVE_TITLES.items():
        having = [s for s in summaries if s.curves.get(metric)]
        if metric in ("train/super_acc", "train/rotation_acc"):
            having = [s for s in having if s.super_acc is not None]
        if not having:
            continue
        epochs = sorted({e for s in having for e, _ in s.curves[metric]})
        shown = thin_epochs(epochs)
        rows = []
        for s in having:
            values = dict((e, v) for e, v in s.curves[metric])
            rows.append([s.method, *[f"{values[e]:.3f}" if e in values else "—" for e in shown]])
        text += f"\n**{title.capitalize()}** (`{metric}`, mean over seeds), by epoch:\n\n"
        text += markdown_table(["method", *[f"{e:g}" for e in shown]], rows)
    return text


def markdown(summaries: Sequence[MethodSummary], context: dict[str, Any]) -> str:
    """The whole ``compare.md``.

    Args:
        summaries: one per method.
        context: ``title``, ``setting`` (lines), ``command``, ``machine``, ``wall_s``.
    """
    edges = any(e for s in summaries for e in s.edges.values())
    text = (
        f"# {context['title']}\n\n"
        + main_table(summaries)
        + "\n![probe accuracy per layer](compare.png)\n"
    )
    text += (
        "\nColumns: minutes of pre-training (training and clustering, from each run's "
        "metrics) and of scoring, mean over seeds; the probe layer with the best held-out "
        "accuracy (chosen on a part of the training images, never on test) and its test "
        "top-1; kNN top-1 on the final features; NMI of k-means on the test features (as many "
        "clusters as classes); NMI of the run's own last clustering of its training images; "
        "the training accuracy of the rotation / super-class head at the last epoch. Values "
        "are mean ± sample standard deviation over pre-training seeds.\n"
    )
    if any(s.method == "random" for s in summaries):
        text += (
            "\nThe random row is the network at its initialisation: random convolutions with "
            "large pooled features are a strong linear baseline on small images, so a method "
            "earns its place by beating that row, not zero.\n"
        )
    text += "\n## Linear probes per layer\n\n" + layers_table(summaries)
    text += (
        "\nlr/wd: the initial learning rate and weight decay each seed's held-out choice "
        "picked; when it sat at an edge of the grid, the grid grew by a decade past that edge "
        "and the choice was made again (widened ×n). "
        + (
            "⚠ marks a choice still at an edge after that: a wider grid might score higher."
            if edges
            else "No choice is left at an edge of the grid."
        )
        + "\n"
    )
    curves = curves_tables(summaries)
    if curves:
        text += "\n## Training curves\n" + curves
    text += "\n## Setting\n\n" + "".join(f"- {line}\n" for line in context["setting"])
    wall, steps = context["wall_s"] / 60, context["steps_s"] / 60
    text += (
        f"- Machine: {context['machine']}; pre-training and scoring, every step: {steps:.1f} min; "
        f"this call's wall time {wall:.1f} min (a resumed call reuses the steps done before).\n"
    )
    text += f"\n## Command\n\n    {context['command']}\n"
    return text


def plot_layers(path: Path, summaries: Sequence[MethodSummary], title: str) -> None:
    """``compare.png``: test % per layer, one line per method, error bars over seeds."""
    curves: dict[str, tuple[Sequence[object], Sequence[float], Sequence[float] | None]] = {}
    for s in summaries:
        names = list(s.layers)
        curves[s.method] = (
            names,
            [s.layers[n].mean for n in names],
            [s.layers[n].std or 0.0 for n in names],
        )
    plot_curves(path, curves, title=title, xlabel="layer", ylabel="test top-1 (%)")
