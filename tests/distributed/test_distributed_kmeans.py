"""PCA, k-means and hierarchical k-means on 2 and 4 gloo ranks == the same calls in 1 process.

One spawn runs every case (a spawn costs seconds); the single-process references run in the
test process on the concatenated shards. Shards are uneven, one is tiny and, with 4 ranks, one
holds none. The functions are the same with and without a process group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deepercluster import distributed
from deepercluster.cluster import (
    HierarchicalResult,
    KMeansResult,
    fit_pca,
    hierarchical_kmeans,
    kmeans,
)
from deepercluster.cluster.level1_sample import sample_rows
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

N = 303
SHARDS = {2: [120, 183], 4: [0, 90, 13, 200]}
PCA_SAMPLE = 150
SAMPLE_SEED = 27  # the level-1 sample of 40 rows misses the 13-row shard of SHARDS[4]


def _datasets() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((12, 12)) * np.linspace(3.0, 0.2, 12)[:, None]
    pca = rng.standard_normal((N, 12)) @ mixing + 5.0
    centers = rng.standard_normal((8, 6)) * 4.0
    blobs = centers[rng.integers(0, 8, N)] + rng.standard_normal((N, 6))
    # 40 distinct values for k = 45: clusters empty at every E-step and every donor splits
    # one-sided (its members are duplicates), so the ceil(n / 2) fallback runs across ranks.
    duplicated = rng.standard_normal((40, 6))[rng.integers(0, 40, N)]
    # Two centroids far from every point: they empty on the first E-step; regular splits.
    far_init = np.concatenate([blobs[:8], np.full((2, 6), 1e3)])
    # A tiny far group that level 1 isolates: its super-cluster needs topping up.
    tiny = rng.standard_normal((N, 4))
    tiny[[5, 150, 290]] += 1000.0
    data = {"pca": pca, "blobs": blobs, "duplicated": duplicated, "tiny": tiny}
    return {**{name: x.astype(np.float32) for name, x in data.items()}, "far_init": far_init}


def _cases(data: dict[str, Any], run_kmeans: Any, run_hierarchical: Any) -> dict[str, Any]:
    """The same calls, single-process (on all rows) or distributed (on one shard)."""
    return {
        "kmeans": run_kmeans(data["blobs"], 10, niter=5, seed=3),
        "dup": run_kmeans(data["duplicated"], 45, niter=4, seed=1),
        "far": run_kmeans(
            data["blobs"], 10, niter=4, init=data["far_init"].astype(np.float32), seed=2
        ),
        "hier": run_hierarchical(data["tiny"], k=10, m=2, niter=5, seed=4),
        # k close to N on duplicates: many re-seeding rounds, and balancing among exact ties.
        "hier_dup": run_hierarchical(data["duplicated"], k=240, m=2, niter=3, seed=5),
        "flat": run_hierarchical(data["blobs"], k=6, m=1, niter=3, seed=6),
        # k-means++ seeds from a sample gathered on every rank: the same seeds as 1 process.
        "plus": run_kmeans(data["blobs"], 10, niter=3, seed=8, init_method="kmeans++"),
        "hier_plus": run_hierarchical(
            data["tiny"], k=10, m=2, niter=3, seed=9, init_method="kmeans++"
        ),
        # Level 1 on 40 of the 303 rows, drawn over the whole collection; with 4 ranks the
        # 13-row shard holds none of them (checked below).
        "hier_sample": run_hierarchical(
            data["blobs"], k=16, m=4, niter=4, seed=SAMPLE_SEED, level1_sample=40
        ),
    }


def _run_all(data: dict[str, Any], shard_sizes: list[int], rank: int, group: Any) -> dict[str, Any]:
    start = sum(shard_sizes[:rank])
    stop = start + shard_sizes[rank]
    shard = {k: v[start:stop] if k != "far_init" else v for k, v in data.items()}
    results = _cases(
        shard,
        lambda x, k, **kw: kmeans(x, k, group=group, **kw),
        lambda x, **kw: hierarchical_kmeans(x, group=group, **kw),
    )
    pca = fit_pca(shard["pca"], dim=6, group=group)
    sampled = fit_pca(shard["pca"], dim=4, power=0.0, sample=PCA_SAMPLE, seed=7, group=group)
    return {
        **results,
        "pca": pca.to_dict(),
        "pca_sample": sampled.to_dict(),
        "world": distributed.world_size(group),
    }


def _worker(rank: int, world: int, data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    # One spawn serves both layouts (a spawn costs ~15 s on shared cores): all 4 ranks, then
    # a sub-group of ranks 0 and 1, which also checks that offsets follow the group's ranks.
    pair = distributed.new_group([0, 1])
    out = {world: _run_all(data, SHARDS[world], rank, None)}
    if rank < 2:
        out[2] = _run_all(data, SHARDS[2], rank, pair)
    return out


@pytest.fixture(scope="module")
def spawned() -> dict[int, list[dict[str, Any]]]:
    """Per layout (2 or 4 ranks), every member rank's results."""
    results = run_ranks(_worker, 4, _datasets())
    return {world: [r[world] for r in results if world in r] for world in SHARDS}


def _same_kmeans(parts: list[KMeansResult], ref: KMeansResult) -> None:
    np.testing.assert_array_equal(np.concatenate([p.assignments for p in parts]), ref.assignments)
    for part in parts:
        # Every rank holds the very same centroids, close to the single-process ones.
        np.testing.assert_array_equal(part.centroids, parts[0].centroids)
        np.testing.assert_allclose(part.centroids, ref.centroids, rtol=1e-5, atol=1e-6)
        assert part.n_reseeded == ref.n_reseeded
        np.testing.assert_allclose(part.objective, ref.objective, rtol=1e-5)
        np.testing.assert_allclose(part.objectives, ref.objectives, rtol=1e-5)


def _same_hierarchical(parts: list[HierarchicalResult], ref: HierarchicalResult) -> None:
    for name in ("super_assignments", "sub_assignments"):
        merged = np.concatenate([getattr(p, name) for p in parts])
        np.testing.assert_array_equal(merged, getattr(ref, name))
    for part in parts:
        for name in ("super_centroids", "sub_centroids"):
            np.testing.assert_array_equal(getattr(part, name), getattr(parts[0], name))
            np.testing.assert_allclose(getattr(part, name), getattr(ref, name), atol=1e-5)
        assert (part.n_moved, part.n_reseeded) == (ref.n_moved, ref.n_reseeded)
        np.testing.assert_allclose(part.objective, ref.objective, rtol=1e-5)
        np.testing.assert_allclose(part.super_objective, ref.super_objective, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_equals_single_process(
    world: int, spawned: dict[int, list[dict[str, Any]]]
) -> None:
    data = _datasets()
    results = spawned[world]
    assert [r["world"] for r in results] == [world] * world
    expected = _cases(data, kmeans, hierarchical_kmeans)

    for name in ("kmeans", "dup", "far", "plus"):
        _same_kmeans([r[name] for r in results], expected[name])
    for name in ("hier", "hier_dup", "flat", "hier_sample", "hier_plus"):
        _same_hierarchical([r[name] for r in results], expected[name])
    # The cases exercise what they are meant to.
    assert expected["kmeans"].n_reseeded == 0
    assert expected["dup"].n_reseeded > 0 and expected["far"].n_reseeded > 0
    assert expected["hier"].n_moved > 0
    assert expected["hier_dup"].n_moved > 0 and expected["hier_dup"].n_reseeded > 0
    sampled = sample_rows(N, 40, 4, SAMPLE_SEED)
    lo = sum(SHARDS[4][:2])
    assert sampled is not None and not ((sampled >= lo) & (sampled < lo + SHARDS[4][2])).any()

    pcas = {
        "pca": fit_pca(data["pca"], dim=6),
        "pca_sample": fit_pca(data["pca"], dim=4, power=0.0, sample=PCA_SAMPLE, seed=7),
    }
    for name, ref in pcas.items():
        for result in results:
            for key, value in ref.to_dict().items():
                np.testing.assert_allclose(result[name][key], value, rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(result[name][key], results[0][name][key])
