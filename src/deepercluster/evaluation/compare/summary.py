"""From each (method, seed)'s scores to one row per method: means and spreads over seeds.

Pure functions over numbers: the best probe layer of a method is the one with the highest
held-out accuracy (mean over its pre-training seeds), never chosen on the test images; it is
reported with its test accuracy as mean ± standard deviation over those seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LayerScore",
    "MethodSummary",
    "SeedScores",
    "Stat",
    "best_layer",
    "seed_scores",
    "stat",
    "summarize",
]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; None for one value) of ``n`` values."""

    mean: float
    std: float | None
    n: int

    def text(self, digits: int = 1) -> str:
        """``"61.2 ± 0.4"``, or ``"61.2"`` for one value."""
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def stat(values: Sequence[float | None]) -> Stat | None:
    """The :class:`Stat` of the values that are not None (None when there are none)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return None
    mean = sum(known) / len(known)
    if len(known) == 1:
        return Stat(mean, None, 1)
    var = sum((v - mean) ** 2 for v in known) / (len(known) - 1)
    return Stat(mean, math.sqrt(var), len(known))


@dataclass(frozen=True)
class LayerScore:
    """The probe of one layer of one run (accuracies in percent).

    Attributes:
        layer: conv layer name.
        heldout: held-out accuracy of the chosen (lr, wd).
        test: test accuracy, mean over the probe seeds.
        lr: chosen initial learning rate.
        wd: chosen weight decay.
        edges: grid edges the choice still sits on after widening (see ``LayerResult``).
        widened: times the grid grew past an edge before this choice.
    """

    layer: str
    heldout: float
    test: float
    lr: float
    wd: float
    edges: tuple[str, ...] = ()
    widened: int = 0


@dataclass(frozen=True)
class SeedScores:
    """Everything measured on one pre-training seed of one method.

    Attributes:
        method: the method's name.
        seed: its pre-training seed.
        layers: the probe of each conv layer, in network order.
        knn: kNN top-1 % on the final features.
        kmeans_nmi: NMI of k-means on the test features vs the classes.
        clusters_nmi: NMI of the run's own last clustering vs the classes (None: no clusters).
        super_acc: training accuracy of the super-class head at the last epoch (rotation for
            RotNet, rotation × super-cluster for DeeperCluster; None when it has one class).
        pretrain_s: pre-training seconds.
        probe_s: seconds of all the scores.
        curves: ``{metric: [[epoch, value], ...]}`` from the run's metrics.
    """

    method: str
    seed: int
    layers: tuple[LayerScore, ...]
    knn: float | None = None
    kmeans_nmi: float | None = None
    clusters_nmi: float | None = None
    super_acc: float | None = None
    pretrain_s: float = 0.0
    probe_s: float = 0.0
    curves: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSummary:
    """One row of the comparison: each score's :class:`Stat` over the pre-training seeds.

    Attributes:
        method: the method's name.
        seeds: the seeds it has results for.
        best_layer: the layer with the best mean held-out accuracy.
        best: test % of ``best_layer``.
        layers: test % of every layer.
        choices: every seed's chosen ``lr/wd`` per layer.
        edges: per layer, the grid edges any seed's choice still sits on.
        widened: per layer, the most times any seed's grid grew.
        knn, kmeans_nmi, clusters_nmi, super_acc, pretrain_s, probe_s: as in
            :class:`SeedScores`.
        curves: per metric, ``[[epoch, mean over seeds], ...]``.
    """

    method: str
    seeds: tuple[int, ...]
    best_layer: str | None
    best: Stat | None
    layers: dict[str, Stat]
    choices: dict[str, list[str]]
    edges: dict[str, list[str]]
    widened: dict[str, int]
    knn: Stat | None
    kmeans_nmi: Stat | None
    clusters_nmi: Stat | None
    super_acc: Stat | None
    pretrain_s: Stat | None
    probe_s: Stat | None
    curves: dict[str, list[list[float]]]


def best_layer(runs: Sequence[SeedScores]) -> str | None:
    """The layer with the highest mean held-out accuracy over ``runs`` (first one on ties)."""
    names = [s.layer for s in runs[0].layers] if runs else []
    means = {}
    for name in names:
        values = [s.heldout for r in runs for s in r.layers if s.layer == name]
        means[name] = sum(values) / len(values)
    return max(names, key=lambda n: means[n]) if names else None


def _mean_curves(runs: Sequence[SeedScores]) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    for metric in dict.fromkeys(k for r in runs for k in r.curves):
        by_epoch: dict[float, list[float]] = {}
        for r in runs:
            for epoch, value in r.curves.get(metric, []):
                by_epoch.setdefault(epoch, []).append(value)
        out[metric] = [[e, sum(v) / len(v)] for e, v in sorted(by_epoch.items())]
    return out


def summarize(runs: Sequence[SeedScores]) -> list[MethodSummary]:
    """One :class:`MethodSummary` per method, in the order the methods first appear."""
    summaries = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        best = best_layer(mine)
        names = [s.layer for s in mine[0].layers]
        per_layer = {n: [s for r in mine for s in r.layers if s.layer == n] for n in names}
        layers = {n: stat([s.test for s in scores]) for n, scores in per_layer.items()}
        summaries.append(
            MethodSummary(
                method=method,
                seeds=tuple(r.seed for r in mine),
                best_layer=best,
                best=layers.get(best) if best else None,
                layers={n: s for n, s in layers.items() if s is not None},
                choices={n: [f"{s.lr:g}/{s.wd:g}" for s in sc] for n, sc in per_layer.items()},
                edges={n: sorted({e for s in sc for e in s.edges}) for n, sc in per_layer.items()},
                widened={n: max(s.widened for s in sc) for n, sc in per_layer.items()},
                knn=stat([r.knn for r in mine]),
                kmeans_nmi=stat([r.kmeans_nmi for r in mine]),
                clusters_nmi=stat([r.clusters_nmi for r in mine]),
                super_acc=stat([r.super_acc for r in mine]),
                pretrain_s=stat([r.pretrain_s for r in mine]),
                probe_s=stat([r.probe_s for r in mine]),
                curves=_mean_curves(mine),
            )
        )
    return summaries


def seed_scores(
    method: str,
    seed: int,
    *,
    linear: dict[str, Any],
    knn: dict[str, Any] | None,
    clusters: dict[str, Any] | None,
    curves: dict[str, list[list[float]]],
    super_classes: int,
    seconds: tuple[float, float],
) -> SeedScores:
    """A :class:`SeedScores` from the payloads of ``eval linear`` / ``eval knn`` and the
    clusters score; ``super_classes`` is the run's number of super-classes (1: no such head),
    ``seconds`` its (pre-training, scoring) time."""
    layers = tuple(
        LayerScore(
            layer=r["layer"],
            heldout=float(r["heldout"][f"lr={r['best_lr']:g},wd={r['best_weight_decay']:g}"]),
            test=float(r["mean"]),
            lr=float(r["best_lr"]),
            wd=float(r["best_weight_decay"]),
            edges=tuple(r.get("edges", ())),
            widened=int(r.get("widened", 0)),
        )
        for r in linear["layers"]
    )
    super_curve = curves.get("train/super_acc", [])
    sub = (clusters or {}).get("sub-clusters")
    return SeedScores(
        method=method,
        seed=seed,
        layers=layers,
        knn=float(next(iter(knn["knn_top1"].values()))) if knn else None,
        kmeans_nmi=float(knn["kmeans"]["nmi"]) if knn and "kmeans" in knn else None,
        clusters_nmi=float(sub["nmi"]) if sub else None,
        super_acc=float(super_curve[-1][1]) if super_curve and super_classes > 1 else None,
        pretrain_s=seconds[0],
        probe_s=seconds[1],
        curves=curves,
    )
