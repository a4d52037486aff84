"""How the heads start after a re-clustering (engine/head_start.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deepercluster.cluster import Blocks
from deepercluster.config import ClusterConfig
from deepercluster.engine.clustering import Clustering
from deepercluster.engine.epoch import seeded_generator
from deepercluster.engine.head_start import (
    discriminant,
    head_inputs,
    match_super_clusters,
    start_heads,
)
from deepercluster.models import HierarchicalHeads

D, M, N_SUB = 16, 2, 3


def _blobs(n_per: int = 60, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Pre-activation features of M x N_SUB separated classes; most coordinates negative,
    as a trained backbone's are, so the heads' ReLU discards much of them."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(M * N_SUB, D, generator=g) * 2.0 - 1.0
    labels = np.repeat(np.arange(M * N_SUB), n_per)
    x = centres[labels] + 0.5 * torch.randn(len(labels), D, generator=g)
    return x, labels // N_SUB, labels % N_SUB


def _clustering(x: torch.Tensor, sup: np.ndarray, sub: np.ndarray, **inputs: object) -> Clustering:
    n = len(sup)
    return Clustering(
        labels=sup * N_SUB + sub,
        super_clusters=sup,
        sub_clusters=sub,
        valid=np.ones(n, dtype=bool),
        result=None,
        pca=None,
        metrics={},
        head_inputs=head_inputs(Blocks(x), sup, sub, m=M, n_sub=N_SUB),
    )


def test_head_inputs_match_a_direct_computation_whatever_the_blocks() -> None:
    x, sup, sub = _blobs()
    whole = head_inputs(Blocks(x), sup, sub, m=M, n_sub=N_SUB)
    blocked = head_inputs(Blocks(x, block_rows=7), sup, sub, m=M, n_sub=N_SUB)
    r = x.relu().double()
    assert torch.allclose(whole.mean, r.mean(0))
    assert torch.allclose(whole.covariance, torch.cov(r.T))
    for s in range(M):
        assert torch.allclose(whole.super_means[s], r[torch.from_numpy(sup == s)].mean(0))
        for j in range(N_SUB):
            rows = torch.from_numpy((sup == s) & (sub == j))
            assert torch.allclose(whole.sub_means[s, j], r[rows].mean(0))
    for a, b in zip(dataclasses.astuple(whole), dataclasses.astuple(blocked), strict=True):
        assert torch.allclose(a, b)


def test_discriminant_predicts_the_clusters_on_what_the_heads_read() -> None:
    x, sup, sub = _blobs()
    inputs = head_inputs(Blocks(x), sup, sub, m=M, n_sub=N_SUB)
    weight, bias = discriminant(inputs.super_means, inputs, temperature=1.0)
    logits = x.relu() @ weight.T + bias
    assert (logits.argmax(1).numpy() == sup).mean() > 0.95
    # Scaled: the logits vary by about 1 / T over the images, whatever the feature scale.
    assert 0.5 < float(logits.std(0).mean()) < 2.0
    scaled = head_inputs(Blocks(10 * x), sup, sub, m=M, n_sub=N_SUB)
    w10, b10 = discriminant(scaled.super_means, scaled, temperature=0.5)
    assert torch.allclose((10 * x).relu() @ w10.T + b10, 2 * logits, rtol=1e-3, atol=1e-3)


def test_centroid_heads_agree_with_the_targets_where_random_heads_do_not() -> None:
    x, sup, sub = _blobs()
    clustering = _clustering(x, sup, sub)
    heads = HierarchicalHeads(D, 4 * M, N_SUB)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1, momentum=0.9)
    cluster = ClusterConfig(k=M * N_SUB, super_clusters=M, head_init="centroids")
    start_heads(
        heads,
        optimizer,
        seeded_generator(0, 3),
        cluster=cluster,
        clustering=clustering,
        previous=None,
        trained=True,
    )
    upright = torch.from_numpy(sup)  # rotation 0: super-class s
    sub_hits = heads.sub_logits(x, upright).argmax(1).numpy() == sub
    assert sub_hits.mean() > 0.9
    super_pred = heads.super_logits(x).argmax(1).numpy()
    assert (super_pred % M == sup).mean() > 0.9
    # Every rotation's sub-head of super-cluster s starts alike.
    for r in range(1, 4):
        w0, _ = heads.sub_head(0)
        wr, _ = heads.sub_head(r * M)
        assert torch.equal(w0, wr)
    # The paper's random start, from the same generator, agrees by chance only.
    random_heads = HierarchicalHeads(D, 4 * M, N_SUB)
    start_heads(
        random_heads,
        optimizer,
        seeded_generator(0, 3),
        cluster=dataclasses.replace(cluster, head_init="random"),
        clustering=clustering,
        previous=None,
        trained=True,
    )
    assert (random_heads.sub_logits(x, upright).argmax(1).numpy() == sub).mean() < 0.6


def test_random_start_is_the_papers_reset_and_forgets_the_momentum() -> None:
    x, sup, sub = _blobs()
    clustering = _clustering(x, sup, sub)
    heads = HierarchicalHeads(D, 4 * M, N_SUB)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1, momentum=0.9)
    heads(x, torch.zeros(len(x), dtype=torch.int64)).__getitem__(0).sum().backward()
    optimizer.step()
    assert optimizer.state
    start_heads(
        heads,
        optimizer,
        seeded_generator(1, 2),
        cluster=ClusterConfig(k=M * N_SUB, super_clusters=M),
        clustering=clustering,
        previous=None,
        trained=True,
    )
    expected = HierarchicalHeads(D, 4 * M, N_SUB)
    expected.reset_parameters(seeded_generator(1, 2))
    for a, b in zip(heads.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(p in optimizer.state for p in heads.parameters())


def test_centroid_start_waits_for_a_trained_network() -> None:
    x, sup, sub = _blobs()
    heads = HierarchicalHeads(D, 4 * M, N_SUB)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1)
    start_heads(
        heads,
        optimizer,
        seeded_generator(0, 0),
        cluster=ClusterConfig(k=M * N_SUB, super_clusters=M, head_init="centroids"),
        clustering=_clustering(x, sup, sub),
        previous=None,
        trained=False,
    )
    expected = HierarchicalHeads(D, 4 * M, N_SUB)
    expected.reset_parameters(seeded_generator(0, 0))
    assert torch.equal(heads.sub_weight, expected.sub_weight)


def test_rotation_carry_keeps_each_rotations_mean_row() -> None:
    x, sup, sub = _blobs()
    heads = HierarchicalHeads(D, 4 * M, N_SUB)
    with torch.no_grad():
        heads.super_head.weight.copy_(torch.randn(4 * M, D))
        heads.super_head.bias.copy_(torch.randn(4 * M))
    old_w = heads.super_head.weight.detach().clone()
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1)
    cluster = ClusterConfig(k=M * N_SUB, super_clusters=M, super_carry="rotation")
    start_heads(
        heads,
        optimizer,
        seeded_generator(0, 1),
        cluster=cluster,
        clustering=_clustering(x, sup, sub),
        previous=None,
        trained=True,
    )
    fresh = HierarchicalHeads(D, 4 * M, N_SUB)
    fresh.reset_parameters(seeded_generator(0, 1))
    carried = heads.super_head.weight.detach() - fresh.super_head.weight.detach()
    for r in range(4):
        for s in range(M):
            assert torch.allclose(carried[r * M + s], old_w[r * M : (r + 1) * M].mean(0), atol=1e-6)


def test_matched_carry_follows_the_super_clusters_across_a_relabelling() -> None:
    x, sup, sub = _blobs()
    previous = _clustering(x, sup, sub)
    swapped = _clustering(x, 1 - sup, sub)  # the same clusters, ids swapped
    assert match_super_clusters(sup, 1 - sup, M).tolist() == [1, 0]
    heads = HierarchicalHeads(D, 4 * M, N_SUB)
    with torch.no_grad():
        heads.super_head.weight.copy_(torch.randn(4 * M, D))
    old_w = heads.super_head.weight.detach().clone()
    start_heads(
        heads,
        torch.optim.SGD(heads.parameters(), lr=0.1),
        seeded_generator(0, 1),
        cluster=ClusterConfig(k=M * N_SUB, super_clusters=M, super_carry="matched"),
        clustering=swapped,
        previous=previous,
        trained=True,
    )
    new_w = heads.super_head.weight.detach()
    for r in range(4):
        assert torch.equal(new_w[r * M + 0], old_w[r * M + 1])
        assert torch.equal(new_w[r * M + 1], old_w[r * M + 0])


def test_one_super_cluster_keeps_the_rotation_head() -> None:
    x, sup, sub = _blobs()
    sup1 = np.zeros_like(sup)
    clustering = Clustering(
        labels=sub,
        super_clusters=sup1,
        sub_clusters=sub,
        valid=np.ones(len(sub), dtype=bool),
        result=None,
        pca=None,
        metrics={},
        head_inputs=head_inputs(Blocks(x), sup1, sub, m=1, n_sub=N_SUB),
    )
    heads = HierarchicalHeads(D, 4, N_SUB)
    kept = heads.super_head.weight.detach().clone()
    start_heads(
        heads,
        torch.optim.SGD(heads.parameters(), lr=0.1),
        seeded_generator(0, 1),
        cluster=ClusterConfig(
            k=N_SUB, super_clusters=1, head_init="centroids", super_carry="rotation"
        ),
        clustering=clustering,
        previous=None,
        trained=True,
    )
    assert torch.equal(heads.super_head.weight, kept)
    assert (
        heads.sub_logits(x, torch.zeros(len(x), dtype=torch.int64)).argmax(1).numpy() == sub
    ).mean() > 0.9


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("head_init", "kmeans", "cluster.head_init"),
        ("head_temperature", 0.0, "cluster.head_temperature"),
        ("super_carry", "all", "cluster.super_carry"),
    ],
)
def test_bad_head_settings_name_the_setting(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**{key: value})  # type: ignore[arg-type]
