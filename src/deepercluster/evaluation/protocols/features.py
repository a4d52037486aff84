"""Per-layer features of a frozen backbone, computed once and cached on disk.

The paper's probes (docs/ALGORITHM.md section 7) read every conv layer, average-pooled until
its dimension is below a bound (10,000). Training a probe for tens of epochs on features
recomputed at each epoch would cost tens of forward passes; here one pass over the images
fills one ``(N, C * s * s)`` float16 array per layer (a ``.npy`` memmap under the output
folder) plus the (N, D) final features, and every probe reads those. A later command with the
same backbone file, images and pooling bound finds them and skips the extraction.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from deepercluster.data import ClusterTransform, ClusterView, Collection
from deepercluster.features import autocast
from deepercluster.models import Backbone

__all__ = ["FINAL", "LayerFeatures", "extract_layers", "pooled_side"]

FINAL = "final"
"""Name of the backbone's output features (its ``forward``) among the cached layers."""


def pooled_side(channels: int, height: int, width: int, max_dim: int) -> int:
    """Side s of the largest s x s average-pooling grid with ``channels * s * s <= max_dim``.

    Never more than the map itself (no upsampling) and at least 1 (a global average).
    """
    if max_dim < 1:
        raise ValueError(f"the probe dimension bound must be positive, got {max_dim}")
    side = int((max_dim / channels) ** 0.5)
    while channels * (side + 1) ** 2 <= max_dim:  # float rounding of the square root
        side += 1
    while side > 1 and channels * side**2 > max_dim:
        side -= 1
    return max(1, min(side, height, width))


@dataclass(frozen=True)
class LayerFeatures:
    """Cached features of one image set.

    Attributes:
        layers: ``{layer name: (N, dim) array}``, float16 conv features (memmaps) and the
            float32 final features under :data:`FINAL`.
        grids: ``{conv layer name: (C, s)}``, channels and pooled side.
        labels: (N,) int64 class labels (-1 = unknown).
        valid: (N,) bool, False for unreadable images (their rows are zero).
        seconds: extraction time (0 when read from the cache).
    """

    layers: dict[str, np.ndarray]
    grids: dict[str, tuple[int, int]]
    labels: np.ndarray
    valid: np.ndarray
    seconds: float


def _load_cache(folder: Path, names: Sequence[str]) -> LayerFeatures | None:
    meta_file = folder / "meta.json"
    if not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    if not set(names) <= set(meta["layers"]):
        return None
    layers = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    grids = {n: (int(c), int(s)) for n, (c, s) in meta["grids"].items() if n in names}
    return LayerFeatures(
        layers, grids, np.load(folder / "labels.npy"), np.load(folder / "valid.npy"), 0.0
    )


@torch.no_grad()
def extract_layers(
    backbone: Backbone,
    collection: Collection,
    labels: np.ndarray,
    indices: np.ndarray,
    names: Sequence[str],
    *,
    resolution: int,
    resize: int | None,
    max_dim: int,
    cache_root: Path,
    source_id: str,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | None = None,
    precision: str = "fp32",
    progress: bool = True,
) -> LayerFeatures:
    """Pooled conv activations (and/or final features) of ``collection[indices]``, cached.

    Args:
        backbone: the frozen trunk.
        collection: images; ``indices`` (M,) selects which, in that order.
        labels: (len(collection),) class labels; the result keeps ``labels[indices]``.
        names: conv layer names of ``backbone.conv_layer_names`` and/or :data:`FINAL`.
        resolution: centre-crop side fed to the network.
        resize: shorter side before the crop (None: R * 256 / 224).
        max_dim: bound on ``C * s * s`` of each pooled conv layer.
        cache_root: folder for the cache; the sub-folder is named by a hash of the backbone
            file identity (``source_id``), the images, the crop, the bound and ``names``.
        source_id: identifies the weights (e.g. path, size and mtime of the checkpoint).
        batch_size, workers: DataLoader settings.
        device: where the network runs (default CPU).
        precision: ``fp32`` or ``bf16`` autocast.
        progress: show a progress bar.

    Returns:
        :class:`LayerFeatures` with one (M, dim) array per requested name.
    """
    device = device or torch.device("cpu")
    indices = np.asarray(indices, dtype=np.int64)
    key = {
        "weights": source_id,
        "images": [len(collection), hashlib.sha256(indices.tobytes()).hexdigest()],
        "first": collection.path(int(indices[0])) if len(indices) else "",
        "crop": [resolution, resize],
        "max_dim": max_dim,
        "names": sorted(names),
    }
    folder = cache_root / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cached = _load_cache(folder, names)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    conv = [n for n in names if n != FINAL]
    view = ClusterView(collection, ClusterTransform(resolution, resize), indices)
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers)
    backbone = backbone.to(device).eval()
    n = len(indices)
    out: dict[str, np.ndarray] = {}
    grids: dict[str, tuple[int, int]] = {}
    valid = np.zeros(n, dtype=bool)
    position = {int(idx): j for j, idx in enumerate(indices)}
    start = time.perf_counter()
    for images, idx, errors in tqdm(loader, desc="features", disable=not progress, leave=False):
        rows = np.array([position[int(i)] for i in idx])
        ok = torch.tensor([not e for e in errors])
        valid[rows[ok.numpy()]] = True
        x = images.to(device)
        with autocast(device, precision):
            maps = backbone.forward_conv(x, conv) if conv else {}
            if FINAL in names:
                maps[FINAL] = backbone(x)
        for name, m in maps.items():
            m = m.float()
            if name != FINAL:
                if name not in grids:
                    c, h, w = m.shape[1:]
                    grids[name] = (c, pooled_side(c, h, w, max_dim))
                m = F.adaptive_avg_pool2d(m, grids[name][1]).flatten(1)
            if name not in out:
                # conv features in float16 (they are many), the final ones in float32
                dtype = np.float32 if name == FINAL else np.float16
                out[name] = np.lib.format.open_memmap(
                    folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(n, m.shape[1])
                )
            out[name][rows] = (m * ok[:, None].to(m.device)).cpu().numpy()
    seconds = time.perf_counter() - start
    for array in out.values():
        array.flush()  # type: ignore[attr-defined]
    np.save(folder / "labels.npy", np.asarray(labels)[indices])
    np.save(folder / "valid.npy", valid)
    meta = {"layers": sorted(out), "grids": {k: list(v) for k, v in grids.items()}, "n": n}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks complete
    return LayerFeatures(out, grids, np.asarray(labels)[indices], valid, seconds)
