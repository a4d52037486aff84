"""Checkpoints: atomic, plain data, strict about incompatible settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepercluster import __version__
from deepercluster.config import load_config
from deepercluster.engine.checkpoint import (
    IncompatibleCheckpointError,
    arrays_to_tensors,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
    tensors_to_arrays,
)


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    arrays = {
        "labels": np.arange(5),
        "nested": {"c": np.ones((2, 3), np.float32)},
        "n": np.int64(3),
        "zero_d": np.asarray(2.5),
    }
    payload = {
        "model": {"w": torch.randn(3)},
        "clustering": arrays_to_tensors(arrays),
        "x": [["a", "b"]],
    }
    path = tmp_path / "ck.pth"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["version"] == __version__
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])
    back = tensors_to_arrays(loaded["clustering"])
    np.testing.assert_array_equal(back["labels"], np.arange(5))
    assert back["nested"]["c"].dtype == np.float32 and back["n"] == 3
    assert back["zero_d"].shape == () and float(back["zero_d"]) == 2.5
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.pth"
    save_checkpoint(path, {"a": torch.tensor(1)})

    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"a": Boom()})
    assert int(load_checkpoint(path)["a"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]


def test_incompatible_settings_are_named(tmp_path: Path) -> None:
    old = load_config(overrides=["cluster.k=100"]).to_dict()
    new = load_config(overrides=["cluster.k=200", "train.epochs=5"]).to_dict()
    with pytest.raises(
        IncompatibleCheckpointError, match=r"cluster.k: 100 in the checkpoint vs 200 now"
    ):
        check_compatible(old, new, tmp_path / "ck.pth")


def test_tolerated_changes_are_returned(tmp_path: Path) -> None:
    old = load_config().to_dict()
    new = load_config(overrides=["train.epochs=500", "data.workers=0", "out=elsewhere"]).to_dict()
    assert check_compatible(old, new, tmp_path) == ["data.workers", "out", "train.epochs"]


def test_a_removed_setting_in_an_older_checkpoint_does_not_block_the_resume(
    tmp_path: Path,
) -> None:
    old = load_config().to_dict()
    old["train"]["reuse_memory"] = False  # what earlier versions saved
    assert check_compatible(old, load_config().to_dict(), tmp_path) == []
