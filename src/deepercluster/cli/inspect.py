"""``deepercluster inspect | assignments | materialize | embed | export``: use a finished run.

deepercluster inspect runs/x                 # runs/x/report/index.html
deepercluster assignments runs/x --format parquet
deepercluster materialize runs/x --to clusters/ --link
deepercluster embed --checkpoint runs/x --data /new/images --out emb.npy
deepercluster export runs/x --to backbone.pt --rgb --onnx backbone.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_DATA_HELP = (
    "the run's images, when they moved or the run was trained in memory "
    "(must hold the same images in the same order)"
)


def _extraction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="where the network runs: cpu or cuda")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="write a static HTML report of a run's clusters")
    p.add_argument("run", help="run folder (deepercluster train --out)")
    p.add_argument("--out", help="report folder (default RUN/report)")
    p.add_argument("--data", help=_DATA_HELP)
    p.add_argument("--metadata", help="CSV with an image path column and a tags column")
    p.add_argument("--path-column", default="file", help="metadata column with image paths")
    p.add_argument("--tags-column", default="tags", help="metadata column, comma-separated tags")
    p.add_argument(
        "--curation",
        metavar="LIST",
        help="kept list of `deepercluster curate` on this run: adds what was kept, dropped and "
        "why, the duplicate groups and the class or tag balance",
    )
    p.add_argument("--per-page", type=int, default=100, help="cluster cards per page")
    p.add_argument("--nearest", type=int, default=8, help="images nearest the centroid per card")
    p.add_argument("--random", type=int, default=4, help="random members per card")
    _extraction_args(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("assignments", help="export image -> cluster as CSV or Parquet")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--out", help="file to write (default RUN/assignments.csv|parquet)")
    p.add_argument("--data", help=_DATA_HELP)
    _extraction_args(p)
    p.set_defaults(func=_cmd_assignments)

    p = sub.add_parser("materialize", help="one folder (or list file) per cluster")
    p.add_argument("run", help="run folder")
    p.add_argument("--to", required=True, help="target folder (new or empty)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--link", dest="mode", action="store_const", const="link",
                      help="symlinks to the images (default)")  # fmt: skip
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy",
                      help="copies (extracts images from tar shards)")  # fmt: skip
    mode.add_argument("--lists", dest="mode", action="store_const", const="lists",
                      help="one text file of paths per cluster")  # fmt: skip
    p.add_argument("--data", help=_DATA_HELP)
    p.set_defaults(func=_cmd_materialize, mode="link")

    p = sub.add_parser("embed", help="features and nearest clusters of new images")
    p.add_argument(
        "--checkpoint", required=True, help="run folder whose network and clusters to use"
    )
    p.add_argument("--data", required=True, help="images: folder, list file, CSV or tar shards")
    p.add_argument("--out", required=True, help="emb.npy (+ emb.clusters.csv) or emb.parquet")
    _extraction_args(p)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("export", help="the trained backbone without heads (state_dict, ONNX)")
    p.add_argument("source", help="run folder, backbone.pth/checkpoint.pth, or an authors' file")
    p.add_argument("--to", required=True, help="state_dict file to write, e.g. backbone.pt")
    p.add_argument("--rgb", action="store_true",
                   help="fold the Sobel front into an RGB conv (plain RGB pipelines)")  # fmt: skip
    p.add_argument("--onnx", help="also write this ONNX file (checked with onnxruntime)")
    p.add_argument("--resolution", type=int, help="ONNX input side (default: the run's)")
    p.set_defaults(func=_cmd_export)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from deepercluster.inspect.report import ReportOptions, inspect_run

    index = inspect_run(
        args.run,
        out=args.out,
        data=args.data,
        metadata=args.metadata,
        path_column=args.path_column,
        tags_column=args.tags_column,
        options=ReportOptions(per_page=args.per_page, nearest=args.nearest, random=args.random),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        curation=args.curation,
    )
    print(index)
    return 0


def _cmd_assignments(args: argparse.Namespace) -> int:
    from deepercluster.inspect.assignments import run_assignments, write_assignments

    table = run_assignments(
        args.run,
        data=args.data,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    out = args.out or Path(args.run) / f"assignments.{args.format}"
    print(write_assignments(table, out, fmt=args.format))
    return 0


def _cmd_materialize(args: argparse.Namespace) -> int:
    from deepercluster.inspect.assignments import run_assignments
    from deepercluster.inspect.materialize import materialize

    # No feature extraction just to order files: nearest-first when `inspect` or
    # `assignments` already cached the features, else in image-id order.
    table = run_assignments(args.run, data=args.data, with_distances="cached", progress=False)
    written = materialize(table, args.to, mode=args.mode)
    print(f"{len(written)} {'list files' if args.mode == 'lists' else 'folders'} under {args.to}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from deepercluster.inspect.embed import embed_new_images

    out = embed_new_images(
        args.checkpoint,
        args.data,
        args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    for path in out:
        what = {
            ".npy": "features (one row per image)",
            ".csv": "nearest cluster and distance of each image",
            ".parquet": "features, nearest cluster and distance of each image",
        }[path.suffix.lower()]
        print(f"{path}: {what}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from deepercluster.engine.run_folder import load_pretrained
    from deepercluster.inspect.export import check_onnx, export_backbone, export_onnx
    from deepercluster.models.fold import fold_sobel

    pre = load_pretrained(args.source)
    model, resolution = pre.backbone, pre.resolution
    if args.rgb:
        model = fold_sobel(model)
    path = export_backbone(model, args.to)
    folded = " (Sobel front folded into an RGB conv)" if args.rgb else ""
    print(f"{path}: {type(model).__name__} state_dict without heads{folded}")
    if args.onnx:
        resolution = args.resolution or resolution
        export_onnx(model, args.onnx, resolution=resolution)
        error = check_onnx(model, args.onnx, resolution=resolution)
        print(
            f"{args.onnx}: {resolution} px input; onnxruntime vs PyTorch max abs diff {error:.2e}"
        )
    return 0
