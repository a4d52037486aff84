"""``deepercluster search``: the images of a collection most like a query photo.

Builds (or resumes) an index of the collection's retrieval descriptors with ``--data``, then
answers ``--query`` from it: the top matches on the console and an HTML page with thumbnails.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """\
Examples:
  deepercluster search --checkpoint runs/x --index runs/x/index --data /photos   # build once
  deepercluster search --index runs/x/index --query photo.jpg --top 20          # then ask
The index holds float16 multi-scale R-MAC descriptors (GeM with --pooling gem) of the last
conv block, written in chunks (an interrupted build resumes), and a PCA whitening learned on
them. Search compares the query with the index block by block: memory stays bounded.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="index a collection and find the images most like a query photo",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--index", required=True, help="index folder (written by --data)")
    p.add_argument("--checkpoint", help="run folder or backbone file (needed to build)")
    p.add_argument("--data", help="images to index: folder, list, CSV or tar shards")
    p.add_argument("--query", help="a photo file to search for")
    p.add_argument("--top", type=int, default=20, help="matches to return")
    p.add_argument("--out", help="HTML page of the results (default: <index>/results/<query>.html)")
    p.add_argument("--pooling", choices=("rmac", "gem"), default="rmac")
    p.add_argument("--image-size", type=int, default=1024, help="longest side at scale 1")
    p.add_argument("--chunk-rows", type=int, default=4096, help="images described per chunk")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    from deepercluster.evaluation.protocols.retrieval import RetrievalSettings
    from deepercluster.evaluation.protocols.search import build_index, search, write_results_page

    index = Path(args.index)
    if not args.data and not args.query:
        raise ValueError("nothing to do: pass --data IMAGES to build the index, --query PHOTO")
    if args.data:
        if not args.checkpoint:
            raise ValueError("building an index needs --checkpoint (a run folder or backbone)")
        settings = RetrievalSettings(pooling=args.pooling, image_size=args.image_size)
        n = build_index(
            args.checkpoint, args.data, index, settings, chunk_rows=args.chunk_rows,
            device=args.device, workers=args.workers, progress=not args.no_progress,
        )  # fmt: skip
        print(f"indexed {n} images in {index}")
    if args.query:
        import json

        from deepercluster.data import open_collection

        hits = search(index, args.query, top=args.top, device=args.device)
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:3d}  {score:.3f}  {path}")
        data = json.loads((index / "index.json").read_text())["data"]
        page = Path(args.out) if args.out else index / "results" / f"{Path(args.query).stem}.html"
        try:
            collection = open_collection(data)
        except (OSError, ValueError) as err:  # the indexed images moved: paths, no thumbnails
            print(f"the results page has no thumbnails: {err}")
            collection = None
        write_results_page(page, args.query, hits, collection)
        print(f"results page: {page}")
    return 0
