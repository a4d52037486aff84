"""Instance retrieval with a pre-trained trunk (the paper's section 4.3, Oxford and Paris).

DeeperCluster (arXiv 1905.01278, Table 4) follows Tolias et al. (arXiv 1511.05879): R-MAC of
the last conv layer, several input scales summed, L2-normalised, PCA-whitened with a whitening
learned on another set (Paris for Oxford and vice versa), then the database ranked by cosine
similarity and scored by mAP. Here images are shrunk so their longer side is at most
``image_size`` (never enlarged), then rescaled by each factor of ``scales``; the per-scale
descriptors (R-MAC, or GeM as an option) are summed and L2-normalised, as cirtorch's
``extract_ms`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from deepercluster.cluster import PCAWhitening, fit_pca, l2_normalize
from deepercluster.data import BadImageError, Collection
from deepercluster.data.transforms import to_normalized_tensor
from deepercluster.evaluation.pooling import gem, rmac
from deepercluster.features import autocast
from deepercluster.models import Backbone

__all__ = ["RetrievalImages", "RetrievalSettings", "describe", "fit_whitening", "rank"]

# Each scaled input keeps at least this many pixels on its short side: three or five 2x2
# max-pools must leave a map to pool (upsampled when a small image would go below).
_MIN_SIDE = 16


@dataclass(frozen=True)
class RetrievalSettings:
    """How descriptors are computed.

    Attributes:
        pooling: "rmac" (the paper's) or "gem".
        levels: R-MAC region scales L (3 in Tolias et al.).
        p: the GeM exponent.
        layer: conv layer pooled (empty: the last one).
        scales: input scale factors whose descriptors are summed.
        image_size: longest image side at scale 1, in pixels (1024 in the revisited
            benchmarks); larger images are shrunk, smaller ones kept.
        whiten_dim: output dimension of the whitening (0: as many as the data allow).
    """

    pooling: str = "rmac"
    levels: int = 3
    p: float = 3.0
    layer: str = ""
    scales: tuple[float, ...] = (1.0, 2**-0.5, 0.5)
    image_size: int = 1024
    whiten_dim: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in ("rmac", "gem"):
            raise ValueError(f"unknown pooling {self.pooling!r}; use rmac or gem")
        if not self.scales or min(self.scales) <= 0 or self.image_size < _MIN_SIDE:
            raise ValueError(
                f"scales must be positive and image size >= {_MIN_SIDE} px, got "
                f"{self.scales} and {self.image_size}"
            )


class RetrievalImages(Dataset[tuple[Tensor, bool]]):
    """``(image (3, H, W) ImageNet-normalised, readable)`` of ``collection[indices]``.

    A query with a box is cropped to it first (the revisited protocol); the longer side is
    then shrunk to ``image_size``. An unreadable image gives a 1-pixel zero image and False.
    """

    def __init__(
        self,
        collection: Collection,
        indices: np.ndarray,
        image_size: int,
        boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
    ) -> None:
        self.read = collection.read
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_size = image_size
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Tensor, bool]:
        try:
            image = self.read(int(self.indices[j]))
        except BadImageError:
            return torch.zeros(3, 1, 1), False
        box = self.boxes[j]
        if box is not None:
            x1, y1, x2, y2 = (round(v) for v in box)
            image = image.crop((x1, y1, x2, y2))
        image.thumbnail((self.image_size, self.image_size))
        return to_normalized_tensor(image), True


def _pool(maps: Tensor, settings: RetrievalSettings) -> Tensor:
    return rmac(maps, settings.levels) if settings.pooling == "rmac" else gem(maps, settings.p)


@torch.no_grad()
def describe(
    backbone: Backbone,
    images: RetrievalImages,
    settings: RetrievalSettings,
    *,
    device: torch.device,
    workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale descriptors of every image, one image at a time (sizes differ).

    Returns:
        ``((N, C) float32 L2-normalised descriptors, (N,) bool readable)``; unreadable
        images get zero rows.
    """
    layer = settings.layer or backbone.conv_layer_names[-1]
    backbone = backbone.to(device).eval()
    loader = DataLoader(images, batch_size=None, num_workers=workers)
    rows: list[Tensor] = []
    valid = np.zeros(len(images), dtype=bool)
    for j, (x, ok) in enumerate(
        tqdm(loader, desc="descriptors", disable=not progress, leave=False)
    ):
        valid[j] = bool(ok)
        total: Tensor | None = None
        for scale in settings.scales if ok else ():
            h, w = x.shape[1:]
            grow = max(1.0, _MIN_SIDE / (scale * min(h, w)))
            size = (max(1, round(h * scale * grow)), max(1, round(w * scale * grow)))
            xs = x[None].to(device)
            if size != (h, w):
                xs = F.interpolate(xs, size=size, mode="bilinear", align_corners=False)
            with autocast(device, precision):
                maps = backbone.forward_conv(xs, [layer])[layer]
            d = _pool(maps, settings)
            total = d if total is None else total + d
        if total is None:
            rows.append(torch.zeros(1, 0))
        else:
            rows.append((total / total.norm(dim=1, keepdim=True).clamp(min=1e-12)).cpu())
    dim = max((r.shape[1] for r in rows), default=0)
    out = np.zeros((len(rows), dim), dtype=np.float32)
    for j, r in enumerate(rows):
        if r.shape[1]:
            out[j] = r[0].numpy()
    return out, valid


def fit_whitening(descriptors: np.ndarray, dim: int = 0) -> PCAWhitening:
    """PCA whitening (power 0.5) learned on ``descriptors`` (N, C), the separate set.

    ``dim`` 0 keeps ``min(C, N - 1)`` components: a whitening needs more images than
    dimensions to estimate every direction's variance.
    """
    n, c = descriptors.shape
    if n < 3:
        raise ValueError(
            f"the whitening set gave {n} readable images; learning a whitening needs at least "
            "3 (hundreds or more in practice): give --whiten-data a larger collection"
        )
    return fit_pca(descriptors, dim=min(dim or c, c, n - 1), power=0.5)


def rank(
    queries: np.ndarray,
    database: np.ndarray,
    whitening: PCAWhitening | None,
    readable: np.ndarray | None = None,
) -> np.ndarray:
    """Database indices for each query, most similar first: (Q, C), (N, C) -> (Q, N).

    Whitened (and re-normalised) when ``whitening`` is given; cosine similarity either way.
    Unreadable database images (``readable`` (N,) False) rank last: their zero descriptor
    would otherwise whiten into an ordinary vector and take a place among the answers.
    """
    if whitening is not None:
        queries, database = whitening.apply(queries), whitening.apply(database)
    else:
        queries, database = l2_normalize(queries), l2_normalize(database)
    scores = queries @ database.T
    if readable is not None:
        scores[:, ~readable] = -np.inf
    order: np.ndarray = np.argsort(-scores, axis=1, kind="stable")
    return order
