"""Curated vs random subset of an uncurated CIFAR-10 pool (issue 32's evidence), resumably.

Stages, each skipped when its output exists (run the same command again to resume):

1. ``pool``: the long-tailed pool with planted near-duplicates and noise images
   (``build_pool.py``) under ``--scratch``.
2. ``pretrain``: a short DeeperCluster pre-training on the pool (``pretrain.toml``): its network
   and clusters are what curation uses.
3. ``curate``: ``deepercluster curate`` at each ``--thresholds`` value with its default
   near-duplicate descriptor (``--dedup-layer``, a conv layer; after the longest pre-training
   also with each of ``--other-layers``, for the detection table only), and at each
   ``--cosine-thresholds`` value with the plain cosine instead of the scaled similarity,
   ``--size`` images; at ``--probe-threshold`` once more searching every cluster (how many
   copies the cluster-restricted search loses); and random subsets of the same size (one per
   ``--seeds`` value).
4. ``measure`` (cheap): class entropy and KL divergence to uniform over the 10 classes, the
   share of noise, the planted pairs left with both members in the subset, and on the whole
   pool the planted copies found (grouped with their original) and the false merges (also
   counted with the noise images left out: they resemble each other under any descriptor,
   and with the pairs of ``--audit``, CIFAR-10's own duplicates judged by eye, as one origin).
5. ``probes`` (only with ``--probes``; hours on a CPU): pre-train from scratch on the curated
   subset (at ``--probe-threshold``) and on the random subset with the same settings, once per
   seed, then ``deepercluster eval linear`` and ``eval knn`` on CIFAR-10 (probe trained on
   ``--probe-per-class`` labelled training images per class, tested on ``--max-test``).

Writes ``results/curation.json`` and ``docs/results/curation.md``; every number comes from the
files of the stages above.

Usage (from the repository root)::

    nice -n 10 python studies/curation/run_study.py                 # stages 1-4
    nice -n 10 python studies/curation/run_study.py --probes        # and the probes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_pool import CLASSES, build_pool  # noqa: E402
from report import audit_montage, write_markdown  # noqa: E402

from deepercluster.curate.measure import class_balance, planted_duplicates  # noqa: E402

EXE = [sys.executable, "-m", "deepercluster"]


def sh(cmd: list[str], log: list[dict[str, Any]]) -> None:
    """Run one command, record it with its wall time."""
    print("$ " + shlex.join(cmd), flush=True)
    tic = time.perf_counter()
    subprocess.run(cmd, check=True)
    log.append({"command": shlex.join(cmd), "seconds": round(time.perf_counter() - tic, 1)})


def read_pool(table: Path) -> list[dict[str, str]]:
    with table.open(newline="") as fh:
        return list(csv.DictReader(fh))


def random_subset(
    pool: list[dict[str, str]], images: Path, size: int, seed: int, out: Path
) -> Path:
    """A uniform random subset of the pool, as a list file ``train --data`` reads."""
    if not out.exists():
        chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size, replace=False))
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(("path",))
            writer.writerows((str(images / pool[i]["file"]),) for i in chosen)
    return out


def subset_names(listing: Path) -> set[str]:
    with listing.open(newline="") as fh:
        return {Path(r["path"]).name for r in csv.DictReader(fh)}


def measure_subset(pool: list[dict[str, str]], names: set[str]) -> dict[str, Any]:
    """Class balance, noise and planted pairs left in a subset (by file name)."""
    counts = np.array([sum(r["file"] in names and r["class"] == c for r in pool) for c in CLASSES])
    copies = [r for r in pool if r["kind"] == "copy" and r["file"] in names]
    return {
        "images": len(names),
        "per_class": dict(zip(CLASSES, counts.tolist(), strict=True)),
        **{f"class_{k}": v for k, v in class_balance(counts).items()},
        "noise": sum(r["kind"] == "noise" and r["file"] in names for r in pool),
        "planted_pairs_left": sum(r["original"] in names for r in copies),
        "planted_copies_in": len(copies),
    }


def read_audit(path: Path) -> list[dict[str, str]]:
    """Pairs of pool images judged by eye (``duplicate`` or ``distinct``): CIFAR-10's training
    set holds near-duplicates of its own, which no planting made."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def measure_detection(
    pool: list[dict[str, str]], groups_csv: Path, audit: list[dict[str, str]]
) -> dict[str, Any]:
    """Planted copies grouped with their original, and false merges, over the whole pool: as
    they are, without the noise images (they resemble each other under any descriptor), and
    without noise with the audited duplicates of CIFAR-10 itself as one origin. ``unaudited``:
    the pairs of distinct real origins merged that the audit has not judged yet."""
    index = {r["file"]: i for i, r in enumerate(pool)}
    group = np.full(len(pool), -1, dtype=np.int64)
    with groups_csv.open(newline="") as fh:
        for r in csv.DictReader(fh):
            group[index[Path(r["path"]).name]] = int(r["group"])
    original = np.array([index[r["original"]] if r["original"] else -1 for r in pool])
    noise = np.array([r["kind"] == "noise" for r in pool])
    same_as = np.full(len(pool), -1, dtype=np.int64)
    for r in audit:
        if r["verdict"] == "duplicate":
            same_as[index[r["b"]]] = index[r["a"]]
    clean = np.where(noise, -1, group)
    audited = planted_duplicates(clean, original, same_as=same_as)
    judged = {(r["a"], r["b"]) for r in audit}
    origin = np.where(original >= 0, original, np.arange(len(pool)))
    unaudited = set()
    for g in np.unique(clean[clean >= 0]):
        names = sorted({pool[i]["file"] for i in origin[clean == g]})
        unaudited |= {(a, b) for i, a in enumerate(names) for b in names[i + 1 :]} - judged
    return planted_duplicates(group, original) | {
        "false_merges_without_noise": planted_duplicates(clean, original)["false_merges"],
        "false_merges_audited": audited["false_merges"],
        "audited_per_removed": audited["false_merges"] / max(audited["removed"], 1),
        "unaudited": sorted(unaudited),
    }


def prepare_probe_data(cifar: Path, scratch: Path, per_class: int) -> Path:
    """The labelled images of the linear probe: the first ``per_class`` of each class
    (train.tar extracted once under ``scratch``, the subset as symlinks)."""
    train = scratch / "train"
    if not train.exists():
        with tarfile.open(cifar / "train.tar") as tar:
            tar.extractall(scratch, filter="data")
    subset = scratch / f"probe-{per_class}-per-class"
    if not subset.exists():
        tmp = subset.with_name(subset.name + ".tmp")
        for cls in sorted(os.listdir(train)):
            (tmp / cls).mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(train / cls))[:per_class]:
                (tmp / cls / name).symlink_to(train / cls / name)
        tmp.rename(subset)
    return subset


def probes(
    args: argparse.Namespace, subsets: dict[str, Path], log: list[dict[str, Any]]
) -> dict[str, Any]:
    """Pre-train on each subset once per seed, then linear probe and kNN on CIFAR-10; the
    ``initial`` row scores the same network untrained (what pre-training has to beat)."""
    probe_data = prepare_probe_data(args.cifar, args.scratch, args.probe_per_class)
    out: dict[str, Any] = {}
    for name, listing in {**subsets, "initial": None}.items():
        for seed in args.seeds:
            run = args.out / "probes" / f"{name}-seed{seed}"
            if listing is None:
                initial_network(run, seed)
            elif not (run / "summary.json").exists():
                config = str(HERE / "pretrain.toml")
                sh([*EXE, "train", "--config", config, "--data", str(listing), "--out", str(run),
                    "--set", f"train.seed={seed}", "--no-progress"], log)  # fmt: skip
            common = ["--checkpoint", str(run), "--train-data", str(probe_data), "--test-data",
                      str(args.cifar / "test.tar"), "--max-test", str(args.max_test),
                      "--no-progress", "--threads", "1"]  # fmt: skip
            if not (run / "eval" / "linear.json").exists():
                sh([*EXE, "eval", "linear", *common, "--epochs", "5", "--seeds", "0"], log)
            if not (run / "eval" / "knn.json").exists():
                sh([*EXE, "eval", "knn", *common, "--k", "20"], log)
            linear = json.loads((run / "eval" / "linear.json").read_text())
            knn = json.loads((run / "eval" / "knn.json").read_text())
            best = max(linear["layers"], key=lambda r: r["mean"])
            out.setdefault(name, []).append(
                {
                    "seed": seed,
                    "linear_best": best["mean"],
                    "linear_layer": best["layer"],
                    "knn": next(iter(knn["knn_top1"].values())),
                }
            )
    for rows in out.values():
        per_seed = list(rows)
        for key in ("linear_best", "knn"):
            values = [r[key] for r in per_seed]
            rows.append(
                {f"{key}_mean": float(np.mean(values)), f"{key}_std": float(np.std(values))}
            )
    return out


def initial_network(run: Path, seed: int) -> None:
    """The pre-training's network as its seed draws it, saved as a backbone to score."""
    from deepercluster.config import load_config
    from deepercluster.evaluation.compare.runs import save_initial_network

    if not (run / "backbone.pth").exists():
        cfg = load_config(toml_path=HERE / "pretrain.toml", overrides=[f"train.seed={seed}"])
        save_initial_network(run, cfg)


def curate_pool(
    args: argparse.Namespace,
    pool: list[dict[str, str]],
    images: Path,
    epochs: int,
    log: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Stages 2-4 for one pre-training length: its run, its curated subsets, their measures."""
    run = args.out / f"pool-run-{epochs}ep"
    if not (run / "summary.json").exists():
        config = str(HERE / "pretrain.toml")
        sh([*EXE, "train", "--config", config, "--data", str(images), "--out", str(run),
            "--set", f"train.epochs={epochs}", "--no-progress"], log)  # fmt: skip
    folder = args.out / f"subsets-{epochs}ep"
    subsets: dict[str, Path] = {}
    detection: dict[str, dict[str, float]] = {}
    k = json.loads((run / "config.json").read_text())["cluster"]["k"]
    audit = read_audit(args.audit)
    every = f"{args.dedup_layer}, every cluster"
    # (descriptor, similarity, threshold, extra arguments, whether its subset is measured too)
    runs: list[tuple[str, str, str, list[str], bool]] = []
    runs += [(args.dedup_layer, "scaled", t, [], True) for t in args.thresholds.split(",")]
    runs += [(args.dedup_layer, "cosine", t, ["--dedup-neighbours", "0"], False)
             for t in args.cosine_thresholds.split(",")]  # fmt: skip
    runs += [(every, "scaled", args.probe_threshold, ["--probe", str(k)], False)]
    if epochs == max(int(e) for e in args.pretrain_epochs.split(",")):
        # the other layers, on the longest pre-training only: what chose the default layer
        runs += [(layer, "scaled", t, [], False) for layer in args.other_layers.split(",")
                 if layer for t in args.thresholds.split(",")]  # fmt: skip
    for layer, sim, t, extra, with_subset in runs:
        tag = layer.replace(", ", "-").replace(" ", "-")
        listing = folder / f"curated-{tag}-{sim}-{t}.csv"
        if not listing.exists():
            sh([*EXE, "curate", str(run), "--size", str(args.size), "--dedup", t,
                "--dedup-layer", layer.split(",")[0], *extra, "--out", str(listing),
                "--no-progress"], log)  # fmt: skip
        if with_subset:
            subsets[f"curated ({layer} {t})"] = listing
        detection[f"{layer}|{sim}|{t}"] = measure_detection(
            pool, listing.with_name(listing.stem + ".groups.csv"), audit
        )
    listing = folder / "curated-nodedup.csv"
    if not listing.exists():
        sh([*EXE, "curate", str(run), "--size", str(args.size), "--no-dedup",
            "--out", str(listing), "--no-progress"], log)  # fmt: skip
    subsets["curated (balance only)"] = listing
    for seed in args.seeds:
        subsets[f"random (seed {seed})"] = random_subset(
            pool, images, args.size, seed, args.out / "subsets" / f"random-{seed}.csv"
        )
    measured = {"pool (everything)": measure_subset(pool, {r["file"] for r in pool})}
    measured |= {name: measure_subset(pool, subset_names(f)) for name, f in subsets.items()}
    summary = json.loads((run / "summary.json").read_text())
    record = {"last_epoch": summary, "subsets": measured, "detection": detection}
    return record | {"clusters_vs_classes_nmi": clusters_nmi(run, pool)}, subsets


def clusters_nmi(run: Path, pool: list[dict[str, str]]) -> float:
    """NMI of the run's own clusters with the classes (noise images left out): how far
    balancing clusters can balance classes."""
    from sklearn.metrics import normalized_mutual_info_score

    from deepercluster.data.pathmatch import display_paths
    from deepercluster.engine.run_folder import open_run

    folder = open_run(run)
    names = [Path(p).name for p in display_paths(folder.collection())]
    cls = {r["file"]: r["class"] for r in pool}
    keep = [i for i, n in enumerate(names) if cls[n] and folder.clustering.valid[i]]
    return float(
        normalized_mutual_info_score(
            [cls[names[i]] for i in keep], folder.clustering.labels[keep].tolist()
        )
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cifar", type=Path, default=Path("/work/shared/data/cifar10"))
    p.add_argument("--scratch", type=Path, default=Path("/tmp/curation-study"))
    p.add_argument("--out", type=Path, default=Path("/tmp/curation-study/runs"))
    p.add_argument("--head", type=int, default=1000)
    p.add_argument("--tail", type=int, default=10)
    p.add_argument("--size", type=int, default=800, help="images in each subset")
    p.add_argument("--pretrain-epochs", default="3,12", help="pre-training lengths to compare")
    p.add_argument("--dedup-layer", default="conv4", help="curate's near-duplicate descriptor")
    p.add_argument("--thresholds", default="0.3,0.4,0.5", help="scaled, with --dedup-layer")
    p.add_argument("--cosine-thresholds", default="0.6,0.7,0.8", help="plain, --dedup-layer")
    p.add_argument("--probe-threshold", default="0.4", help="scaled, with --dedup-layer")
    p.add_argument(
        "--audit",
        type=Path,
        default=HERE / "cifar10_duplicates.csv",
        help="pairs of pool images judged duplicate or distinct by eye",
    )
    p.add_argument("--other-layers", default="conv2,conv3,conv5",
                   help="also measured at --thresholds after the longest pre-training")  # fmt: skip
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    p.add_argument("--probes", action="store_true", help="also run stage 5 (hours on a CPU)")
    p.add_argument("--probe-per-class", type=int, default=500)
    p.add_argument("--max-test", type=int, default=2000)
    p.add_argument("--results", type=Path, default=Path("results/curation.json"))
    p.add_argument("--doc", type=Path, default=Path("docs/results/curation.md"))
    args = p.parse_args()
    log: list[dict[str, Any]] = []
    tic = time.perf_counter()

    table = build_pool(
        args.cifar / "train.tar", args.scratch / "pool", head=args.head, tail=args.tail
    )
    pool = read_pool(table)
    images = table.parent / "images"
    pretrains: dict[str, Any] = {}
    subsets: dict[str, Path] = {}
    for epochs in sorted(int(e) for e in args.pretrain_epochs.split(",")):  # the longest last
        pretrains[str(epochs)], subsets = curate_pool(args, pool, images, epochs, log)

    probe_results: dict[str, Any] = {}
    if args.probes:  # with the longest pre-training's curation
        chosen = {"curated": subsets[f"curated ({args.dedup_layer} {args.probe_threshold})"],
                  "random": subsets[f"random (seed {args.seeds[0]})"]}  # fmt: skip
        probe_results = probes(args, chosen, log)

    cfg = json.loads((args.out / f"pool-run-{epochs}ep" / "config.json").read_text())
    record = {
        "invocation": "nice -n 10 python "
        + shlex.join(["studies/curation/run_study.py", *sys.argv[1:]]),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "pool": {
            "images": len(pool),
            "head": args.head,
            "tail": args.tail,
            "copies": sum(r["kind"] == "copy" for r in pool),
            "noise": sum(r["kind"] == "noise" for r in pool),
        },
        "k": cfg["cluster"]["k"],
        "m": cfg["cluster"]["super_clusters"],
        "size": args.size,
        "probe_threshold": f"{args.dedup_layer} {args.probe_threshold}",
        "dedup_layer": args.dedup_layer,
        "pretrains": pretrains,
        "probes": probe_results,
        "commands": log,
        "wall_seconds": round(time.perf_counter() - tic, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(record, args.doc)
    audit_montage(read_audit(args.audit), images, args.doc.with_name("curation-audit.png"))
    print(args.doc.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
