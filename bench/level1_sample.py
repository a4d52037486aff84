"""``cluster.level1_sample`` on features of real images: time saved, objective paid.

    python -m bench.level1_sample [--tar PATH] [--n 50000] [--k 2048] [--out results/bench]

``bench/kmeans.py`` measures the level-1 sample on a Gaussian mixture of 4,096 small
components, where 256 sampled points per super-cluster see about one point per component. This
script takes the same hierarchies (k = 2048, m = 4 and 16, 10 iterations) on CIFAR-10 training
images: raw pixels (3,072 values), PCA-whitened to 128 dimensions and L2-normalised, the
pipeline's treatment of features. For each m it times the flat k-means and the hierarchy with
level 1 on every image and on 256 m images, interleaved, and averages the final objective over
three seeds (the seed-to-seed spread says what a difference is worth). Prints a table and writes
``<out>/level1_sample-cifar.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import Context, Row, info, interleaved, machine, median, per_rep, ratio
from deepercluster.cluster import fit_pca, hierarchical_kmeans, kmeans

NAME = "level1_sample"
SEEDS = (0, 1, 2)


def cifar_features(tar: str, n: int, dim: int = 128) -> np.ndarray:
    """(n, dim) float32: the first n images' pixels, PCA-whitened and L2-normalised."""
    pixels = []
    with tarfile.open(tar) as archive:
        for member in archive:
            if len(pixels) == n:
                break
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                data = archive.extractfile(member)
                if data is None:
                    raise ValueError(f"{tar}: cannot read {member.name}")
                image = Image.open(io.BytesIO(data.read())).convert("RGB")
                pixels.append(np.asarray(image, dtype=np.float32).ravel() / 255.0)
    x = np.stack(pixels)
    pca = fit_pca(x, dim=dim, power=0.5, sample=min(len(x), 20_000), seed=0)
    z = pca.apply(x)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return np.ascontiguousarray(z, dtype=np.float32)


def run(x: np.ndarray, ctx: Context, k: int = 2048, per_super: int = 256) -> list[Row]:
    rows = []
    for m in (4, 16):
        sample = per_super * m

        def hierarchy(m: int, level1_sample: int) -> None:
            hierarchical_kmeans(x, k=k, m=m, niter=10, seed=0, level1_sample=level1_sample)

        fns = {"all": partial(hierarchy, m, 0), "sampled": partial(hierarchy, m, sample)}
        times = interleaved({"flat": partial(kmeans, x, k, niter=10, seed=0), **fns}, ctx)
        objectives = {
            name: [
                hierarchical_kmeans(x, k=k, m=m, niter=10, seed=s, level1_sample=size).objective
                for s in SEEDS
            ]
            for name, size in (("all", 0), ("sampled", sample))
        }
        mean = {name: float(np.mean(values)) for name, values in objectives.items()}
        spread = {
            name: float(np.std(values) / np.mean(values)) for name, values in objectives.items()
        }
        shape = f"m={m} (CIFAR-10 pixels, N={len(x)}, D={x.shape[1]}, k={k})"
        rows.append(
            info(
                NAME,
                f"level 1 on all / on {sample} images: hierarchy time, {shape}",
                ratio(times, "all", "sampled"),
                "x",
                all_s=median(times["all"]),
                sampled_s=median(times["sampled"]),
                per_rep=per_rep(times, "all", "sampled"),
            )
        )
        for name, label in (("all", "every image"), ("sampled", f"{sample} images")):
            rows.append(
                info(
                    NAME,
                    f"flat / hierarchical time, level 1 on {label} (target m/2), {shape}",
                    ratio(times, "flat", name),
                    "x",
                    flat_s=median(times["flat"]),
                    per_rep=per_rep(times, "flat", name),
                )
            )
        rows.append(
            info(
                NAME,
                f"level 1 on {sample} / on all images: final objective (mean of 3 seeds), {shape}",
                mean["sampled"] / mean["all"],
                "x",
                objectives=objectives,
                seed_spread=spread,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_tar = os.environ.get("BENCH_CIFAR", "/work/shared/data/cifar10/train.tar")
    parser.add_argument("--tar", default=default_tar, help="CIFAR-10 training tar of JPEGs")
    parser.add_argument("--n", type=int, default=50_000, help="images to use")
    parser.add_argument("--k", type=int, default=2048, help="total clusters (a multiple of 16)")
    parser.add_argument("--dim", type=int, default=128, help="PCA dimension")
    parser.add_argument(
        "--per-super", type=int, default=256, help="level-1 sample per super-cluster (faiss': 256)"
    )
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions")
    parser.add_argument("--out", default="results/bench", help="folder of the JSON")
    args = parser.parse_args(argv)
    ctx = Context(device=torch.device("cpu"), reps=args.reps)
    before = machine(ctx.device)
    rows = run(cifar_features(args.tar, args.n, args.dim), ctx, args.k, args.per_super)
    for row in rows:
        print(f"{row.value:6.3f}{row.unit}  {row.name}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "level1_sample-cifar.json"
    record = {"machine_before": before, "machine_after": machine(ctx.device)}
    record["rows"] = [row.to_dict() for row in rows]
    path.write_text(json.dumps(record, indent=1))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
