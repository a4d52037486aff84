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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from deepercluster.config import RunConfig, load_config
from deepercluster.data import Collection
from deepercluster.data.subset import CollectionSubset
from deepercluster.engine.fit import resolve_device
from deepercluster.evaluation.compare.methods import Method
from deepercluster.evaluation.compare.progress import Step, StepLog
from deepercluster.evaluation.compare.report import markdown, plot_layers
from deepercluster.evaluation.compare.runs import pretrain, pretrain_seconds, training_curves
from deepercluster.evaluation.compare.scores import (
    ScoreSettings,
    clusters_score,
    knn_score,
    linear_score,
)
from deepercluster.evaluation.compare.settings import (
    CompareSettings,
    Plan,
    resolve_plan,
    setting_lines,
)
from deepercluster.evaluation.compare.summary import SeedScores, seed_scores, summarize
from deepercluster.evaluation.protocols.tasks import Inputs

__all__ = ["run_compare"]


def _steps(plan: Plan, seeds: int) -> list[Step]:
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
    plan = resolve_plan(settings)
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


def _write_outputs(
    settings: CompareSettings, plan: Plan, results: dict[str, list[dict[str, Any]]], wall: float
) -> None:
    seeds = [_seed_scores(m, r) for m, records in results.items() for r in records]
    summaries = summarize(seeds)
    # A resumed call reuses steps earlier calls did; the steps' own times count them all.
    steps = sum(s.pretrain_s + s.probe_s for s in seeds)
    title = f"Comparison on `{Path(settings.train_data).name}`: " + ", ".join(results)
    context = {
        "title": title,
        "setting": setting_lines(settings, plan),
        "command": settings.command,
        "machine": _machine(),
        "wall_s": wall,
        "steps_s": steps,
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
