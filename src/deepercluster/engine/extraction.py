"""Feature extraction in chunks, straight into a resumable on-disk store.

Each rank extracts its contiguous shard of the collection chunk by chunk
(``cluster.chunk_images`` images); a finished chunk is on disk before the next one starts,
so a crash or a pre-emption costs at most one chunk. Every rank walks the same number of
chunk steps (the largest shard's), so the stop check after each chunk, a collective, is
called the same number of times everywhere.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from deepercluster import distributed
from deepercluster.cluster.store import FeatureStore
from deepercluster.data import ClusterTransform, ClusterView, Collection
from deepercluster.engine.preemption import ignore_stop_signals
from deepercluster.engine.stages import SafePoint
from deepercluster.features import extract_features


def extract_to_store(
    model: nn.Module,
    collection: Collection,
    store: FeatureStore,
    *,
    transform: ClusterTransform,
    first: int,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    precision: str = "fp32",
    safe_point: SafePoint | None = None,
    progress: bool = True,
) -> float:
    """Fill ``store`` with the features of images ``first .. first + store.rows``.

    Args:
        model: the backbone, (B, 3, H, W) -> (B, D), run in eval mode.
        collection: the images.
        store: this rank's (n_r, D) store; chunks already done are skipped.
        transform: the clustering transform (centre crop).
        first: collection id of the store's row 0 (this rank's shard start).
        batch_size: images per forward pass.
        workers: DataLoader worker processes.
        seed: seeds the DataLoader's own generator (never the global RNG).
        device, precision: where and how the model runs.
        safe_point: called as ``safe_point("extract", what)`` after every chunk step.
        progress: show progress bars.

    Returns:
        Images per second over the chunks extracted in this call (0 if none was left).
    """
    view = ClusterView(collection, transform, indices=np.arange(first, first + store.rows))
    largest = math.ceil(len(collection) / distributed.world_size())
    steps = max(math.ceil(largest / store.chunk_rows), store.n_chunks)
    done_here, tic = 0, time.perf_counter()
    for chunk in range(steps):
        if store.chunks_done <= chunk < store.n_chunks:
            start, stop = store.chunk_range(chunk)
            loader = DataLoader(
                Subset(view, range(start, stop)),
                batch_size=batch_size,
                shuffle=False,
                num_workers=workers,
                # Its own generator: drawing worker seeds from the global RNG would shift the
                # dropout masks of the training that follows (resume-equals-uninterrupted).
                generator=torch.Generator().manual_seed(seed),
                worker_init_fn=ignore_stop_signals,
            )
            out = extract_features(
                model,
                loader,
                stop - start,
                store.dim,
                device=device,
                precision=precision,
                offset=first + start,
                progress=progress,
                desc=f"extract chunk {chunk + 1}/{steps}" if steps > 1 else "extract",
            )
            store.write_chunk(chunk, out.features, out.valid, out.skipped)
            done_here += stop - start
        if safe_point is not None:
            safe_point("extract", f"extraction chunk {chunk + 1} of {steps}")
    return done_here / max(time.perf_counter() - tic, 1e-9)
