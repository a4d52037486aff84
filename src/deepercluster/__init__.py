"""deepercluster: DeeperCluster pre-training (Caron et al., ICCV 2019, arXiv 1905.01278).

The public API, in three lines::

    cfg = deepercluster.load_config(preset="deepercluster", overrides=["data.path=/photos"])
    result = deepercluster.train(cfg)      # resumes when cfg.out holds a checkpoint
    result.backbone, result.clustering.labels

The names that need torch are imported on first use (PEP 562): ``import deepercluster`` (and
so the command line's entry point) does not load torch, so that ``deepercluster train`` can
choose OpenMP's settings for its own process before torch reads them.
"""

import importlib as _importlib
import typing as _typing

from deepercluster.config import (
    PRESETS,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from deepercluster.version import __version__

if _typing.TYPE_CHECKING:
    from deepercluster.data import ArrayCollection, ImageCollection, open_collection
    from deepercluster.engine.checkpoint import load_backbone
    from deepercluster.engine.clustering import Clustering
    from deepercluster.engine.fit import FitResult, fit
    from deepercluster.models import BACKBONES, build_backbone

    train = fit

_LAZY: dict[str, tuple[str, str]] = {
    "ArrayCollection": ("deepercluster.data", "ArrayCollection"),
    "ImageCollection": ("deepercluster.data", "ImageCollection"),
    "open_collection": ("deepercluster.data", "open_collection"),
    "load_backbone": ("deepercluster.engine.checkpoint", "load_backbone"),
    "Clustering": ("deepercluster.engine.clustering", "Clustering"),
    "FitResult": ("deepercluster.engine.fit", "FitResult"),
    "fit": ("deepercluster.engine.fit", "fit"),
    # ``deepercluster.train(config)``: the same function as ``fit``.
    "train": ("deepercluster.engine.fit", "fit"),
    "BACKBONES": ("deepercluster.models", "BACKBONES"),
    "build_backbone": ("deepercluster.models", "build_backbone"),
}


def __getattr__(name: str) -> _typing.Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'deepercluster' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(_importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
