"""deepercluster: DeeperCluster pre-training (Caron et al., ICCV 2019, arXiv 1905.01278).

The public API, in three lines::

    cfg = deepercluster.load_config(preset="deepercluster", overrides=["data.path=/photos"])
    result = deepercluster.train(cfg)      # resumes when cfg.out holds a checkpoint
    result.backbone, result.clustering.labels
"""

# First, before anything imports torch: torch's allocator reads its huge-page switch once, at
# its first allocation (allocator.request_huge_pages).
from deepercluster.allocator import request_huge_pages as _request_huge_pages

_request_huge_pages()

from deepercluster.config import (  # noqa: E402
    PRESETS,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from deepercluster.data import ArrayCollection, ImageCollection, open_collection  # noqa: E402
from deepercluster.engine.checkpoint import load_backbone  # noqa: E402
from deepercluster.engine.clustering import Clustering  # noqa: E402
from deepercluster.engine.fit import FitResult, fit  # noqa: E402
from deepercluster.models import BACKBONES, build_backbone  # noqa: E402
from deepercluster.version import __version__  # noqa: E402

train = fit
"""``deepercluster.train(config)``: the same function as :func:`fit`."""

__all__ = [
    "BACKBONES",
    "PRESETS",
    "ArrayCollection",
    "ClusterConfig",
    "Clustering",
    "DataConfig",
    "FitResult",
    "ImageCollection",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "__version__",
    "build_backbone",
    "fit",
    "load_backbone",
    "load_config",
    "open_collection",
    "train",
]
