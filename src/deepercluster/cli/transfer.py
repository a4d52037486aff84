"""``deepercluster eval retrieval`` and ``eval detection``: the paper's transfer tasks.

Registered under ``eval`` by :mod:`deepercluster.cli.evaluate`; results go to ``--out``
(default ``<run>/eval``) as ``retrieval.{json,md,png}`` and ``detection.{json,md,png}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from deepercluster.cli.cpu import set_torch_threads

RETRIEVAL_EPILOG = """\
Ground truth (--gt), one of:
  revisited Oxford/Paris: gnd_roxford5k.pkl / gnd_rparis6k.pkl as distributed (or the same
    dict as JSON): imlist, qimlist, gnd[{bbx, easy, hard, junk}]; mAP for Easy, Medium, Hard.
    Queries are cropped to their bbx. Names without an extension get .jpg.
  your own queries, CSV with a header row:
      query,positives,junk,bbox
      q/eiffel1.jpg,db/eiffel7.jpg;db/eiffel9.jpg,db/blurry.jpg,
    positives and junk: database paths separated by ';' (junk and bbox optional; bbox is
    "x1 y1 x2 y2" in pixels). Or JSON: {"queries": [{"query": ..., "positives": [...],
    "junk": [...], "bbox": [x1, y1, x2, y2]}]}. mAP under protocol "all".
  Paths may be full, relative or bare file names, matched as for labels CSVs.
Example (revisited Oxford, whitening learned on Paris, as in the paper):
  deepercluster eval retrieval --checkpoint runs/x --database roxford5k/jpg \\
      --gt roxford5k/gnd_roxford5k.pkl --whiten-data rparis6k/jpg --device cuda
"""

DETECTION_EPILOG = """\
Data: Pascal VOC layout, Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt.
Classes are those of the training split's objects; "difficult" objects are neither trained on
nor scored. Report: VOC07 mAP at IoU 0.5, 11-point (the paper's) and all-point.
Example (the paper's setting on a GPU):
  deepercluster eval detection --checkpoint runs/x --train-data VOC2007 --test-data VOC2007 \\
      --image-size 600 --epochs 12 --device cuda --from-scratch-baseline
"""


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, backbone.pth or checkpoint.pth")
    p.add_argument("--out", help="results folder (default: <run>/eval)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--layer", default="", help="conv layer to use (default: the last one)")


def register_transfer(protocols: Any) -> None:
    """Add ``retrieval`` and ``detection`` to the ``eval`` sub-commands."""
    ret = protocols.add_parser(
        "retrieval",
        help="instance retrieval: multi-scale R-MAC/GeM, PCA-whitened, mAP (Oxford/Paris style)",
        epilog=RETRIEVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_options(ret)
    ret.add_argument("--database", required=True, help="the images searched")
    ret.add_argument("--gt", required=True, help="ground truth: revisited .pkl/.json, or CSV/JSON")
    ret.add_argument("--queries", help="where the query images are (default: --database)")
    ret.add_argument(
        "--whiten-data",
        help="separate images to learn the PCA whitening on (paper: the other city)",
    )
    ret.add_argument("--max-whiten", type=int, default=0, help="cap on whitening images (0: all)")
    ret.add_argument("--whiten-dim", type=int, default=0, help="whitened dims (0: all possible)")
    ret.add_argument("--pooling", choices=("rmac", "gem"), default="rmac")
    ret.add_argument("--levels", type=int, default=3, help="R-MAC region scales")
    ret.add_argument("--p", type=float, default=3.0, help="GeM exponent")
    ret.add_argument(
        "--scales", type=_floats, default=(1.0, 2**-0.5, 0.5), help="input scales, e.g. 1,0.707,0.5"
    )
    ret.add_argument(
        "--image-size", type=int, default=1024, help="longest side at scale 1 (images only shrink)"
    )
    ret.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ret.set_defaults(func=_cmd_retrieval)

    det = protocols.add_parser(
        "detection",
        help="fine-tune Faster R-CNN on a Pascal-VOC folder; VOC07 mAP@0.5",
        epilog=DETECTION_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_options(det)
    det.add_argument("--train-data", required=True, help="VOC-format folder to train on")
    det.add_argument("--test-data", help="VOC-format folder to test on (default: --train-data)")
    det.add_argument("--train-split", default="trainval", help="ImageSets/Main/<split>.txt")
    det.add_argument("--test-split", default="test")
    det.add_argument("--epochs", type=int, default=12)
    det.add_argument("--lr", type=float, default=0.02, help="peak lr (warm-up, then cosine)")
    det.add_argument("--batch-size", type=int, default=8, help="images per SGD step")
    det.add_argument("--weight-decay", type=float, default=1e-4)
    det.add_argument("--warmup-epochs", type=int, default=1)
    det.add_argument("--image-size", type=int, default=600, help="shorter side (paper: 600)")
    det.add_argument("--anchor-sizes", type=_ints, default=(), help="e.g. 32,64,128 (px)")
    det.add_argument("--roi-size", type=int, default=7, help="RoI-align output side")
    det.add_argument("--representation", type=int, default=1024, help="box-head width")
    det.add_argument(
        "--rois-per-image", type=int, default=128, help="RoIs sampled per image for the box head"
    )
    det.add_argument("--frozen-bn", action="store_true", help="keep BatchNorm statistics fixed")
    det.add_argument("--seed", type=int, default=0)
    det.add_argument(
        "--from-scratch-baseline",
        action="store_true",
        help="also train the same detector from a random trunk with the same schedule",
    )
    det.set_defaults(func=_cmd_detection)


def _cmd_retrieval(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.retrieval import RetrievalSettings
    from deepercluster.evaluation.protocols.retrieval_task import (
        RetrievalInputs,
        run_retrieval_task,
    )

    set_torch_threads(args.threads)
    settings = RetrievalSettings(
        pooling=args.pooling,
        levels=args.levels,
        p=args.p,
        layer=args.layer,
        scales=args.scales,
        image_size=args.image_size,
        whiten_dim=args.whiten_dim,
    )
    inputs = RetrievalInputs(
        checkpoint=args.checkpoint,
        database=args.database,
        gt=args.gt,
        queries=args.queries,
        whiten_data=args.whiten_data,
        max_whiten=args.max_whiten,
        out=args.out,
        device=args.device,
        workers=args.workers,
        precision=args.precision,
        progress=not args.no_progress,
    )
    table, _ = run_retrieval_task(inputs, settings)
    print(table, end="")
    return 0


def _cmd_detection(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.detection import DetectionSettings
    from deepercluster.evaluation.protocols.detection_task import run_detection_task

    set_torch_threads(args.threads)
    settings = DetectionSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        image_size=args.image_size,
        layer=args.layer,
        anchor_sizes=args.anchor_sizes,
        roi_size=args.roi_size,
        representation=args.representation,
        rois_per_image=args.rois_per_image,
        frozen_bn=args.frozen_bn,
        seed=args.seed,
    )
    table, _ = run_detection_task(
        args.checkpoint,
        args.train_data,
        args.test_data or args.train_data,
        settings,
        train_split=args.train_split,
        test_split=args.test_split,
        from_scratch=args.from_scratch_baseline,
        out=args.out,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(table, end="")
    return 0
