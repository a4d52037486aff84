"""Benchmark: extraction + clustering of a collection whose features are 10x the memory limit.

Runs the real clustering round (:func:`deepercluster.engine.clustering.recluster`: chunked
extraction into the on-disk store, PCA from streamed moments, whitening to disk, chunked
hierarchical k-means) with ``cluster.feature_store = "disk"`` on a synthetic collection, and
reports the peak resident memory (VmHWM, reset just before the round) against
``cluster.memory_limit``, next to what ``deepercluster plan`` predicted.

The images are generated on the fly (32x32, a few kinds of patterns) and the network is a
stand-in with ResNet-18's feature dimension (512: average pooling then a fixed random linear
map), so that extraction stays cheap on a CPU; everything after the network is the production
code path. (At D = 4096 the PCA's D x D float64 matrices alone take ~0.8 GB whatever the
number of images, so a 10x-the-limit run would need 6 M images: hours on this machine.)

Also measures the memory of the collection index per image (``--index``): a list file and
tar shards of many entries are opened and the bytes the index holds are counted.

Usage::

    nice -n 10 python scripts/out_of_core.py --images 60000 --memory-limit 100MB
    python scripts/out_of_core.py --index 1000000
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import resource
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from deepercluster.config import load_config
from deepercluster.data import open_collection
from deepercluster.engine.calibrate import calibrate
from deepercluster.engine.clustering import recluster
from deepercluster.engine.plan import make_plan


class SyntheticImages:
    """``n`` 32x32 RGB images, image i drawn from seed i (stripes, checkers, blobs + noise)."""

    def __init__(self, n: int) -> None:
        self.n = n
        yy, xx = np.mgrid[0:32, 0:32]
        self.kinds = [
            (np.sin(yy / 2) > 0) * 200.0,
            (np.sin(xx / 2) > 0) * 200.0,
            ((yy // 4 + xx // 4) % 2) * 200.0,
            ((yy - 16) ** 2 + (xx - 16) ** 2 < 64) * 220.0,
        ]

    def __len__(self) -> int:
        return self.n

    def read(self, index: int) -> Image.Image:
        rng = np.random.default_rng(index)
        img = self.kinds[index % 4] + rng.normal(0, 30, (32, 32))
        rgb = np.stack([img, img * 0.8, img * 0.6], -1).clip(0, 255).astype(np.uint8)
        return Image.fromarray(rgb)

    def path(self, index: int) -> str:
        return f"synthetic[{index}]"


class StandIn(nn.Module):
    """(B, 3, 32, 32) -> (B, 512): 4x4 average pooling and a fixed random linear map."""

    feature_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.proj = nn.Linear(48, self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(self.pool(x).flatten(1))
        return out


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: ``5`` into clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def out_of_core(images: int, limit: str, chunk: int, k: int, m: int) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="dc-ooc-") as tmp:
        cfg = load_config(
            overrides=[
                f'out="{tmp}"',
                "model.arch=small",
                "data.resolution=32",
                "data.workers=0",
                f"cluster.k={k}",
                f"cluster.super_clusters={m}",
                "cluster.pca_dim=128",
                "cluster.niter=5",
                "cluster.feature_store=disk",
                "cluster.feature_dtype=float32",
                f"cluster.chunk_images={chunk}",
                f'cluster.memory_limit="{limit}"',
                "train.batch_size=256",
            ]
        )
        model = StandIn()
        collection = SyntheticImages(images)
        gc.collect()
        baseline = rss_mb()
        reset_peak()
        tic = time.perf_counter()
        clustering, _ = recluster(
            model,
            model.feature_dim,
            collection,
            cfg,
            epoch=0,
            device=torch.device("cpu"),
            previous=None,
            progress=False,
            work_dir=Path(tmp),
        )
        seconds = time.perf_counter() - tic
        peak = rss_mb("VmHWM")
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*.bin"))
    limit_mb = cfg.cluster.memory_limit_bytes / 2**20  # type: ignore[operator]
    # The plan with throughputs measured here (the stand-in network is not a registered
    # architecture, so only the PCA and k-means times are compared).
    measured = calibrate(cfg, device=torch.device("cpu"))
    plan = make_plan(cfg, n_images=images, world_size=1, assume=measured)
    stage_s = {s.stage: s.seconds for s in plan.stages}
    predicted_ram = max(s.ram for s in plan.stages[1:5]) / 2**20
    features_mb = images * StandIn.feature_dim * 4 / 2**20
    return {
        "images": images,
        "feature_dim": StandIn.feature_dim,
        "features_in_ram_mb": round(features_mb, 1),
        "memory_limit_mb": round(limit_mb, 1),
        "features_over_limit": round(features_mb / limit_mb, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_over_baseline_mb": round(peak - baseline, 1),
        "plan_predicted_ram_mb": round(predicted_ram, 1),
        "disk_written_mb": round(disk / 2**20, 1),
        "plan_predicted_disk_mb": round((plan.stages[1].disk + plan.stages[2].disk) / 2**20, 1),
        "seconds": round(seconds, 1),
        "seconds_by_stage": {
            key: round(float(clustering.metrics[f"time/{key}_s"]), 1)
            for key in ("extract", "pca", "kmeans")
        },
        "plan_predicted_seconds": {
            "pca": round(stage_s["PCA + whitening"], 1),
            "kmeans": round(stage_s["k-means level 1"] + stage_s["k-means level 2"], 1),
        },
        "calibrated_kmeans_ns_per_row": {
            "level1": round(measured.kmeans_level1_s_per_row * 1e9, 1),
            "level2": round(measured.kmeans_level2_s_per_row * 1e9, 1),
        },
        "clusters": len(np.unique(clustering.labels)),
        "objective": round(float(clustering.metrics["cluster/objective"]), 2),
    }


def index_memory(n: int) -> dict[str, Any]:
    """Bytes per image held by the collection index: a list file and tar shards."""
    out: dict[str, Any] = {"images": n}
    with tempfile.TemporaryDirectory(prefix="dc-index-") as tmp:
        names = [f"photos/2019/{i // 1000:05d}/img_{i:08d}.jpg" for i in range(n)]
        listing = Path(tmp) / "list.txt"
        listing.write_text("\n".join(names) + "\n")
        out["list_path_chars"] = round(
            float(np.mean([len(str(Path(tmp) / x)) for x in names[:1000]])), 1
        )
        n_tar = min(n, 200_000)  # writing 1 M tar members takes minutes; the cost is per member
        out["tar_images"] = n_tar
        for kind, spec, count in (
            ("list_file", str(listing), n),
            ("tar_shards", _tars(Path(tmp), n_tar), n_tar),
        ):
            gc.collect()
            tracemalloc.start()
            collection = open_collection(spec)
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert len(collection) == count
            out[f"{kind}_bytes_per_image"] = round(held / count, 1)
            out[f"{kind}_peak_bytes_per_image_while_opening"] = round(peak / count, 1)
            del collection
        out["python_list_of_str_bytes_per_image"] = round(_list_cost(names[:100_000]), 1)
    return out


def _list_cost(names: list[str]) -> float:
    """Bytes per path of the same paths held as a Python list of str (the old index)."""
    gc.collect()
    tracemalloc.start()
    held = [str(Path("/data") / x) for x in names]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held
    return size / len(names)


def _tars(root: Path, n: int, per_shard: int = 10_000) -> str:
    """Tar shards of ``n`` one-byte ``.jpg`` members (WebDataset keys), 10,000 per shard."""
    shards = -(-n // per_shard)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return str(root / f"shard-{{00000..{shards - 1:05d}}}.tar")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=60_000)
    p.add_argument("--memory-limit", default="100MB")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--index", type=int, default=0, help="measure the index of this many images")
    p.add_argument("--out", default="results/out_of_core.json")
    args = p.parse_args()
    result: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    key = "index" if args.index else "out_of_core"
    if args.index:
        result[key] = index_memory(args.index)
    else:
        result[key] = out_of_core(args.images, args.memory_limit, args.chunk, args.k, args.m)
    result[key]["max_rss_mb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(result)
    out.write_text(json.dumps(previous, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
