"""`deepercluster plan` prices a curation of the run's images."""

from __future__ import annotations

from deepercluster.config import load_config
from deepercluster.engine.plan import Assumptions, make_plan


def test_plan_lists_the_cost_of_curating() -> None:
    cfg = load_config(
        overrides=["cluster.k=1000", "cluster.super_clusters=10", "cluster.pca_dim=128"]
    )
    plan = make_plan(cfg, n_images=1_000_000, world_size=1, assume=Assumptions(kmeans_gflops=100))
    stages = {s.stage: s for s in plan.stages}
    curate = stages["curate (afterwards)"]
    # the embeddings' store and the conv4 descriptors' (VGG-16's conv4 has 128 channels)
    assert curate.disk == 1_000_000 * (128 + 128) * 4
    # own cluster + 2 nearest others: 3 N² / k, twice (the neighbourhoods, then the pairs),
    # and N x k centroid products in each of the two spaces
    assert "~8e+09 products" in curate.note
    products = 8e9 * 2 * 128 / 100e9
    # the embeddings and the conv layer of the near-duplicate descriptors: two passes
    assert curate.seconds == 2 * stages["extraction"].seconds + products
    # a command of its own: not part of the run's clustering rounds
    round_stages = ("extraction", "PCA + whitening", "k-means level 1", "k-means level 2")
    assert plan.round_seconds == sum(stages[s].seconds for s in round_stages)


def test_a_run_without_clustering_has_nothing_to_curate() -> None:
    cfg = load_config(overrides=["cluster.k=1", "cluster.super_clusters=1"])
    stages = [s.stage for s in make_plan(cfg, n_images=10_000, world_size=1).stages]
    assert "curate (afterwards)" not in stages
