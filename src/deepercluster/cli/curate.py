"""``deepercluster curate``: a balanced, de-duplicated subset of a run's images.

deepercluster curate runs/photos --size 200000 --out curated.csv [--dedup 0.4]
deepercluster train --data curated.csv --out runs/photos-curated ...
deepercluster inspect runs/photos --curation curated.csv
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

EPILOG = """\
The run's network embeds its images once (cached in RUN/curate/embeddings, resumable). Pairs
whose --dedup-layer descriptors (a conv layer, GeM-pooled and PCA-whitened on the pool; cached
in RUN/curate/LAYER) are at or above the --dedup similarity are near-duplicates (compared
inside clusters and the --probe - 1 other clusters whose descriptors lie nearest); one per
group stays. The similarity is (cos(a, b) - m) / (1 - m), m being the two images' mean cosine
to their --dedup-neighbours nearest images: 1 for identical images, 0 for a pair no closer
than its neighbours. Where many images look alike (textures, one product shot a hundred ways)
a pair must stand out from its neighbourhood to count as a copy, unless its plain cosine
reaches --dedup-cosine (a large group of copies of one image is a crowd of its own);
--dedup-neighbours 0 compares the plain cosine alone. The --size budget is then split as
evenly as possible across super-clusters, then across the sub-clusters of each
(water-filling: small clusters give all they have). Writes OUT (path, super_cluster,
sub_cluster, reason; it trains as `deepercluster train --data OUT`), OUT.dropped.csv,
OUT.groups.csv and OUT.json beside it.
"""


def register(sub: Any) -> None:
    from deepercluster.curate.settings import CurateSettings

    default = {f.name: f.default for f in fields(CurateSettings)}
    p = sub.add_parser(
        "curate",
        help="choose a balanced, de-duplicated subset of a run's images by its clusters",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder (deepercluster train --out) with a clustering")
    p.add_argument("--size", type=int, required=True, help="images in the curated subset")
    p.add_argument("--out", required=True, help="kept list to write, e.g. curated.csv")
    p.add_argument(
        "--dedup",
        type=float,
        default=default["dedup"],
        help="similarity in (0, 1] of the --dedup-layer descriptors at or above which images "
        f"are near-duplicates (default {default['dedup']}; higher removes only closer copies)",
    )
    p.add_argument(
        "--dedup-neighbours",
        type=int,
        default=default["dedup_neighbours"],
        metavar="K",
        help="scale each similarity by the two images' mean cosine to their K nearest "
        f"images (default {default['dedup_neighbours']}); 0 compares the plain cosine",
    )
    p.add_argument(
        "--dedup-cosine",
        type=float,
        default=default["dedup_cosine"],
        metavar="C",
        help="with the scaling, a plain cosine at or above which images are near-duplicates "
        f"whatever their neighbourhood (default {default['dedup_cosine']}: a large group of "
        "copies of one image is a crowd of its own)",
    )
    p.add_argument(
        "--dedup-layer",
        default=default["dedup_layer"],
        metavar="LAYER",
        help="descriptor compared for near-duplicates: a conv layer of the run's network "
        f"(default {default['dedup_layer']}, measured best on CIFAR-10 copies) or "
        "'embedding' (the clustering embedding: semantic, it also joins distinct images of "
        "one cluster)",
    )
    p.add_argument("--no-dedup", action="store_true", help="skip de-duplication")
    p.add_argument(
        "--per-cluster-cap", type=int, metavar="N", help="at most N images from one sub-cluster"
    )
    p.add_argument(
        "--pick",
        choices=("random", "nearest"),
        default="random",
        help="inside a cluster: a seeded random draw (default) or the images "
        "nearest the centroid (most typical, least diverse)",
    )
    p.add_argument(
        "--keep",
        choices=("nearest", "largest"),
        default="nearest",
        help="the member of a duplicate group that stays: nearest its centroid "
        "(default) or the largest file",
    )
    p.add_argument(
        "--probe",
        type=int,
        default=default["probe"],
        help="compare each image with its own cluster and its PROBE-1 nearest other "
        f"clusters (default {default['probe']}; more finds pairs split by a border, at more "
        "cost)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random picks")
    p.add_argument(
        "--max-memory",
        default="512MB",
        metavar="SIZE",
        help="embeddings held in memory at once, e.g. 2GB (default 512MB)",
    )
    p.add_argument("--data", help="the run's images, when they moved (same images, same order)")
    p.add_argument("--device", default="cpu", help="where the network and products run")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_curate)  # fmt: skip


def _cmd_curate(args: argparse.Namespace) -> int:
    from deepercluster.config.sections import parse_size
    from deepercluster.curate.pipeline import curate_run
    from deepercluster.curate.settings import CurateSettings

    if not args.out.lower().endswith(".csv"):
        # The kept list is a CSV that `train --data` reads; its summary is written beside it
        # as OUT.json, which a .json name would overwrite.
        raise ValueError(f"--out {args.out} must be a .csv file, e.g. curated.csv")
    settings = CurateSettings(
        size=args.size,
        dedup=None if args.no_dedup else args.dedup,
        dedup_layer=args.dedup_layer,
        dedup_neighbours=args.dedup_neighbours,
        dedup_cosine=args.dedup_cosine,
        per_cluster_cap=args.per_cluster_cap,
        pick=args.pick,
        keep=args.keep,
        probe=args.probe,
        seed=args.seed,
        max_memory=parse_size(args.max_memory, "--max-memory"),
    )
    done = curate_run(
        args.run,
        settings,
        args.out,
        data=args.data,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    counts = done.curation.counts()
    print(
        f"kept {counts['kept']}, dropped {counts['duplicate']} near-duplicates, "
        f"{counts['over_quota']} over quota, {counts['unreadable']} unreadable "
        f"({done.seconds[0]:.1f} s embedding, {done.seconds[1]:.1f} s selecting)"
    )
    for path in done.files:
        print(path)
    if done.tar_members:
        print(
            f"note: the run's images are tar members; `deepercluster train --data` does not read "
            f"a list of tar members: copy the kept ones out first (the path column of {args.out})"
        )
    return 0
