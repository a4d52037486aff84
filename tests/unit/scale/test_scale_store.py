"""The on-disk feature store, and the PCA / k-means streaming it (the in-memory ones' results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepercluster.cluster import Blocks, fit_pca, hierarchical_kmeans, kmeans, row_blocks
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import ClusterConfig, parse_size
from deepercluster.engine.outofcore import check_memory, clustering_device


def _filled(folder: Path, x: np.ndarray, chunk: int, dtype: str = "float32") -> FeatureStore:
    store = FeatureStore(folder, rows=len(x), dim=x.shape[1], dtype=dtype, chunk_rows=chunk)
    for c in range(store.n_chunks):
        start, stop = store.chunk_range(c)
        store.write_chunk(c, x[start:stop])
    return store


def _data(n: int = 600, dim: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, dim)) * 4
    return (centers[rng.integers(0, 6, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_store_resumes_after_its_last_finished_chunk(tmp_path: Path) -> None:
    x = _data(50, 4)
    store = FeatureStore(tmp_path, rows=50, dim=4, chunk_rows=16)
    valid = np.ones(16, bool)
    valid[3] = False
    store.write_chunk(0, x[:16], valid, [(3, "truncated file")])
    store.write_chunk(1, x[16:32])
    with pytest.raises(ValueError, match="out of order"):
        store.write_chunk(3, x[48:])
    again = FeatureStore(tmp_path, rows=50, dim=4, chunk_rows=16)  # a new process
    assert (again.chunks_done, again.n_chunks, again.complete) == (2, 4, False)
    assert again.skipped == [(3, "truncated file")]
    again.write_chunk(2, x[32:48])
    again.write_chunk(3, x[48:])
    assert again.complete and np.array_equal(again.to_array(), x)
    assert np.flatnonzero(~again.valid()).tolist() == [3]
    assert np.array_equal(again.take(np.array([49, 0, 17])), x[[49, 0, 17]])
    # another shape or dtype starts afresh
    assert FeatureStore(tmp_path, rows=50, dim=4, dtype="float16", chunk_rows=16).chunks_done == 0


def test_float16_store_halves_the_disk_and_reads_float32(tmp_path: Path) -> None:
    x = _data(40, 8)
    store = _filled(tmp_path, x, 16, "float16")
    assert store.nbytes == 40 * 8 * 2
    out = store.read(0, 40)
    assert out.dtype == np.float32 and np.allclose(out, x, rtol=1e-3, atol=1e-2)


def test_chunked_pca_equals_in_memory_pca(tmp_path: Path) -> None:
    x = _data()
    store = _filled(tmp_path, x, 128)
    rows = np.flatnonzero(np.arange(len(x)) % 7 != 0)  # some unreadable images
    for sample in (None, 200):
        a = fit_pca(x[rows], dim=5, sample=sample, seed=3)
        b = fit_pca(Blocks(store, members=rows, block_rows=50), dim=5, sample=sample, seed=3)
        assert np.allclose(a.projection, b.projection, atol=1e-5)
        assert np.allclose(a.mean, b.mean, atol=1e-6)


@pytest.mark.parametrize("k", [6, 590])  # k close to N: empty clusters are re-seeded
def test_chunked_kmeans_equals_in_memory_kmeans(tmp_path: Path, k: int) -> None:
    x = _data()
    x[:40] = x[0]  # duplicated points make clusters empty
    store = _filled(tmp_path, x, 128)
    a = kmeans(x, k, niter=4, seed=1)
    b = kmeans(Blocks(store, block_rows=100), k, niter=4, seed=1)
    assert np.array_equal(a.assignments, b.assignments)
    assert a.n_reseeded == b.n_reseeded and (k < 100 or a.n_reseeded > 0)
    assert np.allclose(a.centroids, b.centroids, atol=1e-5)
    assert a.objective == pytest.approx(b.objective, rel=1e-5)


class _CountingSource:
    """A store that counts the rows read from it."""

    def __init__(self, store: FeatureStore) -> None:
        self.store, self.rows, self.dim, self.read_rows = store, store.rows, store.dim, 0

    def read(self, start: int, stop: int) -> np.ndarray:
        self.read_rows += stop - start
        return self.store.read(start, stop)

    def take(self, rows: np.ndarray) -> np.ndarray:
        self.read_rows += len(rows)
        return self.store.take(rows)


def test_streamed_kmeans_reads_the_rows_once_per_iteration(tmp_path: Path) -> None:
    x = _data()
    source = _CountingSource(_filled(tmp_path, x, 128))
    result = kmeans(Blocks(source, block_rows=100), 6, niter=4, seed=1)
    assert result.n_reseeded == 0
    # k initial rows, then one pass per iteration (E-step and sums together) and the final
    # E-step: not two passes per iteration.
    assert source.read_rows == 6 + (4 + 1) * len(x)
    np.testing.assert_array_equal(result.assignments, kmeans(x, 6, niter=4, seed=1).assignments)


def test_rows_that_fit_in_one_block_are_clustered_in_memory(tmp_path: Path) -> None:
    x = _data()
    store = _filled(tmp_path, x, 128)
    members = np.flatnonzero(np.arange(len(x)) % 3 == 1)  # 200 rows spread over every chunk
    for rows in (None, members):
        a = kmeans(x if rows is None else x[rows], 12, niter=4, seed=5)
        source = _CountingSource(store)
        b = kmeans(Blocks(source, members=rows, block_rows=len(x)), 12, niter=4, seed=5)
        assert source.read_rows <= len(x)  # one sweep, not one per E-step and M-step
        # Read once and run the in-memory loop: the very same result, not one within rounding.
        np.testing.assert_array_equal(a.centroids, b.centroids)
        np.testing.assert_array_equal(a.assignments, b.assignments)
        assert (a.objective, a.objectives) == (b.objective, b.objectives)


@pytest.mark.parametrize("level1_sample", [0, 150])
def test_streamed_hierarchy_equals_in_memory_hierarchy(tmp_path: Path, level1_sample: int) -> None:
    x = _data()
    store = _filled(tmp_path, x, 128)
    a = hierarchical_kmeans(x, k=24, m=3, niter=5, seed=2, level1_sample=level1_sample)
    b = hierarchical_kmeans(
        Blocks(store, block_rows=100), k=24, m=3, niter=5, seed=2, level1_sample=level1_sample
    )
    assert np.array_equal(a.labels, b.labels) and a.n_moved == b.n_moved
    assert a.objective == pytest.approx(b.objective, rel=1e-5)
    assert a.super_objective == pytest.approx(b.super_objective, rel=1e-5)


def test_memory_limit_refuses_a_round_that_cannot_fit() -> None:
    assert parse_size("20GB") == 20 * 10**9 and parse_size("1.5GiB") == 3 * 2**29
    with pytest.raises(ValueError, match="must be a size"):
        ClusterConfig(memory_limit="lots")
    memory = ClusterConfig(k=8, memory_limit="1GB")
    check_memory(memory, rows=100_000, dim=512)  # 0.62 GB
    with pytest.raises(ValueError, match=r"cluster\.feature_store=disk"):
        check_memory(memory, rows=1_000_000, dim=4096)
    disk = ClusterConfig(k=8, memory_limit="2GB", feature_store="disk")
    check_memory(disk, rows=1_000_000, dim=4096)  # streamed: the 4096^2 PCA dominates


@pytest.mark.parametrize("step", [1, 3, 200])  # dense sweep, strided sweep, row-by-row reads
def test_row_blocks_gather_exactly_the_members(tmp_path: Path, step: int) -> None:
    x = _data(2000, 5)
    store = _filled(tmp_path, x, 300)
    members = np.arange(7, 2000, step)
    blocks = list(row_blocks(store, 64, members))
    assert [pos for pos, _ in blocks] == list(range(0, len(members), 64))
    assert np.array_equal(np.concatenate([b for _, b in blocks]), x[members])


def test_clustering_runs_on_the_cpu_without_a_gpu_or_with_the_disk_store() -> None:
    memory, disk = ClusterConfig(k=8), ClusterConfig(k=8, feature_store="disk")
    cpu = torch.device("cpu")
    assert clustering_device(memory, cpu, rows=1000, dim=64) == cpu
    if torch.cuda.is_available():
        gpu = torch.device("cuda", 0)
        assert clustering_device(memory, gpu, rows=1000, dim=64) == gpu
        assert clustering_device(disk, gpu, rows=1000, dim=64) == cpu
        assert clustering_device(memory, gpu, rows=10**12, dim=4096) == cpu
