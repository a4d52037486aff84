"""Level 2 in per-super-cluster clustering groups equals the single-process hierarchy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deepercluster import distributed
from deepercluster.cluster import hierarchical_kmeans, hierarchical_kmeans_grouped
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

SHARDS = [37, 0, 150, 93]  # uneven, one rank empty


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(12, 6)) * 4
    x = centers[rng.integers(0, 12, sum(SHARDS))] + rng.normal(size=(sum(SHARDS), 6))
    return x.astype(np.float32)


def _grouped(rank: int, world: int, m: int, k: int, sample: int) -> dict[str, Any]:
    x = _data()
    lo = sum(SHARDS[:rank])
    groups = [list(range(s * world // m, (s + 1) * world // m)) for s in range(m)]
    process_groups = [distributed.new_group(g) for g in groups]
    result = hierarchical_kmeans_grouped(
        x[lo : lo + SHARDS[rank]], k=k, m=m, groups=groups, process_groups=process_groups,
        niter=5, seed=3, level1_sample=sample,
    )  # fmt: skip
    return {
        "super": result.super_assignments,
        "sub": result.sub_assignments,
        "super_centroids": result.super_centroids,
        "sub_centroids": result.sub_centroids,
        "objective": result.objective,
        "moved": result.n_moved,
    }


# (4, 20, 60): level 1 on 60 of the 280 rows, none of them on the empty rank.
@pytest.mark.parametrize(("m", "k", "sample"), [(2, 12, 0), (4, 20, 0), (4, 20, 60)])
def test_grouped_level2_equals_single_process(m: int, k: int, sample: int) -> None:
    results = run_ranks(_grouped, 4, m, k, sample)
    ref = hierarchical_kmeans(_data(), k=k, m=m, niter=5, seed=3, level1_sample=sample)
    np.testing.assert_array_equal(
        np.concatenate([r["super"] for r in results]), ref.super_assignments
    )
    np.testing.assert_array_equal(np.concatenate([r["sub"] for r in results]), ref.sub_assignments)
    for r in results:
        np.testing.assert_allclose(r["super_centroids"], ref.super_centroids, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r["sub_centroids"], ref.sub_centroids, rtol=1e-5, atol=1e-5)
        assert r["objective"] == pytest.approx(ref.objective, rel=1e-5)
        assert r["moved"] == ref.n_moved
