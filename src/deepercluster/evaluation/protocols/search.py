"""``deepercluster search``: find the images of a collection most like a query photo.

An index folder holds the multi-scale R-MAC (or GeM) descriptors of every image of a
collection (:mod:`~.retrieval`), written chunk by chunk into a
:class:`~deepercluster.cluster.store.FeatureStore` (bounded memory, resumable), and a PCA
whitening learned on them. A query is described the same way and compared with the index
block by block, keeping a running top k: memory stays bounded by one block, whatever the
collection's size. Results go to the console and to an HTML page with thumbnails.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from deepercluster.cluster import PCAWhitening, fit_pca
from deepercluster.cluster.blocks import Blocks
from deepercluster.cluster.store import FeatureStore, write_json_atomic
from deepercluster.data import Collection, ImageCollection, open_collection
from deepercluster.data.pathmatch import display_paths
from deepercluster.engine.run_folder import load_pretrained, weights_id
from deepercluster.evaluation.protocols.retrieval import (
    RetrievalImages,
    RetrievalSettings,
    describe,
)
from deepercluster.models import Backbone

__all__ = ["build_index", "search", "write_results_page"]

_WHITENING = "whitening.npz"
_META = "index.json"
_BLOCK = 65536  # index rows compared with the query at once


def _channels(backbone: Backbone, layer: str) -> int:
    with torch.no_grad():
        probe = backbone.eval().forward_conv(torch.zeros(1, 3, 32, 32), [layer])[layer]
    return int(probe.shape[1])


def build_index(
    checkpoint: str,
    data: str,
    index: Path,
    settings: RetrievalSettings,
    *,
    chunk_rows: int = 4096,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = True,
) -> int:
    """Describe every image of ``data`` into ``index`` (resuming a partial index) and learn
    the whitening; returns the number of images indexed."""
    pre = load_pretrained(checkpoint, device="cpu")
    collection = open_collection(data)
    layer = settings.layer or pre.backbone.conv_layer_names[-1]
    # The weights file's size and time, not only its path: a run retrained or resumed in
    # place would otherwise describe queries with other weights than the index.
    meta = {"checkpoint": str(Path(checkpoint).resolve()), "data": data,
            "weights": weights_id(pre.source),
            "paths": display_paths(collection), "settings": asdict(settings)}  # fmt: skip
    meta_file = index / _META
    meta = json.loads(json.dumps(meta))  # tuples as lists, as they read back
    if meta_file.is_file() and json.loads(meta_file.read_text()) != meta:
        raise ValueError(
            f"{index} holds an index of other images, weights or settings; pass another "
            "--index folder, or delete this one to rebuild it"
        )
    index.mkdir(parents=True, exist_ok=True)
    write_json_atomic(meta_file, meta)
    store = FeatureStore(
        index / "descriptors", rows=len(collection), dim=_channels(pre.backbone, layer),
        dtype="float16", chunk_rows=chunk_rows,
    )  # fmt: skip
    for chunk in range(store.chunks_done, store.n_chunks):
        start, stop = store.chunk_range(chunk)
        images = RetrievalImages(collection, np.arange(start, stop), settings.image_size)
        values, valid = describe(
            pre.backbone, images, settings, device=torch.device(device), workers=workers,
            progress=progress,
        )  # fmt: skip
        store.write_chunk(chunk, values, valid)
    if not (index / _WHITENING).is_file():
        members = np.flatnonzero(store.valid())
        if members.size < 3:
            raise ValueError(f"{data} has {members.size} readable images; an index needs 3")
        dim = min(settings.whiten_dim or store.dim, store.dim, members.size - 1)
        whitening = fit_pca(Blocks(store, members=members), dim=dim, power=0.5)
        state = whitening.to_dict()
        partial = index / (_WHITENING + ".partial")
        with partial.open("wb") as fh:  # a file object: savez adds no suffix to it
            np.savez(
                fh, mean=state["mean"], projection=state["projection"],
                eigenvalues=state["eigenvalues"], total_variance=state["total_variance"],
            )  # fmt: skip
        partial.replace(index / _WHITENING)  # a kill leaves no truncated whitening behind
    return len(collection)


def search(
    index: Path, query: str, *, top: int = 20, device: str = "cpu"
) -> list[tuple[str, float]]:
    """The ``top`` indexed images most like ``query`` (an image file), best first:
    ``(path, cosine similarity of the whitened descriptors)``."""
    meta_file = index / _META
    if not meta_file.is_file() or not (index / _WHITENING).is_file():
        raise FileNotFoundError(
            f"{index} holds no finished index; build it first with --data IMAGES"
        )
    meta = json.loads(meta_file.read_text())
    settings = RetrievalSettings(
        **{**meta["settings"], "scales": tuple(meta["settings"]["scales"])}
    )
    pre = load_pretrained(meta["checkpoint"], device="cpu")
    with np.load(index / _WHITENING) as state:
        whitening = PCAWhitening.from_dict({k: state[k] for k in state.files})
    one = _query_image(query)
    q, ok = describe(
        pre.backbone, RetrievalImages(one, np.array([0]), settings.image_size), settings,
        device=torch.device(device), progress=False,
    )  # fmt: skip
    if not ok[0]:
        raise ValueError(f"query image {query} cannot be read; pass a photo file")
    qw = whitening.apply(q)[0]
    store = FeatureStore(
        index / "descriptors", rows=len(meta["paths"]), dim=q.shape[1], dtype="float16",
        chunk_rows=_chunk_rows(index),
    )  # fmt: skip
    valid = store.valid()
    best_scores = np.zeros(0, dtype=np.float32)
    best_rows = np.zeros(0, dtype=np.int64)
    for start, block in store.blocks(_BLOCK):
        scores = whitening.apply(block) @ qw
        scores[~valid[start : start + len(block)]] = -np.inf
        best_scores = np.concatenate([best_scores, scores])
        best_rows = np.concatenate([best_rows, np.arange(start, start + len(block))])
        keep = np.argsort(-best_scores, kind="stable")[:top]
        best_scores, best_rows = best_scores[keep], best_rows[keep]
    return [(meta["paths"][r], float(s)) for r, s in zip(best_rows, best_scores, strict=True)]


def _query_image(query: str) -> ImageCollection:
    if not Path(query).is_file():
        raise FileNotFoundError(f"query image {query} does not exist; pass a photo file")
    return ImageCollection([query], source=f"query {query}")


def _chunk_rows(index: Path) -> int:
    return int(json.loads((index / "descriptors" / "meta.json").read_text())["chunk_rows"])


def _thumbnail(collection: Collection, i: int, size: int = 160) -> str:
    try:
        image = collection.read(i)
    except Exception:  # an unreadable image shows as a broken thumbnail
        return ""
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_results_page(
    path: Path, query: str, hits: list[tuple[str, float]], data: Collection | None
) -> Path:
    """A self-contained HTML page: the query, then each hit's thumbnail, path and score.

    A hit whose image is no longer in ``data`` (moved or deleted since the index was built),
    or every hit when ``data`` is None, shows as a broken thumbnail with its path.
    """
    lookup = {p: i for i, p in enumerate(display_paths(data))} if data is not None else {}

    def thumb(p: str) -> str:
        return "" if data is None or p not in lookup else _thumbnail(data, lookup[p])

    cells = [
        f'<figure><img src="{thumb(p)}" alt="image not found"><figcaption>{n + 1}. '
        f"{s:.3f}<br>{html.escape(p)}</figcaption></figure>"
        for n, (p, s) in enumerate(hits)
    ]
    page = (
        "<!doctype html><meta charset=utf-8><title>deepercluster search</title><style>"
        "figure{display:inline-block;width:170px;margin:4px;font:11px sans-serif;"
        "word-break:break-all;vertical-align:top}</style>"
        f"<h3>Query {html.escape(query)}</h3><figure>"
        f'<img src="{_thumbnail(_query_image(query), 0, 240)}"></figure>'
        f"<h3>Top {len(hits)}</h3>" + "".join(cells)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
