"""Instance descriptors for near-duplicate detection: a conv layer, GeM-pooled and whitened.

The run's final embedding is trained to be the same for every image of a cluster (its heads
predict the cluster), so two distinct images of one cluster sit as close in it as an image and
its re-encoded copy: on the curation study's CIFAR-10 pool no threshold of it found 95% of the
planted copies without merging many distinct images (docs/results/curation.md). An earlier
conv layer still describes the image itself. As for instance retrieval (Radenović, Tolias and
Chum, TPAMI 2018, arXiv 1711.02512), its map is GeM-pooled into one L2-normalised vector per
image, then PCA-whitened on the pool itself: the pooled vectors of all images share a large
common part (ReLU outputs are all positive), and whitening removes it and evens the
directions, so that cosine similarity measures how far two images differ.

The pooled vectors are kept in a resumable :class:`~deepercluster.cluster.store.FeatureStore`
under the run folder; the whitening is fitted on them block by block and applied on every read
(:class:`WhitenedRows`), so memory stays bounded as for the embeddings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deepercluster.cluster import PCAWhitening
from deepercluster.cluster.blocks import Blocks
from deepercluster.cluster.preprocess import fit_pca, l2_normalize
from deepercluster.cluster.store import FeatureStore
from deepercluster.data import ClusterTransform, ClusterView, Collection
from deepercluster.evaluation.pooling import gem
from deepercluster.features import extract_features
from deepercluster.models import Backbone

__all__ = ["EMBEDDING", "WHITEN_DIM", "GeMLayer", "WhitenedRows", "check_layer", "layer_rows"]

EMBEDDING = "embedding"
"""``--dedup-layer`` value that compares the run's clustering embedding (the old descriptor)."""

# Whitened dimensions kept: more keeps finer detail but lets noise directions (scaled up to
# unit variance) weigh as much as real ones; 128 is what the curation study measured.
WHITEN_DIM = 128


class GeMLayer(nn.Module):
    """(B, 3, H, W) images -> (B, C) L2-normalised GeM of the backbone's conv layer ``layer``."""

    def __init__(self, backbone: Backbone, layer: str) -> None:
        super().__init__()
        self.backbone, self.layer = backbone, layer

    def forward(self, x: Tensor) -> Tensor:
        return gem(self.backbone.forward_conv(x, [self.layer])[self.layer])


def check_layer(backbone: Backbone, layer: str) -> None:
    """Raise a one-line ValueError unless ``layer`` is the embedding or a conv layer name."""
    if layer != EMBEDDING and layer not in backbone.conv_layer_names:
        raise ValueError(
            f"--dedup-layer {layer!r} is not a layer of this run's network; use one of "
            f"{', '.join([*backbone.conv_layer_names, EMBEDDING])}"
        )


@torch.no_grad()
def _channels(model: GeMLayer, resolution: int) -> int:
    return int(model(torch.zeros(1, 3, resolution, resolution)).shape[1])


def layer_rows(
    backbone: Backbone,
    collection: Collection,
    folder: Path,
    *,
    layer: str,
    weights: str,
    resolution: int,
    resize: int | None,
    chunk_rows: int,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FeatureStore:
    """(N, C) GeM-pooled, L2-normalised activations of ``layer`` in a store under ``folder``.

    Chunks already written for these weights and this layer are kept (an interrupted call
    resumes); a store written for other weights or another layer is replaced.

    Args:
        backbone: the run's network.
        collection: its N images.
        folder: where the store lives.
        layer: one of ``backbone.conv_layer_names``.
        weights: identifies the weights (e.g. the checkpoint's size and mtime).
        resolution, resize: the run's crop (:class:`~deepercluster.data.ClusterTransform`).
        chunk_rows: rows extracted and written at once.
        batch_size, workers, device, progress: the extraction.
    """
    key = {"checkpoint": weights, "chunk_rows": chunk_rows, "rows": f"gem-{layer}"}
    key_file = folder / "key.json"
    if folder.exists() and (not key_file.is_file() or json.loads(key_file.read_text()) != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key))
    model = GeMLayer(backbone, layer).eval()
    store = FeatureStore(
        folder,
        rows=len(collection),
        dim=_channels(model, resolution),
        chunk_rows=chunk_rows,
    )
    if store.complete:
        return store
    dev = torch.device(device)
    model = model.to(dev)
    transform = ClusterTransform(resolution, resize)
    for chunk in range(store.chunks_done, store.n_chunks):
        lo, hi = store.chunk_range(chunk)
        view = ClusterView(collection, transform, indices=np.arange(lo, hi))
        loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers)
        out = extract_features(
            model, loader, hi - lo, store.dim, device=dev, offset=lo, progress=progress,
            desc=f"{layer} chunk {chunk + 1}/{store.n_chunks}",
        )  # fmt: skip
        store.write_chunk(chunk, out.features, out.valid, out.skipped)
    return store


class WhitenedRows:
    """A store's rows PCA-whitened on the readable ones and L2-normalised on every read.

    Args:
        store: (N, C) rows (:func:`layer_rows`).
        block_rows: rows read at once while fitting the whitening.
        dim: whitened dimensions (at most C and half the readable rows).
    """

    def __init__(self, store: FeatureStore, *, block_rows: int, dim: int = WHITEN_DIM) -> None:
        members = np.flatnonzero(store.valid())
        if len(members) < 3:
            raise ValueError(
                f"near-duplicate descriptors need at least 3 readable images, got {len(members)}"
            )
        self.store = store
        self.pca: PCAWhitening = fit_pca(
            Blocks(store, members=members, block_rows=block_rows),
            # Whitened in as many dimensions as there are images, the centred images would be
            # mutually orthogonal, every pair equally far apart: half as many keeps them apart
            # by their content (it matters only for small pools).
            dim=min(dim, store.dim, len(members) // 2),
        )
        self.rows, self.dim = store.rows, self.pca.dim

    def read(self, start: int, stop: int) -> np.ndarray:
        return l2_normalize(self.pca.project(self.store.read(start, stop)))

    def take(self, rows: np.ndarray) -> np.ndarray:
        return l2_normalize(self.pca.project(self.store.take(rows)))
