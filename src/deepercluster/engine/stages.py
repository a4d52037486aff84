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
run's checkpoint the folder is deleted (:func:`clear_stage`). A resumed round says what it
reloads; a damaged stage file (cut short by a full disk, say) is computed again, with a
warning, instead of failing every retry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepercluster.cluster import KMeansResult, PCAWhitening
from deepercluster.cluster.store import FeatureStore, write_json_atomic
from deepercluster.engine.failures import io_error_of
from deepercluster.log import get_logger

log = get_logger("clustering")

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
        if root.exists() and _read_json(meta) != key:  # another round, or damaged
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            write_json_atomic(meta, key)
        self.key = key
        done = len(list(root.glob("kmeans-*.npz")))
        if done:
            m = int(key.get("cluster", {}).get("super_clusters", 0))
            total = f" of {m + 1 if m > 1 else 1}" if m else ""
            log.info("k-means: %d%s runs already done (saved by the interrupted run)", done, total)

    def features(self, *, rows: int, dim: int, dtype: str, chunk_rows: int) -> FeatureStore:
        """The store of this rank's extracted features (resumed where it stopped)."""
        store = FeatureStore(
            self.root / "features", rows=rows, dim=dim, dtype=dtype, chunk_rows=chunk_rows
        )
        if store.complete and store.n_chunks:
            log.info("extraction: all %d chunks already done, reloaded", store.n_chunks)
        elif store.chunks_done:
            log.info("resuming extraction at chunk %d of %d", store.chunks_done + 1, store.n_chunks)
        return store

    def reduced(self, *, rows: int, dim: int, chunk_rows: int) -> FeatureStore:
        """The store of this rank's whitened features (float32: k-means' input)."""
        return FeatureStore(self.root / "reduced", rows=rows, dim=dim, chunk_rows=chunk_rows)

    def load_pca(self) -> PCAWhitening | None:
        arrays = self._load("pca")
        if arrays is None:
            return None
        log.info("PCA reloaded (saved by the interrupted run)")
        return PCAWhitening.from_dict(arrays)

    def save_pca(self, pca: PCAWhitening) -> None:
        self._save("pca", pca.to_dict())

    def load_kmeans(self, run: int) -> KMeansResult | None:
        a = self._load(f"kmeans-{run}", _KMEANS_KEYS)
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
        here, ``safe_point("kmeans", ...)`` lets a stop happen.

        Args:
            run: the k-means, ``(run number, *args)``; the arguments are passed through.
            safe_point: the driver's hook, or None.
            agree: distributed k-means is collective: a saved run is used only if every
                rank has it (``distributed.all_ranks_ok``), else all ranks recompute it.
        """

        def cached(number: int, *args: Any) -> KMeansResult:
            hit = self.load_kmeans(number)
            if agree(hit is not None) and hit is not None:
                return hit
            result = run(number, *args)
            self.save_kmeans(number, result)
            if safe_point is not None:
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

    def _load(self, name: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
        """The arrays of ``<name>.npz``; None when it is missing, or damaged (then removed,
        so that the work is done again)."""
        path = self.root / f"{name}.npz"
        if not path.exists():
            return None
        try:
            # Our own handle: np.load leaves its own open when the zip is damaged.
            with path.open("rb") as fh, np.load(fh, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            missing = [k for k in keys if k not in arrays]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and io_error_of(exc) is not None:
                raise  # the disk is failing: computing again would not help
            log.warning("%s is damaged (%s: %s); computing it again", path, type(exc).__name__, exc)
            path.unlink(missing_ok=True)
            return None
        return arrays


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_KMEANS_KEYS = ("centroids", "assignments", "objective", "n_reseeded", "objectives")


def stage_root(run_dir: Path, rank: int) -> Path:
    """``<run>/clustering-stage/rank-<rank>``: one rank's stage checkpoints."""
    return run_dir / STAGE_DIR / f"rank-{rank}"


def clear_stage(run_dir: Path, rank: int) -> None:
    """Delete a rank's stage checkpoints (call once the round's targets are checkpointed)."""
    root = stage_root(run_dir, rank)
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # the last rank out removes the folder
