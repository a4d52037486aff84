"""``deepercluster compare``: pre-train several methods on the same budget, score them alike.

For every method and pre-training seed: pre-train into ``--out/runs/<method>/seed<k>`` (the
random network is only initialised), then score the run with the ``eval`` protocols into
``--out/scores/<method>/seed<k>/``. After each run the report is written again from everything
known so far: ``compare.json`` (all numbers, settings, configs, wall times, machine),
``compare.md`` (the tables) and ``compare.png`` (probe accuracy per layer). Every step is
resumable: the same command after a kill resumes the unfinished run and reuses what is done.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepercluster.config import RunConfig, diff_configs, load_config
from deepercluster.data import Collection
from deepercluster.data.subset import CollectionSubset
from deepercluster.engine.fit import resolve_device
from deepercluster.evaluation.compare.methods import (
    Method,
    check_shared,
    read_base_config,
    read_variants,
    resolve_methods,
    run_config,
)
from deepercluster.evaluation.compare.progress import Step, StepLog
from deepercluster.evaluation.compare.report import markdown, plot_layers
from deepercluster.evaluation.compare.runs import pretrain, pretrain_seconds, training_curves
from deepercluster.evaluation.compare.scores import (
    ScoreSettings,
    clusters_score,
    knn_score,
    linear_score,
)
from deepercluster.evaluation.compare.summary import SeedScores, seed_scores, summarize
from deepercluster.evaluation.protocols.labels import LabelledCollection, open_labelled
from deepercluster.evaluation.protocols.linear import LinearProtocol
from deepercluster.evaluation.protocols.tasks import Inputs, balanced_subset

__all__ = ["DEFAULT_METHODS", "CompareSettings", "run_compare"]

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
class _Plan:
    methods: list[Method]
    configs: dict[tuple[str, int], RunConfig]
    train: LabelledCollection
    pretrain_ids: np.ndarray
    images: dict[str, Any]


def _plan(settings: CompareSettings) -> _Plan:
    """Check every argument and resolve every run's configuration before anything runs."""
    variants, listed = read_variants(settings.variants) if settings.variants else ({}, [])
    names = settings.methods or tuple(listed) or DEFAULT_METHODS
    methods = resolve_methods(names, variants, settings.variants)
    if settings.seeds < 1:
        raise ValueError(f"--seeds must be 1 or more, got {settings.seeds}")
    check_shared(settings.overrides)
    base = read_base_config(settings.config)
    train = open_labelled(settings.train_data, settings.train_labels, flag="--train-labels")
    test = open_labelled(settings.test_data, settings.test_labels, flag="--test-labels")
    if train.class_names != test.class_names:
        raise ValueError(
            f"train and test classes differ ({len(train.class_names)} vs "
            f"{len(test.class_names)} names); both must use the same class names"
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
    return _Plan(methods, configs, train, ids, images)


def _steps(plan: _Plan, seeds: int) -> list[Step]:
    steps = []
    for m in plan.methods:
        for seed in range(seeds):
            where = f"{m.name} seed {seed}"
            what = "initialising the network" if not m.trains else "pre-training"
            steps.append(Step(f"pretrain:{m.name}", f"{where}: {what}"))
            steps.append(Step("linear", f"{where}: linear probes per layer"))
            steps.append(Step("knn", f"{where}: kNN and k-means"))
            if _clusters(m, plan.configs[m.name, seed]):
                steps.append(Step("clusters", f"{where}: the run's clusters vs the labels"))
    return steps


def _clusters(method: Method, cfg: RunConfig) -> bool:
    return method.trains and cfg.cluster.needs_clustering


def run_compare(settings: CompareSettings) -> Path:
    """Run (or resume) the comparison; returns the path of ``compare.md``.

    Raises:
        ValueError, FileNotFoundError: bad arguments or data (before anything runs).
        RunFolderError: a run folder of ``out`` holds a run made with other settings.
    """
    start = time.perf_counter()
    plan = _plan(settings)
    out = settings.out
    device = str(resolve_device(settings.device))
    n_classes = len(plan.train.class_names)
    scoring = ScoreSettings(
        inputs=Inputs(
            checkpoint="",
            train_data=settings.train_data,
            test_data=settings.test_data,
            train_labels=settings.train_labels,
            test_labels=settings.test_labels,
            max_train=settings.max_train,
            max_test=settings.max_test,
            workers=settings.workers,
            device=device,
            progress=settings.progress,
        ),
        probe=settings.probe,
        knn_k=settings.knn_k,
        kmeans_k=n_classes,
    )
    collection: Collection = plan.train.collection
    if plan.pretrain_ids.size != len(collection):
        collection = CollectionSubset(collection, plan.pretrain_ids)
    labels = plan.train.labels[plan.pretrain_ids]
    log = StepLog(_steps(plan, settings.seeds), out / "compare.log")
    steps = iter(log.steps)
    results: dict[str, list[dict[str, Any]]] = {m.name: [] for m in plan.methods}
    for method in plan.methods:
        for seed in range(settings.seeds):
            cfg = plan.configs[method.name, seed]
            run = Path(cfg.out)
            scores = out / "scores" / method.name / f"seed{seed}"
            step = next(steps)
            log.start(step)
            reused = pretrain(
                cfg, collection, plan.images, random=not method.trains, progress=settings.progress
            )
            log.done(step, reused=reused, took=pretrain_seconds(run))
            record: dict[str, Any] = {"seed": seed, "run": str(run), "config": cfg.to_dict()}
            jobs = [("linear", linear_score), ("knn", knn_score)]
            for name, score in jobs:
                step = next(steps)
                log.start(step)
                record[name], reused = score(scoring, run, scores)
                log.done(step, reused=reused, took=record[name]["seconds"])
            if _clusters(method, cfg):
                step = next(steps)
                log.start(step)
                record["clusters"], reused = clusters_score(run, labels, scores)
                log.done(step, reused=reused, took=record["clusters"]["seconds"])
            if not settings.keep_features:
                shutil.rmtree(scores / "eval" / "cache", ignore_errors=True)
            record["pretrain_seconds"] = pretrain_seconds(run)
            record["curves"] = training_curves(run)
            results[method.name].append(record)
            _write_outputs(settings, plan, results, time.perf_counter() - start)
    return out / "compare.md"


def _seed_scores(method: str, record: dict[str, Any]) -> SeedScores:
    cfg = load_config(base=record["config"])
    score_s = sum(record[k]["seconds"] for k in ("linear", "knn", "clusters") if k in record)
    return seed_scores(
        method,
        record["seed"],
        linear=record["linear"]["result"],
        knn=record["knn"]["result"],
        clusters=record["clusters"]["result"] if "clusters" in record else None,
        curves=record["curves"],
        super_classes=cfg.cluster.n_super_classes,
        seconds=(record["pretrain_seconds"], score_s),
    )


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


def _setting_lines(settings: CompareSettings, plan: _Plan) -> list[str]:
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
        values = ", ".join(f"{k}={_lookup(cfg.to_dict(), k)}" for k in changed) or "nothing"
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


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _write_outputs(
    settings: CompareSettings, plan: _Plan, results: dict[str, list[dict[str, Any]]], wall: float
) -> None:
    seeds = [_seed_scores(m, r) for m, records in results.items() for r in records]
    summaries = summarize(seeds)
    title = f"Comparison on `{Path(settings.train_data).name}`: " + ", ".join(results)
    context = {
        "title": title,
        "setting": _setting_lines(settings, plan),
        "command": settings.command,
        "machine": _machine(),
        "wall_s": wall,
    }
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": settings.command,
        "machine": context["machine"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wall_seconds": wall,
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k not in ("out", "probe")},
            "out": str(settings.out),
            "probe": asdict(settings.probe),
        },
        "classes": plan.train.class_names,
        "pretraining_images": plan.images,
        "methods": {
            m.name: {"preset": m.preset, "set": list(m.sets), "runs": results[m.name]}
            for m in plan.methods
        },
        "summary": [asdict(s) for s in summaries],
    }
    _atomic(out / "compare.json", json.dumps(payload, indent=2) + "\n")
    _atomic(out / "compare.md", markdown(summaries, context))
    plot_layers(out / "compare.png", summaries, title="Linear probe accuracy per layer")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
