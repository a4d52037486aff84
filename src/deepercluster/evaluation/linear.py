"""Multinomial logistic regression on frozen features, trained by SGD (the paper's probes).

DeeperCluster (Caron et al., ICCV 2019, section 4.2 and docs/ALGORITHM.md section 7) trains
linear classifiers on frozen conv features with SGD and Bottou's learning-rate decay
``lr_t = lr_0 / sqrt(1 + lr_0 * wd * t)`` (t counts SGD steps). Hyper-parameters are chosen
on held-out data, so this module trains *several* settings at once: the G (lr_0, wd) pairs
share one (D, G * C) weight matrix, a batch's logits for all of them come from one matrix
product, and each setting gets its own learning rate and decay.

Features are standardised with the training set's mean and standard deviation first: the
activations of conv1 and conv5 differ in scale by orders of magnitude, and standardising lets
one learning-rate grid serve every layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["LinearProbe", "SGDSettings", "bottou_lr", "train_linear_probes"]


@dataclass(frozen=True)
class SGDSettings:
    """How the probes are trained (all settings share these).

    Attributes:
        epochs: passes over the training features.
        batch_size: rows per SGD step.
        momentum: SGD momentum.
        seed: seeds the weight init and the order of the rows.
    """

    epochs: int = 30
    batch_size: int = 256
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"probe epochs and batch size must be positive, got {self.epochs} and "
                f"{self.batch_size}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"probe momentum must lie in [0, 1), got {self.momentum}")


def bottou_lr(lr0: Tensor, weight_decay: Tensor, step: int) -> Tensor:
    """The paper's decay ``lr_0 / sqrt(1 + lr_0 * wd * t)``, elementwise over settings."""
    out: Tensor = lr0 / torch.sqrt(1.0 + lr0 * weight_decay * step)
    return out


@dataclass(frozen=True)
class LinearProbe:
    """G trained linear classifiers over the same standardised features.

    Attributes:
        mean: (D,) training-feature mean.
        std: (D,) training-feature standard deviation (floored, so constant features are fine).
        weight: (D, G, C) weights.
        bias: (G, C) biases.
        settings: the G ``(lr_0, weight_decay)`` pairs, in the order of the second axis.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    settings: tuple[tuple[float, float], ...]

    @torch.no_grad()
    def predict(self, x: np.ndarray | Tensor, *, batch_size: int = 4096) -> np.ndarray:
        """Class predictions of every setting.

        Args:
            x: (N, D) features (any float dtype; processed in batches as float32).

        Returns:
            (N, G) int64 predicted classes.
        """
        d, g, c = self.weight.shape
        w = self.weight.reshape(d, g * c)
        out = []
        for start in range(0, len(x), batch_size):
            xb = (_rows(x, start, batch_size) - self.mean) / self.std
            logits = (xb @ w).view(-1, g, c) + self.bias
            out.append(logits.argmax(-1))
        return torch.cat(out).numpy() if out else np.zeros((0, g), dtype=np.int64)

    def accuracy(self, x: np.ndarray | Tensor, y: np.ndarray) -> np.ndarray:
        """(G,) top-1 accuracy of every setting on ``(x, y)``, in [0, 1]."""
        correct: np.ndarray = (self.predict(x) == np.asarray(y)[:, None]).mean(0)
        return correct


def _rows(x: np.ndarray | Tensor, start: int, size: int) -> Tensor:
    part = x[start : start + size]
    t = part if isinstance(part, Tensor) else torch.from_numpy(np.ascontiguousarray(part))
    return t.float()


@torch.no_grad()
def _moments(x: np.ndarray | Tensor, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per column, in float64 and in chunks (x may be a memmap)."""
    d = x.shape[1]
    total = torch.zeros(d, dtype=torch.float64)
    total_sq = torch.zeros(d, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        xb = _rows(x, start, batch_size).double()
        total += xb.sum(0)
        total_sq += (xb * xb).sum(0)
    n = max(len(x), 1)
    mean = total / n
    var = (total_sq / n - mean * mean).clamp_min(0.0)
    # Floor: a dead ReLU channel has std 0; dividing by 1e-6 instead would blow it up.
    std = var.sqrt().clamp_min(1e-3 * float(var.sqrt().max().clamp_min(1e-12)))
    return mean.float(), std.float()


def train_linear_probes(
    x: np.ndarray | Tensor,
    y: np.ndarray,
    n_classes: int,
    settings: Sequence[tuple[float, float]],
    sgd: SGDSettings,
) -> LinearProbe:
    """Train one multinomial logistic regression per ``(lr_0, weight_decay)`` setting.

    All settings see the same rows in the same order; each has its own learning rate, decayed
    as ``lr_0 / sqrt(1 + lr_0 * wd * t)``, and its own L2 penalty (on the weights, not the
    biases). Momentum SGD on the mean cross-entropy of each batch.

    Args:
        x: (N, D) features, e.g. a float16 memmap of cached activations; a standardised
            float32 copy is made (N x D x 4 bytes).
        y: (N,) int labels in [0, n_classes).
        n_classes: C.
        settings: G pairs ``(lr_0, weight_decay)``.
        sgd: epochs, batch size, momentum and seed.

    Returns:
        The trained :class:`LinearProbe` (weights (D, G, C)).
    """
    y_all = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    n, d = x.shape
    if y_all.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},) to match the features, got {tuple(y_all.shape)}"
        )
    if n == 0:
        raise ValueError("cannot train a linear probe on zero images; give it a labelled set")
    if not settings:
        raise ValueError("give at least one (lr, weight_decay) setting to train")
    if int(y_all.min()) < 0 or int(y_all.max()) >= n_classes:
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got [{int(y_all.min())}, {int(y_all.max())}]"
        )
    g, c = len(settings), n_classes
    lr0 = torch.tensor([s[0] for s in settings], dtype=torch.float32).repeat_interleave(c)
    wd = torch.tensor([s[1] for s in settings], dtype=torch.float32).repeat_interleave(c)
    mean, std = _moments(x)
    # One standardised float32 copy, made once, rather than converting every batch at every step.
    x_std = torch.empty(n, d, dtype=torch.float32)
    for start in range(0, n, 4096):
        x_std[start : start + 4096] = (_rows(x, start, 4096) - mean) / std
    gen = torch.Generator().manual_seed(sgd.seed)
    # Small random init (not zeros) so that seeds give different probes, as in the paper's
    # repeated runs; 1/sqrt(D) keeps the initial logits O(1) on standardised features.
    weight = torch.randn(d, g * c, generator=gen) * (0.01 / math.sqrt(max(d, 1)))
    bias = torch.zeros(g * c)
    v_weight = torch.zeros_like(weight)
    v_bias = torch.zeros_like(bias)
    step = 0
    for _ in range(sgd.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, sgd.batch_size):
            rows = order[start : start + sgd.batch_size]
            xb = x_std[rows]
            yb = y_all[rows]
            logits = (xb @ weight + bias).view(-1, g, c)
            # d(mean CE)/d(logits) = (softmax - onehot) / B, per setting.
            grad_logits = torch.softmax(logits, dim=-1)
            grad_logits[torch.arange(len(yb)), :, yb] -= 1.0
            grad_logits = grad_logits.view(-1, g * c) / len(yb)
            grad_w = xb.T @ grad_logits + wd * weight
            grad_b = grad_logits.sum(0)
            lr = bottou_lr(lr0, wd, step)
            v_weight.mul_(sgd.momentum).add_(grad_w)
            v_bias.mul_(sgd.momentum).add_(grad_b)
            weight -= lr * v_weight
            bias -= lr * v_bias
            step += 1
    return LinearProbe(
        mean=mean,
        std=std,
        weight=weight.view(d, g, c),
        bias=bias.view(g, c),
        settings=tuple((float(a), float(b)) for a, b in settings),
    )
