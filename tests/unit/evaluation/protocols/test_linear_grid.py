"""The probe grid grows past an edge the held-out choice sits on, and says when it still does."""

from __future__ import annotations

import numpy as np

from deepercluster.evaluation.protocols.features import LayerFeatures
from deepercluster.evaluation.protocols.linear import (
    LinearProtocol,
    grid_edges,
    run_linear_probes,
    widen_grid,
)


def test_edges_of_a_grid() -> None:
    lrs, wds = (0.01, 0.1), (1e-4, 1e-3, 1e-2)
    assert grid_edges((0.01, 1e-3), lrs, wds) == ("lowest lr",)
    assert grid_edges((0.1, 1e-2), lrs, wds) == ("highest lr", "highest wd")
    assert grid_edges((0.1, 0.0), lrs, (0.0, 1e-3)) == ("highest lr",)  # nothing below wd 0
    assert grid_edges((0.05, 1e-3), (0.01, 0.05, 0.1), wds) == ()


def test_widening_adds_a_decade_past_each_edge() -> None:
    assert widen_grid((0.01, 0.1), (1e-4, 1e-3), ["lowest lr"]) == (
        (0.001, 0.01, 0.1),
        (1e-4, 1e-3),
    )
    lrs, wds = widen_grid((0.1,), (1e-3,), ["lowest lr", "highest lr", "highest wd"])
    assert np.allclose(lrs, (0.01, 0.1, 1.0)) and np.allclose(wds, (1e-3, 1e-2))


def _features(seed: int, n: int) -> LayerFeatures:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n // 3)
    x = rng.normal(size=(labels.size, 8)).astype(np.float32)
    x[np.arange(labels.size), labels] += 3.0
    return LayerFeatures({"f": x}, {}, labels, np.ones(labels.size, bool), 0.0)


def test_a_one_point_grid_grows_and_reports_the_edges_left() -> None:
    train, test = _features(0, 60), _features(1, 30)
    fixed = LinearProtocol(lrs=(0.1,), weight_decays=(1e-3,), epochs=2, seeds=(0,))
    (narrow,) = run_linear_probes(train, test, ["f"], 3, fixed, log=False)
    assert narrow.widened == 0 and list(narrow.heldout) == ["lr=0.1,wd=0.001"]
    assert set(narrow.edges) == {"lowest lr", "highest lr", "lowest wd", "highest wd"}
    grown = LinearProtocol(lrs=(0.1,), weight_decays=(1e-3,), epochs=2, seeds=(0,), widen=1)
    (wide,) = run_linear_probes(train, test, ["f"], 3, grown, log=False)
    assert wide.widened == 1 and len(wide.heldout) == 9  # 3 lrs x 3 wds, each trained once
    assert wide.heldout["lr=0.1,wd=0.001"] == narrow.heldout["lr=0.1,wd=0.001"]
    chosen = f"lr={wide.best_lr:g},wd={wide.best_weight_decay:g}"
    assert wide.heldout[chosen] == max(wide.heldout.values())
    lrs, wds = (0.01, 0.1, 1.0), (1e-4, 1e-3, 1e-2)
    assert wide.edges == grid_edges((wide.best_lr, wide.best_weight_decay), lrs, wds)
