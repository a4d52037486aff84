"""Embedding images in a run's clustering space: nearest clusters, assignments, cache."""

from __future__ import annotations

import numpy as np
import pytest
from tests.unit.inspect.conftest import TinyRun

from deepercluster.cluster import HierarchicalResult
from deepercluster.data import open_collection
from deepercluster.engine.run_folder import open_run
from deepercluster.inspect import embed as embed_module
from deepercluster.inspect.embed import (
    embed_collection,
    embed_new_images,
    nearest_clusters,
    run_embedding,
)


def test_nearest_clusters_follow_the_hierarchy() -> None:
    rng = np.random.default_rng(0)
    m, per, d = 3, 4, 5
    supers = rng.normal(size=(m, d)).astype(np.float32) * 10
    subs = (supers[:, None, :] + rng.normal(size=(m, per, d))).astype(np.float32)
    x = subs.reshape(-1, d)[rng.integers(0, m * per, 50)] + 0.1 * rng.normal(size=(50, d))
    x = x.astype(np.float32)
    result = HierarchicalResult(np.zeros(0, np.int64), np.zeros(0, np.int64), supers, subs,
                                0.0, 0.0, 0, 0)  # fmt: skip
    s, sub, dist = nearest_clusters(x, result)
    want_s = np.argmin(((x[:, None] - supers[None]) ** 2).sum(-1), 1)
    want_sub = np.array(
        [np.argmin(((subs[a] - xi) ** 2).sum(-1)) for a, xi in zip(want_s, x, strict=True)]
    )
    np.testing.assert_array_equal(s, want_s)
    np.testing.assert_array_equal(sub, want_sub)
    np.testing.assert_allclose(dist, np.linalg.norm(x - subs[want_s, want_sub], axis=1), rtol=1e-4)


def test_embedding_the_training_images_reproduces_the_assignments(tiny_run: TinyRun) -> None:
    run = open_run(tiny_run.path)
    c = run.clustering
    assert c.result is not None and c.pca is not None
    assert c.result.n_moved == 0  # no balancing moves: nearest == assigned is exact
    emb = embed_collection(
        run.backbone(), open_collection(tiny_run.images), c.pca, c.result,
        resolution=32, batch_size=16, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(emb.valid, c.valid)
    np.testing.assert_array_equal(emb.labels, c.labels)
    np.testing.assert_array_equal(emb.super_clusters[c.valid], c.super_clusters[c.valid])
    np.testing.assert_array_equal(emb.sub_clusters[c.valid], c.sub_clusters[c.valid])
    assert emb.labels[tiny_run.bad_id] == -1 and np.isnan(emb.distances[tiny_run.bad_id])
    assert np.allclose(np.linalg.norm(emb.features[c.valid], axis=1), 1.0, atol=1e-5)


def test_run_embedding_is_cached(tiny_run: TinyRun, tmp_path, monkeypatch) -> None:
    run = open_run(tiny_run.path)
    collection = run.collection()
    first = run_embedding(run, collection, cache_dir=tmp_path, progress=False)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were extracted again despite the cache")

    monkeypatch.setattr(embed_module, "embed_collection", fail)
    second = run_embedding(run, collection, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.distances, second.distances)
    assert np.isfinite(first.distances[run.clustering.valid]).all()


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_embed_new_images_writes_features_and_clusters(
    tiny_run: TinyRun, tmp_path, suffix: str
) -> None:
    files = embed_new_images(tiny_run.path, str(tiny_run.images), tmp_path / f"emb{suffix}",
                             progress=False)  # fmt: skip
    labels = tiny_run.clustering.labels
    if suffix == ".npy":
        features = np.load(files[0])
        rows = files[1].read_text().splitlines()
        assert rows[0] == "id,path,readable,super_cluster,sub_cluster,cluster,distance"
        clusters = np.array([int(r.split(",")[5]) for r in rows[1:]])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(files[0]).to_pydict()
        features = np.array(table["features"], dtype=np.float32)
        clusters = np.array(table["cluster"])
    assert features.shape == (len(labels), 8)
    np.testing.assert_array_equal(clusters, labels)
