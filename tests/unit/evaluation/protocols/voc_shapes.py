"""A tiny generated Pascal-VOC-format folder: coloured squares and discs on noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("disc", "square")


def _xml(image_id: str, size: int, objects: list[tuple[str, int, int, int, int, bool]]) -> str:
    parts = [
        f"<annotation><filename>{image_id}.png</filename>",
        f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
    ]
    for name, x1, y1, x2, y2, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox>"
            f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>"
        )
    return "".join(parts) + "</annotation>\n"


def write_shapes_voc(
    root: Path, n: int = 40, size: int = 64, n_test: int = 10, seed: int = 0
) -> Path:
    """``n`` images, 1 or 2 shapes each (red squares, blue discs, 16-26 px); the last
    ``n_test`` ids form the ``test`` split, the others ``trainval``."""
    rng = np.random.default_rng(seed)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = rng.normal(110, 25, (size, size, 3))
        objects: list[tuple[str, int, int, int, int, bool]] = []
        for _ in range(int(rng.integers(1, 3))):
            side = int(rng.integers(16, 27))
            x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
            name = CLASSES[int(rng.integers(0, 2))]
            if name == "square":
                mask = (xx >= x1) & (xx < x1 + side) & (yy >= y1) & (yy < y1 + side)
                colour = (220, 40, 40)
            else:
                r = side / 2
                mask = (xx + 0.5 - x1 - r) ** 2 + (yy + 0.5 - y1 - r) ** 2 <= r**2
                colour = (40, 60, 220)
            img[mask] = colour
            objects.append((name, x1, y1, x1 + side, y1 + side, False))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"JPEGImages/{i:04d}.png")
        (root / f"Annotations/{i:04d}.xml").write_text(_xml(f"{i:04d}", size, objects))
    ids = [f"{i:04d}" for i in range(n)]
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join(ids[: n - n_test]) + "\n")
    (root / "ImageSets/Main/test.txt").write_text("\n".join(ids[n - n_test :]) + "\n")
    return root
