"""The comparison's arithmetic on hand-made numbers: best layer on held-out, means and sample
standard deviations over seeds, edge flags, and the tables that show them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deepercluster.evaluation.compare.report import (
    layers_table,
    main_table,
    markdown,
    plot_layers,
    thin_epochs,
)
from deepercluster.evaluation.compare.summary import (
    LayerScore,
    SeedScores,
    best_layer,
    seed_scores,
    stat,
    summarize,
)


def _seed(method: str, seed: int, conv1: tuple[float, float], conv2: tuple[float, float],
          **kw: object) -> SeedScores:  # fmt: skip
    """(held-out, test) of two layers."""
    layers = (
        LayerScore("conv1", conv1[0], conv1[1], 0.01, 1e-4, ("lowest lr",) if seed == 1 else ()),
        LayerScore("conv2", conv2[0], conv2[1], 0.1, 1e-3, widened=1),
    )
    return SeedScores(method, seed, layers, **kw)  # type: ignore[arg-type]


def test_stat_is_mean_and_sample_std() -> None:
    s = stat([1.0, 2.0, 4.0, None])
    assert s is not None and s.n == 3 and s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    one = stat([5.0])
    assert one is not None and one.std is None and one.text() == "5.0"
    assert stat([None]) is None
    assert stat([60.0, 62.0]).text() == "61.0 ± 1.4"  # type: ignore[union-attr]


def test_best_layer_is_chosen_on_heldout_not_test() -> None:
    # conv2 is better on test, conv1 on the held-out part: conv1 must win.
    runs = [_seed("m", 0, (50.0, 40.0), (45.0, 70.0)), _seed("m", 1, (52.0, 42.0), (49.0, 72.0))]
    assert best_layer(runs) == "conv1"
    (row,) = summarize(runs)
    assert row.best_layer == "conv1"
    assert row.best is not None and row.best.mean == pytest.approx(41.0)
    assert row.best.std == pytest.approx(math.sqrt(2.0))
    assert row.layers["conv2"].mean == pytest.approx(71.0)
    assert row.choices["conv1"] == ["0.01/0.0001", "0.01/0.0001"]
    assert row.edges == {"conv1": ["lowest lr"], "conv2": []}
    assert row.widened == {"conv1": 0, "conv2": 1}


def test_summaries_keep_method_order_and_average_curves() -> None:
    runs = [
        _seed("b", 0, (1, 1), (2, 2), knn=30.0, curves={"train/loss": [[1, 2.0], [2, 1.0]]}),
        _seed("a", 0, (1, 1), (2, 2), knn=10.0, super_acc=0.5),
        _seed("b", 1, (1, 1), (2, 2), knn=40.0, curves={"train/loss": [[1, 4.0], [2, 3.0]]}),
    ]
    rows = summarize(runs)
    assert [r.method for r in rows] == ["b", "a"]
    assert rows[0].knn is not None and rows[0].knn.mean == 35.0 and rows[0].seeds == (0, 1)
    assert rows[0].curves == {"train/loss": [[1, 3.0], [2, 2.0]]}
    assert rows[1].super_acc is not None and rows[1].super_acc.std is None
    assert rows[1].clusters_nmi is None


def test_seed_scores_read_the_eval_payloads() -> None:
    linear = {"layers": [{"layer": "conv1", "best_lr": 0.1, "best_weight_decay": 0.001,
                          "heldout": {"lr=0.1,wd=0.001": 55.0, "lr=0.01,wd=0.001": 50.0},
                          "mean": 61.5, "edges": ["highest lr"], "widened": 2}]}  # fmt: skip
    knn = {"knn_top1": {"20": 44.0}, "kmeans": {"nmi": 0.25}}
    clusters = {"sub-clusters": {"nmi": 0.4}}
    curves = {"train/super_acc": [[1, 0.3], [2, 0.6]]}
    s = seed_scores("x", 2, linear=linear, knn=knn, clusters=clusters, curves=curves,
                    super_classes=4, seconds=(120.0, 30.0))  # fmt: skip
    assert s.layers[0] == LayerScore("conv1", 55.0, 61.5, 0.1, 0.001, ("highest lr",), 2)
    assert (s.knn, s.kmeans_nmi, s.clusters_nmi, s.super_acc) == (44.0, 0.25, 0.4, 0.6)
    assert (s.pretrain_s, s.probe_s) == (120.0, 30.0)
    # one super-class (DeepCluster): its accuracy is always 1 and means nothing
    assert seed_scores("x", 2, linear=linear, knn=None, clusters=None, curves=curves,
                       super_classes=1, seconds=(0, 0)).super_acc is None  # fmt: skip


def test_tables_show_means_stds_edges_and_dashes(tmp_path: Path) -> None:
    runs = [
        _seed("rotnet", 0, (50, 60.0), (40, 50.0), knn=30.0, super_acc=0.5, pretrain_s=120.0),
        _seed("rotnet", 1, (50, 62.0), (40, 52.0), knn=32.0, super_acc=0.7, pretrain_s=180.0),
    ]
    rows = summarize(runs)
    table = main_table(rows)
    assert (
        "| rotnet | 2 | 2.5 | 0.0 | conv1: 61.0 ± 1.4 ⚠ | 31.0 ± 1.4 | — | — | 60.0 ± 14.1 |"
        in table
    )
    layers = layers_table(rows)
    assert "61.0 ± 1.4 (0.01/0.0001 ⚠ lowest lr)" in layers
    assert "51.0 ± 1.4 (0.1/0.001; grid widened ×1)" in layers
    context = {"title": "t", "setting": ["a line"], "command": "deepercluster compare x",
               "machine": "m", "wall_s": 90.0, "steps_s": 1500.0}  # fmt: skip
    md = markdown(rows, context)
    assert "⚠ marks a choice still at an edge" in md and "- a line" in md
    assert "every step: 25.0 min; this call's wall time 1.5 min" in md
    plot_layers(tmp_path / "c.png", rows, title="t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_thin_epochs_keeps_first_and_last() -> None:
    assert thin_epochs([1, 2, 3], limit=12) == [1, 2, 3]
    shown = thin_epochs(list(range(1, 101)), limit=12)
    assert len(shown) == 12 and shown[0] == 1 and shown[-1] == 100
