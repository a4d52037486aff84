"""Lloyd k-means in torch, on the device where the features are: the one loop of this package.

Every iteration is SwAV's ``cluster_memory`` [1] loop: E-step (nearest centroid of each local
row, block by block) -> per-cluster sums (float64) and counts -> one all-reduce over the
process group (the identity in one process) -> centroid update -> re-seeding of empty
clusters by splitting big ones (:mod:`~deepercluster.cluster.reseed`). The rows come as
:class:`~deepercluster.cluster.blocks.Blocks`, so the same loop clusters features in memory,
streamed from a store (one read of the rows per iteration), this rank's shard of a
distributed collection, and a super-cluster's rows inside a clustering group.

Reproducibility: the same seed gives the same clustering on the same device. P processes give
the assignments of 1 process on the concatenated rows; the centroids are the float64 sums of
the same rows taken in another order (per rank, then across ranks), rounded to float32, so they
agree with 1 process to float64 rounding (on CPU, bit for bit in practice; tested to 1e-5). On
CUDA the per-cluster sums use a sort-based (deterministic) accumulation, and the E-step's
float32 products may round differently from the CPU's: CUDA equals CPU up to float rounding.

References:
    - [0] DeeperCluster: Caron et al., ICCV 2019, https://arxiv.org/abs/1905.01278
    - [1] SwAV / DeepCluster-v2: Caron et al., 2020, https://arxiv.org/abs/2006.09882
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.cluster.blocks import Blocks, as_blocks
from deepercluster.cluster.reseed import fill_empty_blocks
from deepercluster.cluster.seeding import INIT_METHODS, initial_centroids
from deepercluster.distributed import ProcessGroup

__all__ = [
    "INIT_METHODS",
    "KMeansResult",
    "assign",
    "check_features",
    "kmeans",
    "lloyd",
    "nearest",
    "to_blocks",
]

# Scores held at once by the E-step (a (rows, k) float32 tile, 32 MB).
_TILE_VALUES = 2**23
# Values per float64 copy of the M-step (8 MB): the cast stays in cache.
_SUM_VALUES = 2**20


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of :func:`lloyd`.

    Attributes:
        centroids: (k, D) float32 centroids (identical on every rank).
        assignments: (n,) int64 nearest centroid of every local row, from a final E-step
            against ``centroids``; no cluster is empty over all ranks.
        objective: sum over all rows of the squared L2 distance to their centroid.
        n_reseeded: empty clusters re-seeded over all iterations, the final step included.
        objectives: per-iteration objective (before that iteration's update), for logging;
            ``faiss.Kmeans.obj``'s convention.
    """

    centroids: np.ndarray
    assignments: np.ndarray
    objective: float
    n_reseeded: int
    objectives: tuple[float, ...]

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])


def check_features(x: np.ndarray | Tensor, *, name: str = "x") -> Tensor:
    """Validate an (N, D) float32 feature matrix and return it as a contiguous tensor.

    Raises:
        ValueError: wrong rank or dtype, no rows, or NaN/inf values.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(t.shape)}; reshape it first")
    if t.dtype != torch.float32:
        # An implicit cast would silently double memory at the paper's scale.
        raise ValueError(f"{name} must be float32, got {t.dtype}; convert it to float32 first")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); extract features first")
    rows = max(_SUM_VALUES // t.shape[1], 1)
    for start in range(0, t.shape[0], rows):
        if not torch.isfinite(t[start : start + rows]).all():
            raise ValueError(f"{name} contains NaN or inf; check the feature extraction")
    return t.contiguous()


Prepared = tuple[Tensor, Tensor, Tensor]


def prepare(centroids: Tensor) -> Prepared:
    """What every E-step block needs: (shift, centroids - shift, their squared norms).

    The E-step compares ``||c - shift||^2 - 2 (x - shift).(c - shift)`` across centroids:
    the same argmin as without the shift, but float32 rounding then scales with the spread
    of the centroids rather than with their distance to the origin (a super-cluster far from
    it, un-normalised features), where it would otherwise drown the nearest centroid.
    """
    shift = centroids.mean(dim=0)
    centred = centroids - shift
    return shift, centred, (centred * centred).sum(dim=1)


def _labels(block: Tensor, prepared: Prepared) -> Tensor:
    """E-step of one block: (b,) int64 nearest centroid (ties: the lowest index).

    Three operations per tile of the (b, k) scores, no more: each is a parallel region, and
    on a busy machine every region costs a wake-up of the threads, whatever its size.
    """
    shift, centred, c_sq = prepared
    rows = max(1, _TILE_VALUES // max(1, centred.shape[0]))
    labels = torch.empty(block.shape[0], dtype=torch.int64, device=block.device)
    for s in range(0, block.shape[0], rows):
        # ||c||^2 - 2 x.c (shifted): the row's own ||x||^2 does not change its argmin.
        scores = torch.addmm(c_sq, block[s : s + rows] - shift, centred.T, alpha=-2.0)
        torch.argmin(scores, dim=1, out=labels[s : s + rows])
    return labels


def _nearest(block: Tensor, centroids: Tensor, prepared: Prepared) -> tuple[Tensor, Tensor]:
    """E-step of one block: (b,) int64 nearest centroid and (b,) float32 squared distance."""
    labels = _labels(block, prepared)
    # Measured from the difference: the expanded form loses the small distances of tight
    # clusters to cancellation.
    diff = block - centroids[labels]
    return labels, (diff * diff).sum(dim=1)


def nearest(blocks: Blocks, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """The E-step over every local row: (n,) int64 labels, (n,) float32 squared distances."""
    prepared = prepare(centroids)
    labels = torch.empty(blocks.n, dtype=torch.int64, device=blocks.device)
    dist = torch.empty(blocks.n, dtype=torch.float32, device=blocks.device)
    for start, x in blocks:
        labels[start : start + len(x)], dist[start : start + len(x)] = _nearest(
            x, centroids, prepared
        )
    return labels, dist


def assign(x: np.ndarray | Tensor, centroids: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row (ties: the lowest index).

    Args:
        x: (N, D) float32 rows, array or tensor (on the device where it runs).
        centroids: (k, D) float32 centroids.

    Returns:
        (N,) int64 labels and (N,) float32 squared L2 distances, as numpy arrays.
    """
    blocks = as_blocks(x)
    c = torch.as_tensor(np.asarray(centroids), device=blocks.device)
    if isinstance(centroids, Tensor):
        c = centroids.to(blocks.device)
    labels, dist = nearest(blocks, c.float())
    return labels.cpu().numpy(), dist.cpu().numpy()


def block_sums(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """(k, D) float64 sum of the rows of each cluster (zeros for clusters without rows).

    On CPU a sparse one-hot product per slice of rows (scipy), several times faster than
    torch's scatter kernels; on CUDA torch's sort-based ``index_put_`` (deterministic).
    """
    if x.device.type != "cpu":
        sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
        return sums.index_put_((labels,), x.double(), accumulate=True)
    points, ids = x.numpy(), labels.numpy()
    sums_np = np.zeros((k, x.shape[1]), dtype=np.float64)
    rows = max(_SUM_VALUES // max(1, x.shape[1]), k, 1024)
    for s in range(0, len(ids), rows):
        block = ids[s : s + rows]
        one_hot = scipy.sparse.csc_array(
            (np.ones(len(block)), block, np.arange(len(block) + 1)), shape=(k, len(block))
        )
        sums_np += one_hot @ points[s : s + rows].astype(np.float64)
    return torch.from_numpy(sums_np)


def cluster_sums(blocks: Blocks, labels: Tensor, k: int) -> Tensor:
    """(k, D) float64 per-cluster sums of the local rows (one pass over the blocks)."""
    sums = torch.zeros((k, blocks.dim), dtype=torch.float64, device=blocks.device)
    for start, x in blocks:
        sums += block_sums(x, labels[start : start + len(x)], k).to(sums.device)
    return sums


def _reduce(
    sums: Tensor, counts: Tensor, objective: Tensor, group: ProcessGroup | None
) -> tuple[Tensor, np.ndarray, float]:
    """All-reduce the M-step statistics in one float64 buffer (counts exact below 2**53)."""
    k = counts.shape[0]
    packed = torch.cat([sums.flatten(), counts.to(torch.float64), objective.reshape(1)])
    packed = distributed.all_reduce_sum(packed, group)
    out = packed[: sums.numel()].view_as(sums)
    total = packed[sums.numel() :].cpu().numpy()
    return out, np.rint(total[:k]).astype(np.int64), float(total[k])


def lloyd(
    blocks: Blocks,
    k: int,
    *,
    niter: int = 10,
    seed: int = 0,
    init: np.ndarray | None = None,
    init_method: str = "random",
    group: ProcessGroup | None = None,
) -> KMeansResult:
    """Lloyd k-means of the rows of every rank of ``group``, ``niter`` full iterations.

    Each iteration assigns every row to its nearest centroid, re-seeds empty clusters by
    splitting big ones, and moves each centroid to the mean of its members. A final E-step
    gives the assignments; if it empties a cluster, the cluster is split again and the two
    halves' centroids are set to their means. Every rank of ``group`` must call it.

    Communication per iteration: one all-reduce of 8 (k D + k + 1) bytes; an iteration in
    which clusters empty adds one of the same size and small ones per re-seeding round.

    Args:
        blocks: this rank's rows (possibly none), (n, D) float32.
        k: number of clusters, 1 <= k <= N (rows over all ranks).
        niter: iterations, always run in full (no early stop, no subsampling).
        seed: seeds the initial centroids and the donors of empty clusters.
        init: optional (k, D) initial centroids, the same on every rank (warm start).
        init_method: ``random`` (k distinct rows, the paper's) or ``kmeans++``.
        group: the process group holding the rows (None: all ranks, or one process).

    Returns:
        The :class:`KMeansResult` (assignments of this rank's rows).

    Raises:
        ValueError: on every rank, for ``k`` out of [1, N], negative ``niter`` or a bad ``init``.
    """
    where = blocks.locate(group)
    blocks = blocks.small_in_memory()
    if k < 1:
        raise ValueError(f"cluster.k ({k}) must be at least 1")
    if k > where.total:
        raise ValueError(
            f"cluster.k ({k}) is larger than the number of images ({where.total}); lower cluster.k"
        )
    if niter < 0:
        raise ValueError(f"cluster.niter ({niter}) must be >= 0")
    rng = np.random.default_rng(seed)
    centroids = initial_centroids(blocks, where, k, init, init_method, rng, group)
    n_reseeded, objectives = 0, list[float]()
    sq_norms: Tensor | None = None  # sum of ||x||^2 over the local rows, from the first pass
    for _ in range(niter + 1):
        # One read of the rows per iteration: the sums are taken with the new labels.
        prepared = prepare(centroids)
        labels = torch.empty(blocks.n, dtype=torch.int64, device=blocks.device)
        sums = torch.zeros((k, blocks.dim), dtype=torch.float64, device=blocks.device)
        first = sq_norms is None
        total = torch.zeros((), dtype=torch.float64, device=blocks.device)
        for start, x in blocks:
            block_labels = _labels(x, prepared)
            labels[start : start + len(x)] = block_labels
            sums += block_sums(x, block_labels, k).to(sums.device)
            if first:
                total += x.double().square().sum()
        if sq_norms is None:
            sq_norms = total
        counts = torch.bincount(labels, minlength=k)
        # sum_i ||x_i - c_l(i)||^2 = sum ||x||^2 - 2 sum_j c_j.S_j + sum_j n_j ||c_j||^2, in
        # float64 from the M-step's sums: no per-row distance to compute.
        c64 = centroids.double()
        local = sq_norms - 2.0 * (c64 * sums).sum() + (counts * c64.square().sum(dim=1)).sum()
        final = len(objectives) == niter
        sums, counts_np, objective = _reduce(sums, counts, local, group)
        if final:
            break
        objectives.append(objective)
        if (counts_np == 0).any():
            labels, centroids, pairs, counts_np = fill_empty_blocks(
                blocks, labels, centroids, counts_np, rng, group
            )
            n_reseeded += len(pairs)
            sums = distributed.all_reduce_sum(cluster_sums(blocks, labels, k), group)
        full = torch.as_tensor(counts_np > 0, device=centroids.device)
        divided = sums / torch.as_tensor(counts_np, device=sums.device).clamp(min=1)[:, None]
        centroids = torch.where(full[:, None], divided.float(), centroids)
    if (counts_np == 0).any():
        labels, centroids, pairs, counts_np = fill_empty_blocks(
            blocks, labels, centroids, counts_np, rng, group
        )
        n_reseeded += len(pairs)
        # The split clusters get their members' means, so that the returned centroids are
        # the best ones for the returned assignments; the objective is measured again.
        touched = torch.as_tensor(np.unique(pairs), device=centroids.device)
        sums = distributed.all_reduce_sum(cluster_sums(blocks, labels, k)[touched], group)
        size = torch.as_tensor(counts_np, device=sums.device)[touched]
        centroids[touched] = (sums / size[:, None]).float()
        objective = _objective(blocks, labels, centroids, group)
    return KMeansResult(
        centroids=centroids.cpu().numpy(),
        assignments=labels.cpu().numpy(),
        objective=objective,
        n_reseeded=n_reseeded,
        objectives=tuple(objectives),
    )


def _objective(
    blocks: Blocks, labels: Tensor, centroids: Tensor, group: ProcessGroup | None
) -> float:
    """Sum over all ranks' rows of the squared distance to their assigned centroid."""
    total = torch.zeros(1, dtype=torch.float64, device=blocks.device)
    for start, x in blocks:
        diff = x - centroids[labels[start : start + len(x)]]
        total += (diff * diff).sum(dtype=torch.float64)
    return float(distributed.all_reduce_sum(total, group)[0])


def to_blocks(x: np.ndarray | Tensor | Blocks, group: ProcessGroup | None = None) -> Blocks:
    """Blocks over validated (n, D) float32 features; a rank may hold no rows.

    Raises:
        ValueError: on every rank of ``group`` together when any rank's features are invalid
            (a rank raising alone would leave the others waiting in their next collective).
    """
    if isinstance(x, Blocks):
        return x
    problem = ""
    try:
        blocks = as_blocks(x if x.shape[0] == 0 else check_features(x))
    except ValueError as error:
        problem = str(error)
    if not distributed.all_ranks_ok(not problem, group):
        raise ValueError(problem or "another rank holds invalid features (see its error)")
    return blocks


def kmeans(
    x: np.ndarray | Tensor | Blocks,
    k: int,
    *,
    niter: int = 10,
    seed: int = 0,
    init: np.ndarray | None = None,
    init_method: str = "random",
    group: ProcessGroup | None = None,
) -> KMeansResult:
    """:func:`lloyd` of (n, D) float32 features (an array, a tensor on its device, or blocks).

    Raises:
        ValueError: bad ``x`` (see :func:`check_features`), or as :func:`lloyd`.
    """
    return lloyd(
        to_blocks(x, group),
        k,
        niter=niter,
        seed=seed,
        init=init,
        init_method=init_method,
        group=group,
    )
