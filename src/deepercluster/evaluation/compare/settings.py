"""What a comparison was asked, checked and resolved into one configuration per run.

:func:`resolve_plan` reads the variants and the base configuration, opens the labelled images, picks
the pre-training sample and resolves every (method, seed)'s configuration before anything
runs, so a bad argument fails at once; :func:`setting_lines` describes the result for the
report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepercluster.config import RunConfig, diff_configs, load_config
from deepercluster.evaluation.compare.methods import (
    Method,
    check_shared,
    read_base_config,
    read_variants,
    resolve_methods,
    run_config,
    setting_value,
)
from deepercluster.evaluation.protocols.labels import LabelledCollection, open_train_test
from deepercluster.evaluation.protocols.linear import LinearProtocol
from deepercluster.evaluation.protocols.tasks import balanced_subset

__all__ = ["DEFAULT_METHODS", "CompareSettings", "Plan", "resolve_plan", "setting_lines"]

DEFAULT_METHODS = ("random", "rotnet", "deepcluster", "deepercluster")


@dataclass(frozen=True)
class CompareSettings:
    """What ``deepercluster compare`` was asked (see its ``--help``).

    Attributes:
        train_data: labelled images to pre-train on and to fit the probes on.
        test_data: labelled images to score on.
        out: the comparison's folder.
        methods: method names (empty: the variants file's ``methods``, else the defaults).
        seeds: pre-training seeds 0..seeds-1 per method.
        overrides: ``section.key=value`` settings for every method (the shared budget).
        config: TOML file of shared settings, below each method's preset.
        variants: TOML file of ``[variant.NAME]`` methods.
        train_labels: CSV (path, label) for ``train_data`` (default: from the data).
        test_labels: the same for ``test_data``.
        max_train: pre-train and fit probes on at most this many training images,
            class-balanced (0: all labelled images).
        max_test: score on at most this many test images, class-balanced (0: all).
        probe: the linear-probe protocol.
        knn_k: neighbours of the kNN classifier.
        device: device of the pre-training and the scores (``auto``: CUDA when present).
        workers: DataLoader workers of the scores' feature extraction.
        progress: show progress bars inside each step.
        keep_features: keep each run's cached probe features (they can be large).
        command: the command as typed, for the report.
    """

    train_data: str
    test_data: str
    out: Path
    methods: tuple[str, ...] = ()
    seeds: int = 3
    overrides: tuple[str, ...] = ()
    config: str | None = None
    variants: str | None = None
    train_labels: str | None = None
    test_labels: str | None = None
    max_train: int = 0
    max_test: int = 0
    probe: LinearProtocol = field(
        default_factory=lambda: LinearProtocol(epochs=10, seeds=(0,), widen=2)
    )
    knn_k: int = 20
    device: str = "auto"
    workers: int = 0
    progress: bool = False
    keep_features: bool = False
    command: str = ""


@dataclass(frozen=True)
class Plan:
    """The resolved comparison: methods, run configurations, images to pre-train on."""

    methods: list[Method]
    configs: dict[tuple[str, int], RunConfig]
    train: LabelledCollection
    pretrain_ids: np.ndarray
    images: dict[str, Any]


def resolve_plan(settings: CompareSettings) -> Plan:
    """Check every argument and resolve every run's configuration before anything runs."""
    variants, listed = read_variants(settings.variants) if settings.variants else ({}, [])
    names = settings.methods or tuple(listed) or DEFAULT_METHODS
    methods = resolve_methods(names, variants, settings.variants)
    if settings.seeds < 1:
        raise ValueError(f"--seeds must be 1 or more, got {settings.seeds}")
    check_shared(settings.overrides)
    base = read_base_config(settings.config)
    train, _ = open_train_test(
        settings.train_data, settings.test_data, settings.train_labels, settings.test_labels
    )
    # The probes fit on these same images (balanced_subset with the same cap and seed).
    ids = balanced_subset(train.labels, settings.max_train)
    images = {
        "train_data": settings.train_data,
        "train_labels": settings.train_labels,
        "max_train": settings.max_train,
        "count": int(ids.size),
    }
    configs = {
        (m.name, seed): run_config(
            m,
            base=base,
            overrides=settings.overrides,
            seed=seed,
            data=settings.train_data,
            out=settings.out / "runs" / m.name / f"seed{seed}",
            device=settings.device,
        )
        for m in methods
        for seed in range(settings.seeds)
    }
    return Plan(methods, configs, train, ids, images)


def setting_lines(settings: CompareSettings, plan: Plan) -> list[str]:
    """The report's description of the data, the shared budget, each method and the scores."""
    first = plan.configs[plan.methods[0].name, 0]
    t, d, m = first.train, first.data, first.model
    probe = settings.probe
    shared = load_config(base=read_base_config(settings.config), overrides=settings.overrides)
    lines = [
        f"Pre-training and probe-training images: {plan.images['count']:,} of "
        f"`{settings.train_data}`"
        + (f" (at most {settings.max_train:,}, class-balanced)" if settings.max_train else "")
        + f"; {len(plan.train.class_names)} classes; labels never used in pre-training.",
        f"Test images: `{settings.test_data}`"
        + (f", at most {settings.max_test:,} (class-balanced)" if settings.max_test else "")
        + ".",
        f"Same budget for every method: `{m.arch}` network at {d.resolution} px, "
        f"{_plural(t.epochs, 'epoch')}, batch {t.batch_size}, SGD lr {t.lr:g} ({t.schedule}), "
        f"momentum {t.momentum:g}, weight decay {t.weight_decay:g}; pre-training seeds "
        f"0..{settings.seeds - 1} (the random row: the initialisation of each seed).",
    ]
    for method in plan.methods:
        cfg = plan.configs[method.name, 0]
        changed = [
            k
            for k in diff_configs(shared.to_dict(), cfg.to_dict())
            if k not in ("out", "data.path", "train.seed", "train.device")
        ]
        values = ", ".join(f"{k}={setting_value(cfg.to_dict(), k)}" for k in changed) or "nothing"
        lines.append(f"`{method.name}`: preset {method.preset}; differs from the base in {values}.")
    lines.append(
        f"Linear probes on every conv layer, pooled to at most {probe.max_dim:,} dims: "
        f"{_plural(probe.epochs, 'epoch')}, batch {probe.batch_size}, lr_0 in "
        f"{{{', '.join(f'{v:g}' for v in probe.lrs)}}} × wd in "
        f"{{{', '.join(f'{v:g}' for v in probe.weight_decays)}}} chosen on "
        f"{probe.holdout:.0%} of the training images held out (the grid grows past an edge "
        f"up to {probe.widen} times), final probes with seeds {list(probe.seeds)}."
    )
    lines.append(
        f"kNN: k = {settings.knn_k}, cosine, votes exp(s/0.07); k-means with "
        f"{len(plan.train.class_names)} clusters on the PCA-whitened test features."
    )
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
