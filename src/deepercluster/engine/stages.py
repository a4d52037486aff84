"""Stage checkpoints of one clustering round: nothing finished is ever computed twice.

A clustering round at scale takes hours (extraction, PCA, m + 1 k-means runs). Each rank
keeps what it has finished under ``<run>/clustering-stage/rank-<r>/``:

- ``features/``: its shard of the features, a chunked :class:`~deepercluster.cluster.store.
  FeatureStore` (extraction resumes after the last finished chunk);
- ``pca.npz``: the fitted whitening;
- ``reduced/``: the whitened features (``cluster.feature_store = "disk"`` only);
- ``kmeans-<i>.npz``: the i-th finished k-means run of the hierarchy (level 1, then each
  super-cluster's level 2), reloaded instead of recomputed.

``round.json`` names the round (epoch, collection size, shard, shapes, settings); a folder
left by another round or other settings is wiped. Once the round's targets are in the
run's checkpoint the folder is deleted (:meth:`ClusteringStage.clear`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepercluster.cluster import KMeansResult, PCAWhitening
from deepercluster.cluster.store import FeatureStore, write_json_atomic

STAGE_DIR = "clustering-stage"

SafePoint = Callable[[str, str], None]
"""``safe_point(stage, what)``: the driver's hook at a point where the work so far is saved
(fault injection for tests, then the agreed stop check that may raise ``Preempted``)."""


class ClusteringStage:
    """One rank's saved progress through one clustering round.

    Args:
        root: ``<run>/clustering-stage/rank-<r>``.
        key: what identifies the round (epoch, sizes, settings); JSON-serialisable.
    """

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        self.root = root
        meta = root / "round.json"
        if root.exists() and (not meta.exists() or json.loads(meta.read_text()) != key):
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            write_json_atomic(meta, key)
        self.key = key

    def features(self, *, rows: int, dim: int, dtype: str, chunk_rows: int) -> FeatureStore:
        """The store of this rank's extracted features (resumed where it stopped)."""
        return FeatureStore(
            self.root / "features", rows=rows, dim=dim, dtype=dtype, chunk_rows=chunk_rows
        )

    def reduced(self, *, rows: int, dim: int, chunk_rows: int) -> FeatureStore:
        """The store of this rank's whitened features (float32: k-means' input)."""
        return FeatureStore(self.root / "reduced", rows=rows, dim=dim, chunk_rows=chunk_rows)

    def load_pca(self) -> PCAWhitening | None:
        arrays = self._load("pca")
        return PCAWhitening.from_dict(arrays) if arrays is not None else None

    def save_pca(self, pca: PCAWhitening) -> None:
        self._save("pca", pca.to_dict())

    def load_kmeans(self, run: int) -> KMeansResult | None:
        a = self._load(f"kmeans-{run}")
        if a is None:
            return None
        return KMeansResult(
            centroids=a["centroids"],
            assignments=a["assignments"],
            objective=float(a["objective"]),
            n_reseeded=int(a["n_reseeded"]),
            objectives=tuple(float(v) for v in a["objectives"]),
        )

    def save_kmeans(self, run: int, result: KMeansResult) -> None:
        self._save(
            f"kmeans-{run}",
            {
                "centroids": result.centroids,
                "assignments": result.assignments,
                "objective": np.asarray(result.objective),
                "n_reseeded": np.asarray(result.n_reseeded),
                "objectives": np.asarray(result.objectives, dtype=np.float64),
            },
        )

    def cached_runs(
        self,
        run: Callable[..., KMeansResult],
        safe_point: SafePoint | None,
        agree: Callable[[bool], bool] = bool,
    ) -> Callable[..., KMeansResult]:
        """Wrap a flat k-means so that each run of the round is saved, or reloaded.

        The hierarchy names its runs (1 = level 1, 2 + s = super-cluster s; see
        :data:`~deepercluster.cluster.hierarchical.ClusterRun`), and each run's inputs follow
        from the earlier runs' results, so the name identifies a run. After each run computed
        here, ``safe_point("kmeans", ...)`` lets a stop happen. Thread-safe: level-2 runs may
        finish side by side (one file each; safe points one at a time).

        Args:
            run: the k-means, ``(run number, *args)``; the arguments are passed through.
            safe_point: the driver's hook, or None.
            agree: distributed k-means is collective: a saved run is used only if every
                rank has it (``distributed.all_ranks_ok``), else all ranks recompute it.
        """
        one_at_a_time = threading.Lock()

        def cached(number: int, *args: Any) -> KMeansResult:
            hit = self.load_kmeans(number)
            if agree(hit is not None) and hit is not None:
                return hit
            result = run(number, *args)
            self.save_kmeans(number, result)
            if safe_point is not None:
                with one_at_a_time:
                    safe_point("kmeans", f"k-means run {number} of the clustering")
            return result

        return cached

    def _save(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        path = self.root / f"{name}.npz"
        tmp = self.root / f".{name}.tmp-{os.getpid()}.npz"
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _load(self, name: str) -> dict[str, np.ndarray] | None:
        path = self.root / f"{name}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def stage_root(run_dir: Path, rank: int) -> Path:
    """``<run>/clustering-stage/rank-<rank>``: one rank's stage checkpoints."""
    return run_dir / STAGE_DIR / f"rank-{rank}"


def clear_stage(run_dir: Path, rank: int) -> None:
    """Delete a rank's stage checkpoints (call once the round's targets are checkpointed)."""
    root = stage_root(run_dir, rank)
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # the last rank out removes the folder
