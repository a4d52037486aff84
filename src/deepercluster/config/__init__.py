"""Typed, validated run configuration (frozen dataclasses, presets, TOML and ``--set``).

Sources are applied in order: dataclass defaults, a preset (``deepercluster``, ``rotnet``,
``deepcluster``), an optional TOML file, then ``--set section.key=value`` overrides
(:mod:`~deepercluster.config.loading`). Every section is a frozen dataclass validated in
``__post_init__`` (:mod:`~deepercluster.config.sections`).
"""

from deepercluster.config.loading import PRESETS, config_from_dict, diff_configs, load_config
from deepercluster.config.sections import (
    ARCHS,
    DEVICES,
    FEATURE_STORES,
    LAYOUTS,
    PRECISIONS,
    REMOVED_SETTINGS,
    SCHEDULES,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    parse_size,
)

__all__ = [
    "ARCHS",
    "DEVICES",
    "FEATURE_STORES",
    "LAYOUTS",
    "PRECISIONS",
    "PRESETS",
    "REMOVED_SETTINGS",
    "SCHEDULES",
    "ClusterConfig",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "diff_configs",
    "load_config",
    "parse_size",
]
