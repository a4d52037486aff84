"""Training on several gloo ranks equals training in one process with the combined batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepercluster import distributed
from deepercluster.config import load_config
from deepercluster.engine.checkpoint import load_checkpoint
from deepercluster.engine.fit import fit
from tests.conftest import write_pattern_images
from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed

SETTINGS = [
    "train.device=cpu",  # compared with CPU results (a GPU box would pick CUDA)
    "model.arch=small",
    "data.resolution=32",
    "data.workers=0",
    # Whole-image crops: a small crop upsampled to 32 px by Pillow (8-bit) holds runs of equal
    # pixels, and max-pooling routes the gradient of a tie to whichever element the kernel the
    # batch size selects finds first, so 1 x 16 and 2 x 8 would differ by more than rounding.
    # Flips and rotations still vary per position.
    "data.crop_scale_min=1.0",
    "cluster.k=8",
    "cluster.super_clusters=2",
    "cluster.reassign=1",
    "cluster.pca_dim=16",
    "train.epochs=1",
    "train.lr=0.05",
]


def _fit(rank: int, world: int, data: str, out: str, batch: int) -> None:
    cfg = load_config(
        overrides=[f'data.path="{data}"', f'out="{out}"', *SETTINGS, f"train.batch_size={batch}"]
    )
    # no env passed: fit() joins the group the caller (the harness) already set up
    result = fit(cfg, progress=False)
    assert distributed.world_size() == world and len(result.history) == 1


@pytest.mark.parametrize("world", [2])
def test_ranks_times_batch_equals_one_process(world: int, tmp_path: Path) -> None:
    data = write_pattern_images(tmp_path / "images", n=60)  # 60: the last step is uneven
    single, multi = tmp_path / "single", tmp_path / "multi"
    torch.set_num_threads(1)
    fit(
        load_config(
            overrides=[f'data.path="{data}"', f'out="{single}"', *SETTINGS, "train.batch_size=16"]
        ),
        progress=False,
    )
    run_ranks(_fit, world, str(data), str(multi), 16 // world)
    a, b = load_checkpoint(single / "checkpoint.pth"), load_checkpoint(multi / "checkpoint.pth")
    # same targets (rank 0 clustered the features the ranks extracted from their shards)
    assert torch.equal(a["clustering"]["labels"], b["clustering"]["labels"])
    # same parameters and batch-norm statistics, up to float32 summation order
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for key, value in a["heads"].items():
        torch.testing.assert_close(b["heads"][key], value, rtol=1e-4, atol=1e-5, msg=key)
