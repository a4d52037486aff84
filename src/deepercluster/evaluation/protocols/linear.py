"""The linear-probe protocol: per-layer probes, hyper-parameters on held-out data, seeds.

For each layer: split the labelled training images into a fit part and a held-out part
(stratified, ``holdout`` fraction), train the whole (lr_0, weight decay) grid on the fit part
in one batched run, keep the setting with the best held-out accuracy, then train that setting
on all training images once per seed and report test accuracy as mean and standard deviation.
The test split is never looked at before the last step.

A best setting at an edge of the grid says the grid was too narrow: with ``widen`` > 0 the
grid grows by a decade past that edge (a lower or higher lr_0, a lower or higher weight
decay), only the new settings are trained, and the choice is made again over the whole grid,
up to ``widen`` times. Edges still chosen after that are reported in ``LayerResult.edges``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepercluster.evaluation.linear import SGDSettings, train_linear_probes
from deepercluster.evaluation.protocols.features import LayerFeatures

__all__ = [
    "LayerResult",
    "LinearProtocol",
    "grid_edges",
    "run_linear_probes",
    "stratified_holdout",
    "widen_grid",
]


@dataclass(frozen=True)
class LinearProtocol:
    """Settings of the linear evaluation.

    Attributes:
        lrs: initial learning rates lr_0 to try.
        weight_decays: L2 penalties to try (every pair with ``lrs`` is trained).
        epochs: SGD epochs of every probe.
        batch_size: SGD batch size.
        seeds: seeds of the final probes (mean and std are over these).
        holdout: fraction of the training images held out to choose lr_0 and weight decay.
        max_dim: bound on the pooled dimension of each conv layer (10,000 in the paper).
        widen: times the grid may grow past an edge the held-out choice sits on (0: never).
    """

    lrs: tuple[float, ...] = (0.01, 0.1)
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    epochs: int = 30
    batch_size: int = 256
    seeds: tuple[int, ...] = (0, 1, 2)
    holdout: float = 0.2
    max_dim: int = 10_000
    widen: int = 0

    def __post_init__(self) -> None:
        if not self.lrs or not self.weight_decays or not self.seeds:
            raise ValueError("give at least one learning rate, one weight decay and one seed")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must lie in (0, 1), got {self.holdout}")
        if any(lr <= 0 for lr in self.lrs) or any(wd < 0 for wd in self.weight_decays):
            raise ValueError("learning rates must be positive and weight decays non-negative")
        if self.widen < 0:
            raise ValueError(f"widen must be 0 or more, got {self.widen}")

    @property
    def grid(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]


@dataclass(frozen=True)
class LayerResult:
    """Outcome of the probes of one layer (accuracies in percent)."""

    layer: str
    dim: int
    grid: tuple[int, int]  # (channels, pooled side); (dim, 1) for the final features
    heldout: dict[str, float]  # "lr=..,wd=.." -> held-out accuracy
    best_lr: float
    best_weight_decay: float
    test: tuple[float, ...]  # one per seed
    seconds: float
    edges: tuple[str, ...] = ()  # grid edges the choice still sits on, e.g. ("lowest lr",)
    widened: int = 0  # times the grid grew past an edge
    mean: float = field(init=False)
    std: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", float(np.mean(self.test)))
        object.__setattr__(self, "std", float(np.std(self.test)))


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into (fit, held-out), ``fraction`` of each class held out.

    Every class keeps at least one image on the fit side.
    """
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_held = min(round(len(members) * fraction), len(members) - 1)
        held.append(members[:n_held])
        fit.append(members[n_held:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def grid_edges(
    choice: tuple[float, float], lrs: Sequence[float], weight_decays: Sequence[float]
) -> tuple[str, ...]:
    """The edges of the grid that ``choice = (lr_0, wd)`` sits on.

    A weight decay of 0 is no edge: there is nothing below it to try.
    """
    lr, wd = choice
    edges = []
    if lr == min(lrs):
        edges.append("lowest lr")
    if lr == max(lrs):
        edges.append("highest lr")
    if wd == min(weight_decays) and wd > 0:
        edges.append("lowest wd")
    if wd == max(weight_decays):
        edges.append("highest wd")
    return tuple(edges)


def widen_grid(
    lrs: Sequence[float], weight_decays: Sequence[float], edges: Sequence[str]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The grid grown by a decade past each edge in ``edges`` (see :func:`grid_edges`)."""
    grow = {
        "lowest lr": (lrs, min(lrs) / 10),
        "highest lr": (lrs, max(lrs) * 10),
        "lowest wd": (weight_decays, min(weight_decays) / 10),
        "highest wd": (weight_decays, max(weight_decays) * 10),
    }
    new_lrs, new_wds = set(lrs), set(weight_decays)
    for edge in edges:
        values, value = grow[edge]
        (new_lrs if values is lrs else new_wds).add(value)
    return tuple(sorted(new_lrs)), tuple(sorted(new_wds))


def _in_memory(x: np.ndarray) -> torch.Tensor:
    # One sequential read of the memmap into memory (random row reads from disk are slow);
    # float16 halves the memory of a float32 copy.
    return torch.from_numpy(np.array(x))


def run_linear_probes(
    train: LayerFeatures,
    test: LayerFeatures,
    layers: Sequence[str],
    n_classes: int,
    protocol: LinearProtocol,
    *,
    log: bool = True,
) -> list[LayerResult]:
    """Probe every layer of ``layers``; see the module docstring for the protocol.

    Args:
        train: cached features and labels of the labelled training images.
        test: the same for the test images.
        layers: names present in both.
        n_classes: C.
        protocol: the settings.
        log: print one line per layer.

    Returns:
        One :class:`LayerResult` per layer, in order.
    """
    keep_train = train.valid & (train.labels >= 0)
    keep_test = test.valid & (test.labels >= 0)
    y_train = train.labels[keep_train]
    y_test = test.labels[keep_test]
    fit, held = stratified_holdout(y_train, protocol.holdout, seed=0)
    results = []
    for name in layers:
        start = time.perf_counter()
        x_train = _in_memory(train.layers[name])[torch.from_numpy(np.flatnonzero(keep_train))]
        x_test = _in_memory(test.layers[name])[torch.from_numpy(np.flatnonzero(keep_test))]
        heldout, (lr, wd), edges, widened = _choose(
            x_train[torch.from_numpy(fit)],
            y_train[fit],
            x_train[torch.from_numpy(held)],
            y_train[held],
            n_classes,
            protocol,
        )
        test_acc = []
        for seed in protocol.seeds:
            probe = train_linear_probes(
                x_train,
                y_train,
                n_classes,
                [(lr, wd)],
                SGDSettings(protocol.epochs, protocol.batch_size, seed=seed),
            )
            test_acc.append(float(probe.accuracy(x_test, y_test)[0] * 100))
        channels, side = train.grids.get(name, (x_train.shape[1], 1))
        result = LayerResult(
            layer=name,
            dim=int(x_train.shape[1]),
            grid=(channels, side),
            heldout={f"lr={a:g},wd={b:g}": v for (a, b), v in heldout.items()},
            best_lr=lr,
            best_weight_decay=wd,
            test=tuple(test_acc),
            seconds=time.perf_counter() - start,
            edges=edges,
            widened=widened,
        )
        if log:
            edge = f", at the grid's edge: {', '.join(edges)}" if edges else ""
            print(
                f"  {name}: dim {result.dim}, lr {lr:g}, wd {wd:g} (held-out "
                f"{heldout[lr, wd]:.1f}%{edge}), test {result.mean:.2f} ± {result.std:.2f}% "
                f"({result.seconds:.0f}s)",
                flush=True,
            )
        results.append(result)
    return results


def _choose(
    x_fit: torch.Tensor,
    y_fit: np.ndarray,
    x_held: torch.Tensor,
    y_held: np.ndarray,
    n_classes: int,
    protocol: LinearProtocol,
) -> tuple[dict[tuple[float, float], float], tuple[float, float], tuple[str, ...], int]:
    """Held-out accuracy (%) of every setting tried, the best one, its edges, times widened.

    Ties go to the setting tried first (the original grid in its order), as ``argmax`` does.
    """
    lrs, wds = protocol.lrs, protocol.weight_decays
    heldout: dict[tuple[float, float], float] = {}
    widened = 0
    while True:
        new = [(lr, wd) for lr in lrs for wd in wds if (lr, wd) not in heldout]
        search = train_linear_probes(
            x_fit,
            y_fit,
            n_classes,
            new,
            SGDSettings(protocol.epochs, protocol.batch_size, seed=protocol.seeds[0]),
        )
        accuracy = search.accuracy(x_held, y_held) * 100
        heldout.update({setting: float(a) for setting, a in zip(new, accuracy, strict=True)})
        best = max(heldout, key=lambda setting: heldout[setting])
        edges = grid_edges(best, lrs, wds)
        if not edges or widened == protocol.widen:
            return heldout, best, edges, widened
        lrs, wds = widen_grid(lrs, wds, edges)
        widened += 1
