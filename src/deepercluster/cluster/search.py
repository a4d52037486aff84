"""The k-means E-step: nearest centroid of every point, with faiss or, for a few centroids, torch.

faiss' exact search serves every size; with a handful of centroids (level 1 of the hierarchy)
most of its time goes to per-point bookkeeping, and one torch product ``|c|^2 - 2<x, c>`` with
a row-wise min is ~2x faster. torch's thread pool is process-wide while faiss' OpenMP count is
per calling thread, so torch kernels are only used where they fit the caller's share.

References:
    - [0] Johnson et al., "Billion-scale similarity search with GPUs" (faiss), 2017,
      https://arxiv.org/abs/1702.08734
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import torch

__all__ = [
    "FEW_CENTROIDS",
    "as_tensor",
    "assign",
    "row_sq_norms",
    "torch_fits_threads",
    "torch_search",
]

# Up to this many centroids the E-step is one torch product and a row-wise min: faiss' search
# spends ~2x longer there on per-point bookkeeping (bench/kmeans.py level 1, k = 16: 9.7 vs
# 5.2 ms at 50k x 128); from k = 64 on faiss is faster. Only from this many rows and dimensions
# on, where faiss 1.15 itself uses the same |x|^2 + |c|^2 - 2<x, c> expansion: below, faiss'
# kernels compute the differences and are exact, which the expansion is not for far-off points.
FEW_CENTROIDS = 32
_TORCH_SEARCH_MIN_ROWS = 4096
_TORCH_SEARCH_MIN_DIM = 32
# Rows per block of that product, so the (rows, k) scores stay a few MB.
_SEARCH_ROWS = 65536


def row_sq_norms(x: np.ndarray) -> np.ndarray:
    """(N,) float32 squared L2 norm of every row of the (N, D) float32 ``x``."""
    norms: np.ndarray = np.einsum("ij,ij->i", x, x)
    return norms


def torch_fits_threads() -> bool:
    """Whether torch's intra-op pool fits the calling thread's share of the cores.

    faiss' OpenMP thread count is per calling thread (:func:`~.kmeans.faiss_threads`; level-2
    runs in worker threads), torch's pool size is process-wide. A torch kernel is only used where it
    would not spread over more threads than faiss was given here: inside a 1-thread level-2
    worker the numpy/faiss kernels run instead, and oversubscription is avoided. (When both
    load one OpenMP runtime, faiss imported first, torch's count follows the per-thread one.)
    """
    return torch.get_num_threads() <= faiss.omp_get_max_threads()


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A torch view of ``a`` without a copy, also of a read-only array (never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def assign(
    x: np.ndarray, centroids: np.ndarray, sq_norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """E-step: nearest centroid of every point (exact search).

    faiss' search in general; with at most :data:`FEW_CENTROIDS` centroids (level 1 of
    the hierarchy) and many points, one blocked torch product ``|c|^2 - 2<x, c>`` and a
    row-wise min, ~2x faster there; faiss computes the same expansion at those sizes, so both
    give the nearest centroid up to float32 rounding of near-ties.

    Args:
        x: (N, D) float32 points, C-contiguous.
        centroids: (k, D) float32 centroids.
        sq_norms: (N,) float32 :func:`row_sq_norms` of ``x`` when the caller keeps them across
            iterations (None: computed here when needed).

    Returns:
        assignments: (N,) int64 index of the nearest centroid.
        sq_distances: (N,) float32 squared L2 distance to it, clipped at 0.
    """
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if torch_search(x.shape[0], x.shape[1], centroids.shape[0]):
        return _assign_few(x, centroids, row_sq_norms(x) if sq_norms is None else sq_norms)
    distances, labels = faiss.knn(x, centroids, 1)
    # The BLAS path computes |x|^2 + |c|^2 - 2<x, c>, which rounds slightly below 0 for x == c.
    return labels[:, 0].astype(np.int64), np.maximum(distances[:, 0], 0.0)


def torch_search(n: int, dim: int, k: int) -> bool:
    """Whether :func:`assign` of n points in D = ``dim`` to k centroids goes to torch."""
    return (
        k <= FEW_CENTROIDS
        and n >= _TORCH_SEARCH_MIN_ROWS
        and dim >= _TORCH_SEARCH_MIN_DIM
        and torch_fits_threads()
    )


def _assign_few(
    x: np.ndarray, centroids: np.ndarray, sq_norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign` for a few centroids, with torch; same arguments and results."""
    points, c = as_tensor(x), torch.from_numpy(centroids)
    c_norms = (c * c).sum(dim=1)
    labels = torch.empty(x.shape[0], dtype=torch.int64)
    distances = torch.empty(x.shape[0], dtype=torch.float32)
    for start in range(0, x.shape[0], _SEARCH_ROWS):
        stop = start + _SEARCH_ROWS
        scores = torch.addmm(c_norms, points[start:stop], c.T, alpha=-2)  # (rows, k)
        torch.min(scores, dim=1, out=(distances[start:stop], labels[start:stop]))
    distances += as_tensor(sq_norms)
    return labels.numpy(), distances.clamp_(min=0.0).numpy()
