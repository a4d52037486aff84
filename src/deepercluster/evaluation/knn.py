"""Weighted k-nearest-neighbour classification on features (the quick sanity metric).

Cosine similarity between L2-normalised features; each of the k nearest training images votes
for its class with weight ``exp(s / T)``, as in Wu et al. (CVPR 2018, "instance
discrimination") and DINO's ``eval_knn.py``. No training, no hyper-parameter search beyond k
and T, so it is a fast, if rough, read of feature quality.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["knn_predict"]


@torch.no_grad()
def knn_predict(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    n_classes: int | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Predict the class of each test feature from its k most similar training features.

    Args:
        train: (N, D) training features (any scale: rows are L2-normalised here).
        train_labels: (N,) int labels in [0, n_classes).
        test: (M, D) features to classify.
        k: neighbours that vote (capped at N).
        temperature: T in the vote weight ``exp(cosine / T)``; small T trusts the nearest.
        n_classes: C (default: max label + 1).
        batch_size: test rows per similarity block (memory: batch_size x N floats).

    Returns:
        (M,) int64 predicted classes.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    train_t = F.normalize(torch.as_tensor(np.asarray(train), dtype=torch.float32), dim=1)
    test_t = F.normalize(torch.as_tensor(np.asarray(test), dtype=torch.float32), dim=1)
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64)
    if train_t.shape[0] == 0 or labels.shape != (train_t.shape[0],):
        raise ValueError(
            "knn needs a non-empty training set with one label per row, got "
            f"{tuple(train_t.shape)} features and {tuple(labels.shape)} labels"
        )
    if test_t.shape[1] != train_t.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {train_t.shape[1]} vs {test_t.shape[1]}"
        )
    c = int(labels.max()) + 1 if n_classes is None else n_classes
    k = min(k, train_t.shape[0])
    out = []
    for start in range(0, test_t.shape[0], batch_size):
        sims = test_t[start : start + batch_size] @ train_t.T  # (b, N)
        top_sims, top_idx = sims.topk(k, dim=1)  # (b, k)
        votes = torch.zeros(sims.shape[0], c)
        votes.scatter_add_(1, labels[top_idx], (top_sims / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
