"""A Pascal-VOC-format folder read back: image list, boxes, classes, "difficult" flags.

The layout (Everingham et al., IJCV 2010; the devkit's ``VOC2007/``)::

    voc/Annotations/<id>.xml      one <object> per box: <name>, <difficult>, <bndbox>
    voc/JPEGImages/<id>.jpg       (any extension Pillow reads)
    voc/ImageSets/Main/<split>.txt   one <id> per line (train, val, trainval, test)

Boxes are 1-based inclusive pixel corners in the XML; they are returned as continuous
``(x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax)``, torchvision's convention.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from deepercluster.data import BadImageError, decode_image

__all__ = ["VocDataset", "VocImage", "read_voc"]

_LAYOUT = (
    "a Pascal VOC folder holds Annotations/<id>.xml, JPEGImages/<id>.jpg and "
    "ImageSets/Main/<split>.txt"
)


@dataclass(frozen=True)
class VocImage:
    """One annotated image.

    Attributes:
        image: path of the image file.
        boxes: (M, 4) float32 ``(x1, y1, x2, y2)`` in pixels.
        names: the M class names.
        difficult: (M,) bool, objects VOC does not score.
    """

    image: Path
    boxes: np.ndarray
    names: tuple[str, ...]
    difficult: np.ndarray


def _image_file(root: Path, image_id: str) -> Path:
    jpeg = root / "JPEGImages" / f"{image_id}.jpg"
    if jpeg.is_file():
        return jpeg
    found = sorted((root / "JPEGImages").glob(f"{image_id}.*"))
    if not found:
        raise FileNotFoundError(
            f"{root / 'JPEGImages'} has no image for id {image_id!r} listed in ImageSets/Main; "
            "add the image or remove the id from the split file"
        )
    return found[0]


def _parse(xml_file: Path, split_file: Path) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    if not xml_file.is_file():
        raise FileNotFoundError(
            f"{xml_file} is missing for an id of {split_file}; add it or remove the id"
        )
    try:
        root = ET.parse(xml_file).getroot()
        boxes, names, difficult = [], [], []
        for obj in root.iter("object"):
            bnd = obj.find("bndbox")
            name = obj.findtext("name")
            if bnd is None or not name:
                raise ValueError("an <object> lacks <name> or <bndbox>")
            corners = [float(bnd.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
            x1, y1, x2, y2 = corners[0] - 1, corners[1] - 1, corners[2], corners[3]
            if not x2 > x1 >= -1 or not y2 > y1 >= -1:
                raise ValueError(f"box {corners} is empty or has a missing corner")
            boxes.append([x1, y1, x2, y2])
            names.append(name.strip())
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    except (ET.ParseError, ValueError) as exc:
        raise ValueError(
            f"{xml_file}: malformed VOC annotation ({exc}); fix the file or remove its id "
            f"from {split_file}"
        ) from None
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        tuple(names),
        np.asarray(difficult, dtype=bool),
    )


def read_voc(root: str | Path, split: str) -> list[VocImage]:
    """Every image of ``ImageSets/Main/<split>.txt`` with its annotation.

    Raises:
        FileNotFoundError: the folder, split file, an annotation or an image is missing.
        ValueError: an annotation is malformed (the message names the file).
    """
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not root.is_dir():
        raise FileNotFoundError(f"VOC folder {root} does not exist; {_LAYOUT}")
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} not found; {_LAYOUT}, or choose another split")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{split_file} lists no image ids; one id per line")
    out = []
    for image_id in ids:
        boxes, names, difficult = _parse(root / "Annotations" / f"{image_id}.xml", split_file)
        out.append(VocImage(_image_file(root, image_id), boxes, names, difficult))
    return out


class VocDataset(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """``(image (3, H, W) in [0, 1], {"boxes": (M, 4), "labels": (M,)})`` for the detector.

    Objects of a class outside ``classes`` and "difficult" ones are left out of the training
    targets (the VOC recipe); labels are 1-based (0 is torchvision's background). With
    ``flip``, image ``i`` at epoch ``e`` is mirrored when a generator seeded by ``(seed, e, i)``
    says so: reproducible with any number of workers. An unreadable image raises.
    """

    def __init__(
        self, images: list[VocImage], classes: list[str], *, flip: bool = False, seed: int = 0
    ) -> None:
        self.images = images
        self.lookup = {c: j + 1 for j, c in enumerate(classes)}
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        item = self.images[i]
        try:
            img = decode_image(item.image)  # RGB
        except BadImageError as exc:
            raise ValueError(f"{item.image}: unreadable image ({exc}); fix or remove it") from None
        keep = np.array(
            [n in self.lookup and not d for n, d in zip(item.names, item.difficult, strict=True)],
            dtype=bool,
        )
        boxes = torch.as_tensor(item.boxes[keep] if keep.size else item.boxes).reshape(-1, 4)
        labels = torch.as_tensor(
            [self.lookup[n] for n, k in zip(item.names, keep, strict=True) if k], dtype=torch.int64
        )
        if self.flip and np.random.default_rng((self.seed, self.epoch, i)).random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = torch.stack([img.width - boxes[:, 2], boxes[:, 1],
                                 img.width - boxes[:, 0], boxes[:, 3]], dim=1)  # fmt: skip
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return pixels.contiguous(), {"boxes": boxes.float(), "labels": labels}
