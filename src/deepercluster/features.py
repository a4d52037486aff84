"""Feature extraction over a whole collection, in eval mode, on non-rotated centre crops.

The features are the backbone's output (VGG-16: fc7 before its ReLU), the input of the
clustering step (ALGORITHM.md section 2, step 1). Unreadable images are reported, not fatal:
their rows stay zero and ``valid`` is False, so the clustering leaves them out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm


@dataclass
class ExtractedFeatures:
    """Features of every image of a collection.

    Attributes:
        features: (N, D) float32; rows of unreadable images are zero.
        valid: (N,) bool, False where the image could not be read.
        skipped: (index, reason) of every unreadable image.
        images_per_second: extraction throughput.
    """

    features: np.ndarray
    valid: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    images_per_second: float = 0.0


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions and products natively, not emulated.

    On the CPU that is oneDNN's own test (AVX-512 class or newer: bf16 instructions, AMX, or
    AVX-512's fast conversions); on CUDA a GPU of compute capability 8 or more (Ampere on).
    Without it autocast still works but converts every operand, and a bf16 step runs many
    times slower than fp32 (``python -m bench train`` measures it).
    """
    if device.type == "cuda":
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def autocast(device: torch.device, precision: str) -> torch.autocast | nullcontext[None]:
    """bf16 autocast on CPU/CUDA when asked for, a no-op context otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor, list[str]]],
    n_images: int,
    feature_dim: int,
    *,
    device: torch.device,
    precision: str = "fp32",
    offset: int = 0,
    progress: bool = True,
    desc: str = "extract",
) -> ExtractedFeatures:
    """Run ``model`` over ``loader`` and gather features by dataset index.

    Args:
        model: maps (B, 3, H, W) normalised images to (B, D) features.
        loader: yields (images (B, 3, H, W), indices (B,), errors: list of B strings, "" = ok),
            as produced by :class:`deepercluster.data.ClusterView` batches.
        n_images: N, the number of images the loader covers (indices in [offset, offset + N)).
        feature_dim: D.
        device: where the model runs.
        precision: ``fp32`` or ``bf16`` (autocast; features are stored as float32).
        offset: first collection index of the loader's contiguous shard (distributed runs:
            each rank extracts its own slice of the collection).
        progress: show a progress bar.
        desc: the bar's label, e.g. ``"extract chunk 2/6"``.

    Returns:
        :class:`ExtractedFeatures` with (N, D) features in collection order; ``skipped``
        holds collection indices.
    """
    was_training = model.training
    model.eval()
    features = np.zeros((n_images, feature_dim), dtype=np.float32)
    valid = np.zeros(n_images, dtype=bool)
    skipped: list[tuple[int, str]] = []
    start = time.perf_counter()
    seen = 0
    bar = tqdm(total=n_images, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for images, indices, errors in loader:
            ok = torch.tensor([not e for e in errors], dtype=torch.bool)
            for i in torch.nonzero(~ok).flatten().tolist():
                skipped.append((int(indices[i]), errors[i]))
            if ok.any():
                # Boolean indexing copies the batch: only pay for it when an image was bad.
                every = bool(ok.all())
                batch = (images if every else images[ok]).to(device, non_blocking=True)
                with autocast(device, precision):
                    out = model(batch)
                idx = (indices if every else indices[ok]).numpy() - offset
                features[idx] = out.float().cpu().numpy()
                valid[idx] = True
            seen += len(errors)
            bar.update(len(errors))
    finally:
        bar.close()
        model.train(was_training)
    elapsed = max(time.perf_counter() - start, 1e-9)
    return ExtractedFeatures(features, valid, skipped, seen / elapsed)
