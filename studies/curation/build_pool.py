"""An "uncurated" pool from CIFAR-10: long-tailed classes, planted near-duplicates, noise images.

- Long tail: class c (in a seeded random order of the 10 classes) keeps
  ``round(head * (tail / head) ** (c / 9))`` images, from ``head`` down to ``tail``.
- Near-duplicates: ``dup_share`` of the pool's images get one copy each, made the way crawls
  make them: JPEG re-encoded at a low quality, resized, or slightly cropped and scaled back
  (one to three of these, drawn per copy). The originals are drawn uniformly from the pool,
  so the head classes, as in a crawl, carry most of them.
- Noise: ``noise_share`` images of no class (uniform noise, smooth colour fields, stripes).

Writes ``<out>/images/*.jpg|png`` (one flat folder: the names tell nothing of the class to
the training) and ``<out>/pool.csv`` with ``file, class, original, kind`` (``original``: the
file a copy was made from; ``kind``: image, copy or noise). Deterministic for a seed.

Usage::

    python studies/curation/build_pool.py --out /tmp/curation-study/pool
"""

from __future__ import annotations

import argparse
import csv
import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_counts(head: int, tail: int, seed: int) -> dict[str, int]:
    """Images per class, from ``head`` down to ``tail`` (geometric), classes in seeded order."""
    order = np.random.default_rng(seed).permutation(len(CLASSES))
    return {
        CLASSES[c]: round(head * (tail / head) ** (rank / (len(CLASSES) - 1)))
        for rank, c in enumerate(order)
    }


def near_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A re-encoded, resized and/or slightly cropped copy of a 32x32 image, back at 32x32."""
    out = image.convert("RGB")
    ops = [op for op in ("jpeg", "resize", "crop") if rng.random() < 0.6] or ["jpeg"]
    if "crop" in ops:
        left, top = rng.integers(0, 3, 2)
        right, bottom = 32 - rng.integers(0, 3, 2)
        out = out.crop((int(left), int(top), int(right), int(bottom))).resize((32, 32))
    if "resize" in ops:
        side = int(rng.integers(24, 48))
        out = out.resize((side, side), Image.Resampling.BILINEAR).resize((32, 32))
    if "jpeg" in ops:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(30, 70)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out


def noise_image(rng: np.random.Generator) -> Image.Image:
    """A 32x32 image of no class: uniform noise, a smooth colour field or coloured stripes."""
    kind = int(rng.integers(3))
    if kind == 0:
        pixels = rng.integers(0, 256, (32, 32, 3))
    elif kind == 1:
        corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float64)
        t = np.linspace(0, 1, 32)[:, None, None]
        s = np.linspace(0, 1, 32)[None, :, None]
        pixels = (
            corners[0, 0] * (1 - t) * (1 - s) + corners[0, 1] * (1 - t) * s
            + corners[1, 0] * t * (1 - s) + corners[1, 1] * t * s
        )  # fmt: skip
    else:
        period = int(rng.integers(2, 8))
        stripes = (np.arange(32) // period % 2)[:, None, None]
        pixels = np.where(stripes, rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        pixels = np.broadcast_to(pixels, (32, 32, 3))
    return Image.fromarray(np.asarray(pixels).clip(0, 255).astype(np.uint8))


def build_pool(
    train_tar: Path,
    out: Path,
    *,
    head: int = 1000,
    tail: int = 10,
    dup_share: float = 0.25,
    noise_share: float = 0.05,
    seed: int = 0,
) -> Path:
    """Write the pool under ``out`` (skipped when ``out/pool.csv`` exists); returns the CSV."""
    table = out / "pool.csv"
    if table.exists():
        return table
    rng = np.random.default_rng(seed)
    counts = class_counts(head, tail, seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    kept: list[tuple[str, Image.Image]] = []
    with tarfile.open(train_tar) as tar:
        members: dict[str, list[tarfile.TarInfo]] = {c: [] for c in CLASSES}
        for m in tar.getmembers():
            parts = PurePosixPath(m.name).parts
            if m.isfile() and len(parts) >= 2 and parts[-2] in members:
                members[parts[-2]].append(m)
        for cls in CLASSES:
            listed = sorted(members[cls], key=lambda m: m.name)
            for i in sorted(rng.choice(len(listed), counts[cls], replace=False).tolist()):
                data = tar.extractfile(listed[i])
                assert data is not None
                raw = data.read()
                name = f"{cls}_{PurePosixPath(listed[i].name).stem}.jpg"
                (images / name).write_bytes(raw)
                rows.append((name, cls, "", "image"))
                kept.append((name, Image.open(io.BytesIO(raw)).convert("RGB")))
    n_copies = round(dup_share * len(kept))
    for j, i in enumerate(sorted(rng.choice(len(kept), n_copies, replace=False).tolist())):
        name, image = kept[i]
        copy = f"copy{j:05d}_{Path(name).stem}.jpg"
        near_copy(image, rng).save(images / copy, quality=90)
        rows.append((copy, rows[i][1], name, "copy"))
    for j in range(round(noise_share * len(kept))):
        name = f"noise{j:05d}.png"
        noise_image(rng).save(images / name)
        rows.append((name, "", "", "noise"))
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("file", "class", "original", "kind"))
        writer.writerows(rows)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar", type=Path, default=Path("/work/shared/data/cifar10"))
    p.add_argument("--out", type=Path, default=Path("/tmp/curation-study/pool"))
    p.add_argument("--head", type=int, default=1000)
    p.add_argument("--tail", type=int, default=10)
    p.add_argument("--dup-share", type=float, default=0.25)
    p.add_argument("--noise-share", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(build_pool(a.cifar / "train.tar", a.out, head=a.head, tail=a.tail,
                     dup_share=a.dup_share, noise_share=a.noise_share, seed=a.seed))  # fmt: skip


if __name__ == "__main__":
    main()
