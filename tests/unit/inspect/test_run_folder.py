"""The run-folder reader (engine.run_folder) on a tiny run: one reader for every consumer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.unit.inspect.conftest import N_IMAGES, TinyRun

from deepercluster.engine.run_folder import load_pretrained, open_run, read_metrics


def test_open_run_reads_the_folder_or_its_checkpoint(tiny_run: TinyRun) -> None:
    run = open_run(tiny_run.path)
    again = open_run(tiny_run.path / "checkpoint.pth")
    assert run.path == again.path == tiny_run.path
    np.testing.assert_array_equal(run.clustering.labels, tiny_run.clustering.labels)
    assert (run.epoch, run.clustered_epoch, run.n_images) == (3, 2, N_IMAGES + 1)
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]
    assert run.summary() == {}  # written when a run finishes; the tiny run never trained
    assert len(run.collection()) == N_IMAGES + 1


def test_metrics_fall_back_to_the_csv(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,train/loss\n0,2.5\n1,\n")
    assert read_metrics(tmp_path) == [{"epoch": 0.0, "train/loss": 2.5}, {"epoch": 1.0}]
    assert read_metrics(tmp_path / "none") == []


def test_missing_run_and_empty_folder_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pth not found"):
        open_run(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"neither backbone\.pth nor checkpoint\.pth"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope.pth")


def test_an_exported_file_takes_the_resolution_of_the_config_beside_it(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    from deepercluster.inspect.export import export_backbone

    exported = export_backbone(open_run(tiny_run.path).backbone(), tmp_path / "b.pt")
    assert load_pretrained(exported).resolution == 224  # a bare state_dict: the default
    (tmp_path / "config.json").write_text(json.dumps(tiny_run.cfg.to_dict()))
    assert load_pretrained(exported).resolution == 32
