"""Synthetic features for the clustering tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _make_blobs(
    n_blobs: int,
    per_blob: int,
    dim: int,
    *,
    spread: float = 0.01,
    scale: float = 10.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_blobs, dim)) * scale
    ids = np.repeat(np.arange(n_blobs), per_blob)
    x = centers[ids] + rng.standard_normal((ids.size, dim)) * spread
    return x.astype(np.float32), ids


@pytest.fixture
def make_blobs() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Factory of well-separated Gaussian blobs: ``(n_blobs * per_blob, dim)`` float32 points
    and their (N,) blob ids."""
    return _make_blobs
