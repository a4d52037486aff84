"""PCA whitening and L2 normalisation of features before k-means (paper [0] section 3).

The features of every image are centred, projected on the top ``dim`` principal axes, scaled
by ``(eigenvalue + eps) ** -power`` (power 0.5 whitens, 0 only reduces) and L2-normalised, as
in DeepCluster [1] and the DeeperCluster reference code (``dim_pca``, whitening power 0.5).

The fit goes through the moments ``(n, sum x, sum x x^T)`` in float64 on the features' device,
which add up across blocks and shards: :func:`fit_pca` sums them over the rows at hand (in
memory or streamed from a store), all-reduces them and calls :func:`pca_from_moments` on
every rank, which gives every rank the same, sign-fixed result.

References:
    - [0] DeeperCluster: Caron et al., ICCV 2019, https://arxiv.org/abs/1905.01278
    - [1] DeepCluster: Caron et al., ECCV 2018, https://arxiv.org/abs/1807.05520
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.cluster.blocks import Blocks
from deepercluster.distributed import ProcessGroup

__all__ = ["PCAWhitening", "feature_moments", "fit_pca", "l2_normalize", "pca_from_moments"]

# Relative regulariser: eps = EPS_RELATIVE * largest eigenvalue. Relative, so that the result
# does not depend on the scale of the features; 1e-5 leaves every component whose variance is
# above 1e-3 of the largest one within 1% of unit variance, and bounds the gain of the
# near-null directions (noise) by ~316x the top one's.
EPS_RELATIVE = 1e-5

_BLOCK_ROWS = 65536


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Divide every row by its L2 norm (rows of zeros stay zero).

    Args:
        x: (N, d) float32.

    Returns:
        (N, d) float32 with unit-norm rows.
    """
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32)
    return out


@dataclass(frozen=True)
class PCAWhitening:
    """A fitted PCA whitening: ``l2_normalize((x - mean) @ projection)``.

    Attributes:
        mean: (D,) float32 feature mean.
        projection: (D, d) float32 principal axes (columns, variance descending), each scaled
            by ``(eigenvalue + eps) ** -power``.
        eigenvalues: (d,) float64 variances along the axes, descending.
        total_variance: trace of the covariance, for the explained-variance ratio.
    """

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray
    total_variance: float

    @property
    def dim(self) -> int:
        """Output dimension d."""
        return int(self.projection.shape[1])

    @property
    def explained_variance_ratio(self) -> float:
        """Fraction of the total variance kept by the d axes."""
        return float(self.eigenvalues.sum() / max(self.total_variance, np.finfo(float).tiny))

    def project(self, x: np.ndarray, *, batch_size: int = _BLOCK_ROWS) -> np.ndarray:
        """Centre, project and scale, without the final L2 normalisation.

        Args:
            x: (N, D) features.
            batch_size: rows per block, bounds the temporary memory.

        Returns:
            (N, d) float32.
        """
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features have shape {x.shape} but the PCA was fitted on dimension "
                f"{self.mean.shape[0]}; refit the PCA on these features"
            )
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        for start in range(0, x.shape[0], batch_size):
            block = x[start : start + batch_size].astype(np.float32, copy=False)
            out[start : start + block.shape[0]] = (block - self.mean) @ self.projection
        return out

    def apply(self, x: np.ndarray, *, batch_size: int = _BLOCK_ROWS) -> np.ndarray:
        """Centre, project, scale and L2-normalise: the input of k-means.

        Args:
            x: (N, D) features.
            batch_size: rows per block, bounds the temporary memory.

        Returns:
            (N, d) float32 with unit-norm rows.
        """
        out = self.project(x, batch_size=batch_size)
        for start in range(0, out.shape[0], batch_size):
            out[start : start + batch_size] = l2_normalize(out[start : start + batch_size])
        return out

    def apply_tensor(self, x: Tensor, *, batch_size: int = _BLOCK_ROWS) -> Tensor:
        """:meth:`apply` of a tensor, on its device: (N, D) -> (N, d) float32 unit rows."""
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features have shape {tuple(x.shape)} but the PCA was fitted on dimension "
                f"{self.mean.shape[0]}; refit the PCA on these features"
            )
        mean = torch.as_tensor(self.mean, device=x.device)
        projection = torch.as_tensor(self.projection, device=x.device)
        out = torch.empty((x.shape[0], self.dim), dtype=torch.float32, device=x.device)
        tiny = float(np.finfo(np.float32).tiny)
        for start in range(0, x.shape[0], batch_size):
            z = (x[start : start + batch_size].float() - mean) @ projection
            out[start : start + len(z)] = z / z.norm(dim=1, keepdim=True).clamp(min=tiny)
        return out

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays for a checkpoint."""
        return {
            "mean": self.mean,
            "projection": self.projection,
            "eigenvalues": self.eigenvalues,
            "total_variance": np.asarray(self.total_variance, dtype=np.float64),
        }

    @classmethod
    def from_dict(cls, state: dict[str, np.ndarray]) -> PCAWhitening:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: missing/unexpected keys or inconsistent shapes.
        """
        expected = {"mean", "projection", "eigenvalues", "total_variance"}
        if set(state) != expected:
            raise ValueError(
                f"PCA state has keys {sorted(state)}, expected {sorted(expected)}; "
                "the checkpoint is not from PCAWhitening.to_dict"
            )
        mean = np.asarray(state["mean"], dtype=np.float32)
        projection = np.asarray(state["projection"], dtype=np.float32)
        eigenvalues = np.asarray(state["eigenvalues"], dtype=np.float64)
        if projection.ndim != 2 or projection.shape[0] != mean.shape[0]:
            raise ValueError(f"PCA projection {projection.shape} does not match mean {mean.shape}")
        if eigenvalues.shape != (projection.shape[1],):
            raise ValueError(
                f"PCA eigenvalues {eigenvalues.shape} do not match projection {projection.shape}"
            )
        return cls(mean, projection, eigenvalues, float(state["total_variance"]))


def feature_moments(
    x: np.ndarray | Tensor | Blocks, *, batch_size: int = _BLOCK_ROWS
) -> tuple[int, np.ndarray, np.ndarray]:
    """First and second moments of the rows, summed in float64 on their device.

    float64 products remove any doubt about cancellation in sum(x x^T) / n - mean mean^T, and
    the moments add up across shards and blocks.

    Args:
        x: (N, D) features: an array, a tensor or blocks (of a store).
        batch_size: rows per float64 block of an array or tensor.

    Returns:
        n: N.
        total: (D,) float64 sum of the rows.
        total_outer: (D, D) float64 sum of ``x_i x_i^T``.
    """
    blocks = _as_blocks(x, batch_size)
    total = torch.zeros(blocks.dim, dtype=torch.float64, device=blocks.device)
    outer = torch.zeros((blocks.dim, blocks.dim), dtype=torch.float64, device=blocks.device)
    for _, block in blocks:
        block64 = block.double()
        total += block64.sum(dim=0)
        outer += block64.T @ block64
    return blocks.n, total.cpu().numpy(), outer.cpu().numpy()


def _as_blocks(x: np.ndarray | Tensor | Blocks, batch_size: int = _BLOCK_ROWS) -> Blocks:
    if isinstance(x, Blocks):
        return x
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return Blocks(x.float(), block_rows=batch_size)


def pca_from_moments(
    n: int,
    total: np.ndarray,
    total_outer: np.ndarray,
    *,
    dim: int,
    power: float = 0.5,
    eps: float = EPS_RELATIVE,
) -> PCAWhitening:
    """Fit the whitening from moments (see :func:`feature_moments`).

    Uses the unbiased covariance ``(sum x x^T - n mean mean^T) / (n - 1)`` and its
    eigendecomposition in float64 (:func:`_eigh`). Each axis' sign is fixed so that its
    largest-magnitude coordinate is positive, which makes the result reproducible across runs,
    BLAS builds and ranks.

    Args:
        n: number of rows the moments were summed over.
        total: (D,) float64 sum of the rows.
        total_outer: (D, D) float64 sum of the outer products.
        dim: output dimension d, 1 <= d <= min(D, n - 1); d = D whitens without reduction.
        power: scale axis i by ``(eigenvalue_i + eps * eigenvalue_max) ** -power``; 0.5
            whitens (unit variance per axis), 0 only projects.
        eps: regulariser relative to the largest eigenvalue (see ``EPS_RELATIVE``).

    Returns:
        The fitted :class:`PCAWhitening`.

    Raises:
        ValueError: ``dim`` out of range, or fewer than 2 rows.
    """
    features = total.shape[0]
    if n < 2:
        raise ValueError(f"PCA needs at least 2 images, got {n}; cluster more images")
    if dim < 1:
        raise ValueError(f"cluster.pca_dim ({dim}) must be >= 1")
    if dim > features:
        raise ValueError(
            f"cluster.pca_dim ({dim}) exceeds the feature dimension ({features}); "
            "lower cluster.pca_dim"
        )
    if dim > n - 1:
        raise ValueError(
            f"cluster.pca_dim ({dim}) exceeds the number of images minus one ({n - 1}), the "
            "rank of their covariance; lower cluster.pca_dim or fit on more images"
        )
    if power < 0 or eps < 0 or (power > 0 and eps == 0):
        raise ValueError(
            f"PCA needs power >= 0 and eps > 0 when whitening, got power={power}, eps={eps}; "
            "use power=0.5 and the default eps"
        )
    mean = total / n
    covariance = (total_outer - n * np.outer(mean, mean)) / (n - 1)
    covariance = (covariance + covariance.T) / 2
    eigenvalues, eigenvectors = _eigh(covariance)
    total_variance = float(np.clip(eigenvalues, 0.0, None).sum())
    if total_variance <= 0.0:
        raise ValueError("all features are identical (zero variance); check the feature extraction")
    order = np.argsort(eigenvalues)[::-1][:dim]
    # Rounding leaves tiny negative eigenvalues in null directions.
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    eigenvectors = eigenvectors[:, order]
    pivot = np.argmax(np.abs(eigenvectors), axis=0)
    eigenvectors *= np.where(eigenvectors[pivot, np.arange(dim)] < 0, -1.0, 1.0)
    scale = (eigenvalues + eps * eigenvalues[0]) ** -power
    return PCAWhitening(
        mean=mean.astype(np.float32),
        projection=(eigenvectors * scale).astype(np.float32),
        eigenvalues=eigenvalues,
        total_variance=total_variance,
    )


def _eigh(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (D,) and eigenvectors (D, D) of a symmetric float64 matrix, on one thread.

    The symmetric eigensolver is a long chain of small steps, each a barrier for every thread
    of the pool: on a machine whose cores are busy with other work, a waiting thread is
    descheduled at every barrier and a multi-threaded solve runs many times slower than a
    single-threaded one. One thread is fast for any feature size this method uses, and gives
    the same result whatever the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        values, vectors = torch.linalg.eigh(torch.from_numpy(covariance))
    finally:
        torch.set_num_threads(threads)
    return values.numpy(), vectors.numpy()


def fit_pca(
    x: np.ndarray | Tensor | Blocks,
    *,
    dim: int,
    power: float = 0.5,
    sample: int | None = None,
    seed: int = 0,
    group: ProcessGroup | None = None,
) -> PCAWhitening:
    """Fit the whitening on the rows of every rank of ``group`` (or on a sample of them).

    The one PCA fit: the moments of the rows at hand (an array, a tensor on any device, or
    blocks streamed from a store) are all-reduced (the identity in one process) and every rank
    solves the same eigenproblem, so every rank gets the same, sign-fixed result.

    Args:
        x: (n, D) this rank's features (n may be 0).
        dim: output dimension (see :func:`pca_from_moments`).
        power: whitening power (0.5 whitens, 0 only projects).
        sample: fit on this many rows drawn without replacement over the whole collection
            (the same rows for any number of ranks); None or >= N: all rows.
        seed: seeds the sample.
        group: the process group holding the rows (None: all ranks, or one process).

    Returns:
        The fitted :class:`PCAWhitening`.
    """
    blocks = _as_blocks(x)
    where = blocks.locate(group)
    if sample is not None and sample < where.total:
        if sample < 2:
            raise ValueError(f"cluster.pca_sample ({sample}) must be >= 2")
        rows = np.random.default_rng(seed).choice(where.total, size=sample, replace=False)
        blocks = blocks.subset(where.local(np.sort(rows))[1])
    n, total, total_outer = feature_moments(blocks)
    packed = np.concatenate([[float(n)], total, total_outer.ravel()])
    packed = distributed.all_reduce_sum_np(packed, group)
    d = total.shape[0]
    return pca_from_moments(
        round(float(packed[0])),
        packed[1 : d + 1],
        packed[d + 1 :].reshape(d, d),
        dim=dim,
        power=power,
    )
