"""Shared fixtures: seeds and markers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" in item.keywords and not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def write_pattern_images(root: Path, n: int = 64, size: int = 32, seed: int = 0) -> Path:
    """``n`` PNG images of 4 kinds (horizontal/vertical stripes, blob, checker) with noise.

    Real files on disk, with some structure for the clustering to find.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        kind = i % 4
        period = rng.integers(4, 9)
        if kind == 0:
            img = (np.sin(yy * 2 * np.pi / period) > 0) * 200.0
        elif kind == 1:
            img = (np.sin(xx * 2 * np.pi / period) > 0) * 200.0
        elif kind == 2:
            cy, cx = rng.integers(8, size - 8, 2)
            img = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2) * 220.0
        else:
            img = (((yy // period) + (xx // period)) % 2) * 200.0
        img = img + rng.normal(0, 20, (size, size))
        rgb = np.stack([img, img * rng.uniform(0.5, 1), img * rng.uniform(0.5, 1)], -1)
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(root / f"img_{i:03d}.png")
    return root


@pytest.fixture
def tiny_image_dir(tmp_path: Path) -> Path:
    return write_pattern_images(tmp_path / "images")


def write_stripe_classes(
    root: Path, per_class: int, seed: int, classes: tuple[str, ...] = ("horizontal", "vertical")
) -> Path:
    """A labelled folder: one sub-folder per class of 32 px PNG stripes (``horizontal``,
    ``vertical``, ``diagonal``) of random period and colour with noise: visibly different
    classes, a low-level cue any network's probes can find."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    axes = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (np.sin(axes[name] * 2 * np.pi / rng.integers(4, 9)) > 0) * 200.0
            img = img + rng.normal(0, 20, (32, 32))
            rgb = np.stack([img, img * rng.uniform(0.5, 1), img], -1).clip(0, 255)
            Image.fromarray(rgb.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for a test that trains: on a busy 2-core runner two threads wait on
    each other far longer than one computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_random_backbone(path: Path, resolution: int = 32) -> Path:
    """A random-init ``small`` Sobel backbone as a ``backbone.pth`` that ``--checkpoint``
    accepts, trained at ``resolution`` px."""
    from deepercluster.engine.checkpoint import save_checkpoint
    from deepercluster.models import build_backbone

    net = build_backbone("small", sobel=True, resolution=resolution)
    payload = {
        "arch": "small",
        "sobel": True,
        "resolution": resolution,
        "state_dict": net.state_dict(),
        "config": {"data": {"resolution": resolution}},
    }
    save_checkpoint(path, payload)
    return path
