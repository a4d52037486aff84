"""deepercluster: DeeperCluster pre-training (Caron et al., ICCV 2019, arXiv 1905.01278).

The public API, in three lines::

    cfg = deepercluster.load_config(preset="deepercluster", overrides=["data.path=/photos"])
    result = deepercluster.train(cfg)      # resumes when cfg.out holds a checkpoint
    result.backbone, result.clustering.labels
"""

from deepercluster.config import (
    PRESETS,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from deepercluster.data import ArrayCollection, ImageCollection, open_collection
from deepercluster.engine.checkpoint import load_backbone
from deepercluster.engine.clustering import Clustering
from deepercluster.engine.fit import FitResult, fit
from deepercluster.models import BACKBONES, build_backbone
from deepercluster.version import __version__

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
