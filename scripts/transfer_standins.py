"""Stand-ins for the paper's transfer benchmarks, built from CIFAR-10 test images.

Oxford/Paris and Pascal VOC are not on this machine; these sets exercise the same protocols
(``deepercluster eval retrieval`` and ``eval detection``) on real photos.

- ``retrieval``: planted near-duplicates. Each query image has two altered copies in the
  database (shrunk to 20 px and back, JPEG quality 30; a random 24 px crop rescaled, 10%
  brighter) among unrelated distractors; a disjoint set learns the whitening. Writes
  ``queries/``, ``database/``, ``whiten/`` and ``gt.csv`` (the user query format).
- ``detection``: CIFAR objects pasted on a 96 px canvas of a blurred other CIFAR image, 1-2
  objects of 3 classes per image, in Pascal VOC layout (``trainval`` and ``test`` splits).

    python scripts/transfer_standins.py retrieval --out /tmp/standin-retrieval
    python scripts/transfer_standins.py detection --out /tmp/standin-detection
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

DETECTION_CLASSES = ("automobile", "cat", "ship")


def _cifar(tar: str) -> list[tuple[str, Image.Image]]:
    with tarfile.open(tar) as t:
        members = sorted((m for m in t.getmembers() if m.isfile()), key=lambda m: m.name)
        out = []
        for m in members:
            data = t.extractfile(m).read()  # type: ignore[union-attr]
            out.append((m.name.split("/")[-2], Image.open(io.BytesIO(data)).convert("RGB")))
    return out


def retrieval(images: list[tuple[str, Image.Image]], out: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(images))
    q_ids = order[: args.queries]
    d_ids = order[args.queries : args.queries + args.distractors]
    w_ids = order[args.queries + args.distractors :][: args.whiten]
    for sub in ("queries", "database", "whiten"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = ["query,positives"]
    for n, i in enumerate(q_ids):
        img = images[i][1]
        img.save(out / f"queries/q{n:04d}.png")
        small = img.resize((20, 20), Image.Resampling.BILINEAR).resize((32, 32))
        small.save(out / f"database/c{n:04d}a.jpg", quality=30)
        x, y = (int(v) for v in rng.integers(0, 9, 2))
        crop = img.crop((x, y, x + 24, y + 24)).resize((32, 32), Image.Resampling.BICUBIC)
        ImageEnhance.Brightness(crop).enhance(1.1).save(out / f"database/c{n:04d}b.png")
        rows.append(f"q{n:04d}.png,c{n:04d}a.jpg;c{n:04d}b.png")
    for n, i in enumerate(d_ids):
        images[i][1].save(out / f"database/d{n:05d}.png")
    for n, i in enumerate(w_ids):
        images[i][1].save(out / f"whiten/w{n:05d}.png")
    (out / "gt.csv").write_text("\n".join(rows) + "\n")


def detection(images: list[tuple[str, Image.Image]], out: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    objects = [img for name, img in images if name in DETECTION_CLASSES]
    names = [name for name, _ in images if name in DETECTION_CLASSES]
    backgrounds = [img for name, img in images if name not in DETECTION_CLASSES]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    size = 96
    for n in range(args.images):
        back = backgrounds[int(rng.integers(len(backgrounds)))].resize((size, size))
        canvas = back.filter(ImageFilter.GaussianBlur(3))
        xml = [f"<annotation><size><width>{size}</width><height>{size}</height></size>"]
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 3))):
            k = int(rng.integers(len(objects)))
            side = int(rng.integers(28, 49))
            for _try in range(20):
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                box = (x, y, x + side, y + side)
                if all(box[2] <= p[0] or p[2] <= box[0] or box[3] <= p[1] or p[3] <= box[1]
                       for p in placed):  # fmt: skip
                    break
            else:
                continue
            placed.append(box)
            canvas.paste(objects[k].resize((side, side), Image.Resampling.BICUBIC), box[:2])
            xml.append(
                f"<object><name>{names[k]}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + side}</xmax>"
                f"<ymax>{y + side}</ymax></bndbox></object>"
            )
        canvas.save(out / f"JPEGImages/{n:05d}.jpg", quality=90)
        (out / f"Annotations/{n:05d}.xml").write_text("".join(xml) + "</annotation>\n")
    ids = [f"{n:05d}" for n in range(args.images)]
    split = args.images - args.test_images
    (out / "ImageSets/Main/trainval.txt").write_text("\n".join(ids[:split]) + "\n")
    (out / "ImageSets/Main/test.txt").write_text("\n".join(ids[split:]) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("retrieval", "detection"))
    p.add_argument("--data", default="../shared/data/cifar10/test.tar")
    p.add_argument("--out", required=True)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--distractors", type=int, default=1000)
    p.add_argument("--whiten", type=int, default=600)
    p.add_argument("--images", type=int, default=400, help="detection: images in all")
    p.add_argument("--test-images", type=int, default=100, help="detection: test split size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    images = _cifar(args.data)
    (retrieval if args.kind == "retrieval" else detection)(images, Path(args.out), args)


if __name__ == "__main__":
    main()
