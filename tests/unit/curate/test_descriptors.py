"""The near-duplicate descriptor: a conv layer, GeM-pooled and whitened on the pool."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepercluster.cluster.preprocess import l2_normalize
from deepercluster.curate.descriptors import WhitenedRows, check_layer, layer_rows
from deepercluster.curate.duplicates import find_duplicates
from deepercluster.data import ArrayCollection, ClusterTransform, ClusterView
from deepercluster.models import build_backbone

N, COPIES = 64, 16


def _copy(image: np.ndarray, how: int) -> np.ndarray:
    """A JPEG re-encoded, resized or slightly cropped copy, back at 32 x 32."""
    out = Image.fromarray(image)
    if how == 0:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=40)
        out = Image.open(buf).convert("RGB")
    elif how == 1:
        out = out.resize((20, 20), Image.Resampling.BILINEAR).resize((32, 32))
    else:
        out = out.crop((2, 1, 31, 30)).resize((32, 32))
    return np.asarray(out)


def _pool() -> np.ndarray:
    """N smooth random colour fields (4 x 4 colours upsampled), then a copy of the first
    COPIES of them: (N + COPIES, 32, 32, 3) uint8."""
    rng = np.random.default_rng(0)
    images = [
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
                (32, 32), Image.Resampling.BICUBIC
            )
        )
        for _ in range(N)
    ]
    return np.stack(images + [_copy(images[j], j % 3) for j in range(COPIES)])


def _margin(rows: np.ndarray) -> float:
    """Lowest similarity of a copy to its original minus the highest of any other pair."""
    sims = rows @ rows.T
    copies, originals = N + np.arange(COPIES), np.arange(COPIES)
    low = float(sims[copies, originals].min())
    sims[copies, originals] = sims[originals, copies] = -1.0
    np.fill_diagonal(sims, -1.0)
    return low - float(sims.max())


def test_conv4_groups_exactly_the_planted_copies(tmp_path: Path) -> None:
    images = _pool()
    torch.manual_seed(0)
    net = build_backbone("small", sobel=True, resolution=32).eval()
    collection = ArrayCollection(images)
    store = layer_rows(net, collection, tmp_path / "conv4", layer="conv4", weights="seed0",
                       resolution=32, resize=32, chunk_rows=50, progress=False)  # fmt: skip
    rows = WhitenedRows(store, block_rows=32)
    n = len(images)
    found = find_duplicates(rows, np.zeros(n, np.int64), np.full((n, 0), -1), threshold=0.7,
                            max_memory=2**20, block_rows=32)  # fmt: skip
    group = found.group
    assert (group[N:] == group[:COPIES]).all() and (group[:COPIES] >= 0).all()
    assert (group[COPIES:N] == -1).all()  # the distinct images stay alone
    # A second read of the store (resumed, not recomputed) gives the same rows.
    again = layer_rows(net, collection, tmp_path / "conv4", layer="conv4", weights="seed0",
                       resolution=32, resize=32, chunk_rows=50, progress=False)  # fmt: skip
    np.testing.assert_array_equal(again.to_array(), store.to_array())

    # The final embedding of the same network, centred as curate centres it, keeps copies
    # and distinct images much less apart.
    view = ClusterView(collection, ClusterTransform(32, 32), np.arange(n))
    with torch.no_grad():
        emb = net(torch.stack([view[i][0] for i in range(n)])).numpy()
    embedding = l2_normalize(emb - emb.mean(0))
    assert _margin(rows.read(0, n)) > 0.2 > _margin(embedding) + 0.1


def test_an_unknown_layer_is_refused_in_one_line() -> None:
    net = build_backbone("small", sobel=True, resolution=32)
    check_layer(net, "embedding")
    check_layer(net, "conv3")
    with pytest.raises(ValueError, match=r"--dedup-layer 'fc7' .* use one of conv1, .*embedding"):
        check_layer(net, "fc7")
