"""k-means: our engine vs ``faiss.Kmeans``, and hierarchical vs flat at the same total k.

Ours: ``cluster.kmeans`` (the torch Lloyd loop: blockwise matmul + argmin E-step, float64
sums, re-seeding). faiss: ``faiss.Kmeans`` with ``max_points_per_centroid`` huge (no silent
subsampling) and ``early_stop_threshold = -1`` (exactly ``niter`` iterations), started from
the same initial centroids, followed by the search that assigns every point to the final
centroids (ours returns those assignments too). Both objectives are measured the same way:
the sum of squared distances of every point to its nearest final centroid. Then
``hierarchical_kmeans`` with m super-clusters against our flat engine at the same total k
(target: at least m/2 faster), at that shape and at a larger one whose level-2 problems have
hundreds to thousands of centroids each. Also the hierarchy with level 1 fitted on 256 images
per super-cluster (``cluster.level1_sample``), with its final objective against the unsampled
one. For reference, the same hierarchy (our recipe and scheduling) with ``faiss.Kmeans`` as
every flat k-means: what the library itself reaches there.
Also one k-means round of our loop with faiss' exact search as its E-step against the same
loop with the torch E-step: the check that keeps faiss out of the loop unless it pays 1.2x.
The data are L2-normalised points of a Gaussian mixture, as after PCA-whitening.
Runs on the CPU whatever ``--device`` (faiss-cpu is CPU code); with ``--device cuda`` two more
rows: the same k-means round on CUDA against the CPU, and a CUDA iteration against the bare
matmul + argmin of the same shape (the limit of the E-step).
"""

from __future__ import annotations

import sys
from functools import partial
from unittest import mock

import faiss
import numpy as np
import torch

from bench.common import Context, Row, at_least, at_most, info, interleaved, median, per_rep, ratio
from deepercluster.cluster import (
    Blocks,
    ClusterRun,
    KMeansResult,
    assign,
    hierarchical_kmeans,
    kmeans,
)

NAME = "kmeans"
# cluster.level1_sample per super-cluster in the sampled-hierarchy rows: faiss.Kmeans' default
# max_points_per_centroid.
_SAMPLE_PER_CENTROID = 256


def mixture(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 L2-normalised points around ``centres`` random centres."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(centres, size=n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _faiss_kmeans(
    x: np.ndarray, k: int, niter: int, seed: int, init: np.ndarray | None = None
) -> KMeansResult:
    """``faiss.Kmeans`` on all of ``x`` for exactly ``niter`` iterations (from ``init`` if
    given), then the search that assigns every point (as our engine returns), shaped like our
    result."""
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed % 2**31,  # faiss takes a signed int; level-2 seeds are 32-bit unsigned
        max_points_per_centroid=10**9,  # no silent subsampling
        min_points_per_centroid=1,  # only silences a warning about few points per centroid
        verbose=False,
    )
    km.cp.early_stop_threshold = -1.0
    km.train(x, init_centroids=init)
    distances, labels = km.index.search(x, 1)
    return KMeansResult(
        centroids=km.centroids,
        assignments=labels[:, 0].astype(np.int64),
        objective=float(np.maximum(distances[:, 0], 0).sum(dtype=np.float64)),
        n_reseeded=0,
        objectives=(),
    )


def faiss_hierarchy(x: np.ndarray, k: int, m: int, niter: int, seed: int) -> float:
    """Our two-level recipe (balancing, level-2 runs one after the other) with
    ``faiss.Kmeans`` as every flat k-means: the pace of the best library at this shape.

    Returns:
        The level-2 objective.
    """

    def with_faiss(_ours: ClusterRun) -> ClusterRun:
        def run(
            _run: int, rows: Blocks, kk: int, sd: int, _init: np.ndarray | None
        ) -> KMeansResult:
            data = rows.in_memory().data
            assert isinstance(data, torch.Tensor)
            return _faiss_kmeans(data.numpy(), kk, niter, sd)

        return run

    return hierarchical_kmeans(x, k=k, m=m, niter=niter, seed=seed, wrap_run=with_faiss).objective


def _faiss_nearest(
    block: torch.Tensor, centroids: torch.Tensor, _prepared: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss' exact search as the loop's E-step (CPU tensors)."""
    distances, labels = faiss.knn(block.numpy(), centroids.numpy(), 1)
    return torch.from_numpy(labels[:, 0]), torch.from_numpy(np.maximum(distances[:, 0], 0))


def _estep_rows(ctx: Context, x: np.ndarray, k: int, niter: int) -> list[Row]:
    """One k-means round of our loop with faiss' E-step / with the torch E-step."""
    loop = sys.modules["deepercluster.cluster.kmeans"]

    def torch_estep() -> None:
        kmeans(x, k, niter=niter, seed=0)

    def faiss_estep() -> None:
        with mock.patch.object(loop, "_nearest", _faiss_nearest):
            kmeans(x, k, niter=niter, seed=0)

    times = interleaved({"torch": torch_estep, "faiss": faiss_estep}, ctx, reps=3)
    return [
        info(
            NAME,
            f"k-means round, torch E-step / faiss E-step (N={len(x)}, D={x.shape[1]}, k={k})",
            ratio(times, "torch", "faiss"),
            "x",
            torch_s=median(times["torch"]),
            faiss_s=median(times["faiss"]),
            per_rep=per_rep(times, "torch", "faiss"),
            note="faiss may only come back as the CPU E-step if this is >= 1.2",
        )
    ]


def _device_rows(ctx: Context, x: np.ndarray, k: int, niter: int) -> list[Row]:
    """The k-means round on ``ctx.device`` against the CPU, and its iteration against the
    bare (N, D) x (D, k) product + argmin."""
    on_device = torch.from_numpy(x).to(ctx.device)
    centroids = on_device[:k].clone()

    def bare() -> None:
        for _ in range(niter):
            torch.addmm((centroids * centroids).sum(1), on_device, centroids.T, alpha=-2.0).argmin(
                1
            )

    times = interleaved(
        {
            "cpu": lambda: kmeans(x, k, niter=niter, seed=0),
            "device": lambda: kmeans(on_device, k, niter=niter, seed=0),
            "bare": bare,
        },
        ctx,
        reps=3,
    )
    shape = {"N": len(x), "D": x.shape[1], "k": k, "niter": niter}
    return [
        info(
            NAME,
            f"k-means round, CPU / {ctx.device.type} (N={len(x)}, k={k})",
            ratio(times, "cpu", "device"),
            "x",
            cpu_s=median(times["cpu"]),
            device_s=median(times["device"]),
            **shape,
        ),
        info(
            NAME,
            f"k-means iterations / bare matmul + argmin on {ctx.device.type} (N={len(x)}, k={k})",
            ratio(times, "device", "bare"),
            "x",
            bare_s=median(times["bare"]),
            **shape,
        ),
    ]


def _objective(x: np.ndarray, centroids: np.ndarray) -> float:
    _, d2 = assign(x, centroids)
    return float(d2.sum(dtype=np.float64))


def run(ctx: Context) -> list[Row]:
    n, dim, k, niter = ctx.pick(
        (2000, 16, 20, 5), (50_000, 128, 2048, 10), (200_000, 256, 4096, 10)
    )
    x = mixture(n, dim, centres=2 * k)
    seed = 0
    # Our engine's initial centroids: k distinct points drawn by the same generator.
    rng = np.random.default_rng(seed)
    init = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
    results: dict[str, np.ndarray] = {}

    def ours() -> None:
        results["ours"] = kmeans(x, k, niter=niter, seed=seed).centroids

    def with_faiss() -> None:
        results["faiss"] = _faiss_kmeans(x, k, niter, seed, init).centroids

    times = interleaved({"ours": ours, "faiss": with_faiss}, ctx)
    obj_ours = _objective(x, results["ours"])
    obj_faiss = _objective(x, results["faiss"])
    shape = {"N": n, "D": dim, "k": k, "niter": niter}
    rows = [
        at_most(
            NAME,
            f"our k-means / faiss.Kmeans time (N={n}, D={dim}, k={k})",
            ratio(times, "ours", "faiss"),
            1.2,
            ours_s=median(times["ours"]),
            faiss_s=median(times["faiss"]),
            per_rep=per_rep(times, "ours", "faiss"),
            **shape,
        ),
        Row(
            NAME,
            "our k-means / faiss.Kmeans final objective",
            obj_ours / obj_faiss,
            "x",
            "1 +- 0.01",
            abs(obj_ours / obj_faiss - 1) <= 0.01,
            {"ours": obj_ours, "faiss": obj_faiss},
        ),
    ]
    # Hierarchical vs flat, twice: at the shape above, where level 2 is m problems of only
    # k/m (512 or 128) centroids, so fixed per-call and per-point costs weigh; and at a shape
    # whose level-2 problems are large enough to be bound by the distance products, as every
    # real run's are (the paper's: 24M images x 80,000 centroids each). The larger shape runs
    # 5 iterations (both sides alike; every iteration costs the same, so the ratio does not
    # depend on it) to keep the quick suite within its minutes.
    rows += _estep_rows(ctx, x, k, niter)
    if ctx.device.type == "cuda":
        rows += _device_rows(ctx, x, k, niter)
    ms = ctx.pick((2,), (4, 16), (4, 16))
    rows += _hierarchical_vs_flat(ctx, x, k, niter, ms, seed)
    if not ctx.tiny:
        n_big, k_big, iters = ctx.pick(None, (100_000, 8192, 5), (200_000, 16_384, 10))
        big = mixture(n_big, dim, centres=2 * k_big, seed=1)
        # No warm-up round in the quick run: the same code has just run at the shape above
        # (its round took ~24 s of the quick suite's 10 minutes on round 13's Zen 3 EPYC).
        rows += _hierarchical_vs_flat(ctx, big, k_big, iters, ms, seed, warmup=ctx.repeat_warmup)
    return rows


def _hierarchical_vs_flat(
    ctx: Context,
    x: np.ndarray,
    k: int,
    niter: int,
    ms: tuple[int, ...],
    seed: int,
    warmup: int | None = None,
) -> list[Row]:
    """Flat k-means and the hierarchy for each m in ``ms``, interleaved in one round."""
    objectives: dict[str, float] = {}

    def flat() -> None:
        objectives["flat"] = kmeans(x, k, niter=niter, seed=seed).objective

    def hier(m: int) -> None:
        objectives[f"hier{m}"] = hierarchical_kmeans(x, k=k, m=m, niter=niter, seed=seed).objective

    def hier_sampled(m: int) -> None:
        objectives[f"sampled{m}"] = hierarchical_kmeans(
            x, k=k, m=m, niter=niter, seed=seed, level1_sample=_SAMPLE_PER_CENTROID * m
        ).objective

    def with_faiss(m: int) -> None:
        objectives[f"faiss{m}"] = faiss_hierarchy(x, k, m, niter, seed)

    fns = {
        "flat": flat,
        **{f"hier{m}": partial(hier, m) for m in ms},
        **{f"sampled{m}": partial(hier_sampled, m) for m in ms},
        **{f"faiss{m}": partial(with_faiss, m) for m in ms},
    }
    times = interleaved(fns, ctx, reps=3, warmup=warmup)
    rows = []
    for m in ms:
        shape = f"m={m} (N={len(x)}, k={k})"
        rows.append(
            at_least(
                NAME,
                f"flat / hierarchical k-means time, {shape}",
                ratio(times, "flat", f"hier{m}"),
                m / 2,
                hier_s=median(times[f"hier{m}"]),
                flat_s=median(times["flat"]),
                per_rep=per_rep(times, "flat", f"hier{m}"),
                theory=k / (m + k / m),
                N=len(x),
                k=k,
                k_per_super_cluster=k // m,
                niter=niter,
            )
        )
        rows.append(
            info(
                NAME,
                f"hierarchical / flat objective, {shape}",
                objectives[f"hier{m}"] / objectives["flat"],
                "x",
            )
        )
        # Level 1 fitted on 256 images per super-cluster (faiss.Kmeans' default rule), then
        # every image assigned: the time it saves, and what it costs in the final objective.
        rows.append(
            at_least(
                NAME,
                f"flat / hierarchical k-means time, level 1 on {_SAMPLE_PER_CENTROID} m images, "
                + shape,
                ratio(times, "flat", f"sampled{m}"),
                m / 2,
                sampled_s=median(times[f"sampled{m}"]),
                unsampled_over_sampled=ratio(times, f"hier{m}", f"sampled{m}"),
                per_rep=per_rep(times, "flat", f"sampled{m}"),
                level1_sample=_SAMPLE_PER_CENTROID * m,
            )
        )
        rows.append(
            info(
                NAME,
                f"level 1 on {_SAMPLE_PER_CENTROID} m images / on all: final objective, {shape}",
                objectives[f"sampled{m}"] / objectives[f"hier{m}"],
                "x",
            )
        )
        # The same hierarchy with faiss.Kmeans for every run: how far the m / 2 target is
        # from what the library itself reaches at this shape.
        rows.append(
            info(
                NAME,
                f"reference: flat / hierarchy of faiss.Kmeans runs, {shape}",
                ratio(times, "flat", f"faiss{m}"),
                "x",
                faiss_hier_s=median(times[f"faiss{m}"]),
                ours_over_faiss=ratio(times, f"hier{m}", f"faiss{m}"),
                per_rep=per_rep(times, "flat", f"faiss{m}"),
                objective_faiss_over_ours=objectives[f"faiss{m}"] / objectives[f"hier{m}"],
            )
        )
    return rows
