"""Linear probes (SGD logistic regression, Bottou decay) and weighted kNN on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepercluster.evaluation import SGDSettings, bottou_lr, knn_predict, train_linear_probes


def _separable(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around fixed, well separated means; ``seed`` draws the samples."""
    means = np.random.default_rng(123).normal(0, 1, (c, d)) * 4
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return (means[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_bottou_decay() -> None:
    lr = bottou_lr(torch.tensor([0.1, 0.1]), torch.tensor([0.0, 1e-2]), 3000)
    assert lr.tolist() == pytest.approx([0.1, 0.1 / np.sqrt(1 + 0.1 * 1e-2 * 3000)])


def test_linear_probe_separates_separable_features() -> None:
    x, y = _separable(600, 32, 5, seed=0)
    x_test, y_test = _separable(300, 32, 5, seed=1)
    probe = train_linear_probes(
        x, y, 5, [(0.1, 1e-4), (1e-6, 1e-4)], SGDSettings(epochs=10, batch_size=64)
    )
    acc = probe.accuracy(x_test, y_test)
    assert acc[0] >= 0.99  # the usable setting reaches ~100%
    assert acc[1] < 0.6  # a learning rate of 1e-6 barely moves: settings really are separate


def test_grid_settings_do_not_interact() -> None:
    # Batched settings share rows and order but nothing else: changing setting 0 leaves the
    # weights of setting 1 exactly as they were (same shapes, so the same random init).
    x, y = _separable(200, 8, 3, seed=1)
    sgd = SGDSettings(epochs=3, batch_size=32, seed=4)
    first = train_linear_probes(x, y, 3, [(0.05, 1e-3), (0.2, 1e-2)], sgd)
    second = train_linear_probes(x, y, 3, [(0.5, 1e-1), (0.2, 1e-2)], sgd)
    torch.testing.assert_close(first.weight[:, 1], second.weight[:, 1])
    assert not torch.allclose(first.weight[:, 0], second.weight[:, 0])


def test_probe_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        train_linear_probes(
            np.zeros((4, 2), np.float32), np.array([0, 1, 2, 3]), 3, [(0.1, 0.0)], SGDSettings()
        )


def test_knn_on_synthetic_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16))
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(0, 0.2, (400, 16))
    pred = knn_predict(x[:300], y[:300], x[300:], k=10, temperature=0.1)
    assert (pred == y[300:]).mean() == 1.0
    # cosine: scaling a test row does not change its prediction
    assert knn_predict(x[:300], y[:300], 7 * x[300:], k=10).tolist() == pred.tolist()


def test_knn_weights_votes_by_similarity() -> None:
    # One very close neighbour of class 1 against two far ones of class 0.
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([1, 0, 0])
    test = np.array([[1.0, 0.05]])
    assert knn_predict(train, labels, test, k=3, temperature=0.1).tolist() == [1]
    assert knn_predict(train, labels, test, k=3, temperature=100.0).tolist() == [0]  # ~equal votes
