"""``deepercluster eval {linear,knn,clusters,finetune,retrieval,detection}``: the paper's
evaluation protocols (the transfer tasks retrieval and detection in :mod:`.transfer`).

Each sub-command writes ``<name>.json`` (for programs) and ``<name>.md`` (for people), plus a
PNG where a curve helps, into ``--out`` (default ``<run>/eval``), and prints the table.
"""

from __future__ import annotations

import argparse
from typing import Any

from deepercluster.cli.cpu import set_torch_threads
from deepercluster.cli.transfer import register_transfer

EPILOG = """\
Examples:
  deepercluster eval linear --checkpoint runs/x --train-data lab/train --test-data lab/test
  deepercluster eval knn --checkpoint runs/x --train-data data.tar --test-data test.tar --k 20
  deepercluster eval clusters --run runs/x
  deepercluster eval clusters --run runs/x --metadata metadata.csv --column tags
  deepercluster eval finetune --checkpoint runs/x --train-data lab/train --test-data lab/test \\
      --from-scratch-baseline
  deepercluster eval retrieval --checkpoint runs/x --database roxford5k/jpg \\
      --gt gnd_roxford5k.pkl --whiten-data rparis6k/jpg
  deepercluster eval detection --checkpoint runs/x --train-data VOC2007 --from-scratch-baseline
Labelled images: a folder with one sub-folder per class, tar shards whose members sit under
<class>/ folders, or any collection plus --train-labels/--test-labels CSV (path,label).
"""


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, backbone.pth or checkpoint.pth")
    p.add_argument("--train-data", required=True, help="labelled training images")
    p.add_argument("--test-data", required=True, help="labelled test images")
    p.add_argument("--train-labels", help="CSV with path and label columns for --train-data")
    p.add_argument("--test-labels", help="CSV with path and label columns for --test-data")
    p.add_argument(
        "--max-train", type=int, default=0, help="cap on training images, class-balanced (0: all)"
    )
    p.add_argument(
        "--max-test", type=int, default=0, help="cap on test images, class-balanced (0: all)"
    )
    p.add_argument("--out", help="results folder (default: <run>/eval)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def register(sub: Any) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a run: linear probes, kNN, clusters vs labels/tags, fine-tuning, retrieval, "
        "detection",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    protocols = ev.add_subparsers(dest="protocol", required=True)

    linear = protocols.add_parser(
        "linear", help="linear probes on every conv layer (the paper's protocol)"
    )
    _add_inputs(linear)
    linear.add_argument(
        "--layers", default="all", help="comma-separated conv layer names, or 'all'"
    )
    linear.add_argument(
        "--max-dim",
        type=int,
        default=10_000,
        help="pool each layer to at most this many dims (paper: 10000)",
    )
    linear.add_argument(
        "--lrs",
        type=_floats,
        default=(0.01, 0.1),
        help="initial learning rates to try, e.g. 0.01,0.1",
    )
    linear.add_argument(
        "--wds", type=_floats, default=(1e-4, 1e-3, 1e-2), help="weight decays to try"
    )
    linear.add_argument(
        "--widen",
        type=int,
        default=0,
        metavar="N",
        help="when the chosen lr or wd sits at an edge of the grid, add the next decade past "
        "it and choose again, up to N times (0: report the edge only)",
    )
    linear.add_argument("--epochs", type=int, default=30)
    linear.add_argument("--probe-batch-size", type=int, default=256)
    linear.add_argument("--seeds", default="0,1,2", help="seeds of the final probes (mean ± std)")
    linear.add_argument(
        "--holdout", type=float, default=0.2, help="share of train held out to choose lr and wd"
    )
    linear.set_defaults(func=_cmd_linear)

    knn = protocols.add_parser(
        "knn", help="weighted kNN on the final features (cosine, exp(s/T) votes)"
    )
    _add_inputs(knn)
    knn.add_argument(
        "--k", type=int, nargs="+", default=[20], help="neighbours (one or more values)"
    )
    knn.add_argument("--temperature", type=float, default=0.07)
    knn.add_argument(
        "--kmeans",
        type=int,
        default=0,
        metavar="K",
        help="also k-means the test features into K clusters and score them against the labels",
    )
    knn.set_defaults(func=_cmd_knn)

    clusters = protocols.add_parser(
        "clusters", help="a run's clusters vs class labels or multi-label tags"
    )
    clusters.add_argument(
        "--run", required=True, help="run folder written by `deepercluster train`"
    )
    clusters.add_argument("--data", help="the images the run clustered (default: from its config)")
    source = clusters.add_mutually_exclusive_group()
    source.add_argument(
        "--labels", help="CSV with path and label columns (default: class sub-folders)"
    )
    source.add_argument("--metadata", help="CSV with path and a tags column (comma-separated tags)")
    clusters.add_argument("--column", default="tags", help="tags column of --metadata")
    clusters.add_argument("--top", type=int, default=5, help="tags listed per cluster")
    clusters.add_argument(
        "--min-count", type=int, default=3, help="min. images of a tag inside a cluster to list it"
    )
    clusters.add_argument(
        "--specific-min-count",
        type=int,
        default=5,
        help="min. images of a tag to count as an image's most specific tag",
    )
    clusters.add_argument("--out", help="results folder (default: <run>/eval)")
    clusters.set_defaults(func=_cmd_clusters)

    ft = protocols.add_parser(
        "finetune", help="train all layers from the pre-trained weights (and from scratch)"
    )
    _add_inputs(ft)
    ft.add_argument("--epochs", type=int, default=10)
    ft.add_argument("--lr", type=float, default=0.01, help="initial learning rate (cosine decay)")
    ft.add_argument("--ft-batch-size", type=int, default=64, help="images per SGD step")
    ft.add_argument("--weight-decay", type=float, default=1e-4)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument(
        "--keep-sobel",
        action="store_true",
        help="keep the fixed Sobel front instead of folding it into a trainable RGB conv",
    )
    ft.add_argument(
        "--from-scratch-baseline",
        action="store_true",
        help="also train the same network from random weights with the same schedule",
    )
    ft.set_defaults(func=_cmd_finetune)

    register_transfer(protocols)


def _inputs(args: argparse.Namespace) -> Any:
    from deepercluster.evaluation.protocols.tasks import Inputs

    set_torch_threads(args.threads)
    return Inputs(
        checkpoint=args.checkpoint,
        train_data=args.train_data,
        test_data=args.test_data,
        train_labels=args.train_labels,
        test_labels=args.test_labels,
        max_train=args.max_train,
        max_test=args.max_test,
        out=args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )


def _cmd_linear(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.linear import LinearProtocol
    from deepercluster.evaluation.protocols.tasks import run_linear_task

    protocol = LinearProtocol(
        lrs=args.lrs,
        weight_decays=args.wds,
        epochs=args.epochs,
        batch_size=args.probe_batch_size,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        holdout=args.holdout,
        max_dim=args.max_dim,
        widen=args.widen,
    )
    layers = None if args.layers == "all" else [n.strip() for n in args.layers.split(",")]
    table, _ = run_linear_task(_inputs(args), protocol, layers)
    print(table, end="")
    return 0


def _cmd_knn(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.tasks import run_knn_task

    table, _ = run_knn_task(_inputs(args), args.k, args.temperature, args.kmeans)
    print(table, end="")
    return 0


def _cmd_clusters(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.cluster_task import run_clusters_task

    text, _ = run_clusters_task(
        args.run,
        data=args.data,
        labels_csv=args.labels,
        metadata_csv=args.metadata,
        column=args.column,
        out=args.out,
        top=args.top,
        min_count=args.min_count,
        specific_min_count=args.specific_min_count,
    )
    print(text, end="")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.finetune import FinetuneSettings
    from deepercluster.evaluation.protocols.finetune_task import run_finetune_task

    settings = FinetuneSettings(
        epochs=args.epochs,
        batch_size=args.ft_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        fold_sobel=not args.keep_sobel,
    )
    table, _ = run_finetune_task(_inputs(args), settings, from_scratch=args.from_scratch_baseline)
    print(table, end="")
    return 0
