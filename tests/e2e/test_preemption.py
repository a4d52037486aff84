"""Crashes and pre-emption, with real signals sent to a real ``deepercluster train`` process.

Each faulty run is a subprocess stopped at a chosen safe point: SIGKILL (``kill -9``) sent by
the process itself through the ``DEEPERCLUSTER_FAULT`` test hook, or SIGTERM/SIGUSR1 sent by
the test while the hook holds the process at that point. The same command is then run again
(in this process) and the final checkpoint must equal an uninterrupted run's, bit for bit,
while the work saved before the fault is not done again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.conftest import write_pattern_images

from deepercluster import cli
from deepercluster.cluster import hierarchical
from deepercluster.engine import extraction
from deepercluster.engine.checkpoint import load_checkpoint
from deepercluster.engine.preemption import EXIT_PREEMPTED, FAULT_ENV
from deepercluster.engine.stages import STAGE_DIR

SETTINGS = [
    "train.device=cpu",
    "train.threads=1",
    "model.arch=small",
    "data.resolution=32",
    "data.workers=0",
    "cluster.k=4",
    "cluster.super_clusters=2",
    "cluster.reassign=1",
    "cluster.pca_dim=8",
    "cluster.chunk_images=8",  # 24 images: 3 extraction chunks per round
    "train.epochs=1",
    "train.batch_size=8",
    "train.checkpoint_every=2",
]


def _args(data: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    sets = [a for s in (*SETTINGS, *extra) for a in ("--set", s)]
    return ["train", "--data", str(data), "--out", str(out), "--no-progress", *sets]


def _start(
    data: Path, out: Path, fault: str, extra: tuple[str, ...] = (), *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    env = {**os.environ, FAULT_ENV: fault, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "deepercluster", *_args(data, out, extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=new_session,  # its own process group, for os.killpg
    )


def _assert_same_run(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a / "checkpoint.pth"), load_checkpoint(b / "checkpoint.pth")
    assert x["state"] == y["state"]
    for part in ("model", "heads"):
        for key in x[part]:
            assert torch.equal(x[part][key], y[part][key]), (part, key)
    for key in ("labels", "super_clusters", "sub_clusters"):
        assert torch.equal(x["clustering"][key], y["clustering"][key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 tiny images and the uninterrupted run on them."""
    root = tmp_path_factory.mktemp("preemption")
    data = write_pattern_images(root / "images", n=24)
    assert cli.main(_args(data, root / "straight")) == 0
    assert not (root / "straight" / STAGE_DIR).exists()  # cleaned once the targets are saved
    return data, root / "straight"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the chunks extracted and the k-means runs computed by the in-process resume."""
    calls = {"chunks": 0, "kmeans": 0}
    real_extract, real_kmeans = extraction.extract_features, hierarchical.lloyd

    def extract(*args: Any, **kwargs: Any) -> Any:
        calls["chunks"] += 1
        return real_extract(*args, **kwargs)

    def kmeans(*args: Any, **kwargs: Any) -> Any:
        calls["kmeans"] += 1
        return real_kmeans(*args, **kwargs)

    monkeypatch.setattr(extraction, "extract_features", extract)
    monkeypatch.setattr(hierarchical, "lloyd", kmeans)
    return calls


# An uninterrupted run: 3 extraction chunks, 1 PCA, 3 k-means runs (m = 2), 3 training steps.
@pytest.mark.parametrize(
    ("fault", "chunks_left", "kmeans_left"),
    [
        ("extract:2", 1, 3),  # 2 of 3 chunks were saved
        ("pca:1", 0, 3),  # extraction and PCA saved
        ("kmeans:1", 0, 2),  # level 1 saved
        ("kmeans:2", 0, 1),  # level 1 and the first level-2 run saved
        ("train:3", 0, 0),  # the clustering in the checkpoint; training saved at iteration 2
    ],
)
def test_kill_9_at_any_stage_then_resume_equals_uninterrupted(
    fault: str,
    chunks_left: int,
    kmeans_left: int,
    reference: tuple[Path, Path],
    tmp_path: Path,
    counted: dict[str, int],
) -> None:
    data, straight = reference
    out = tmp_path / "run"
    proc = _start(data, out, f"{fault}:kill")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert cli.main(_args(data, out)) == 0
    assert (counted["chunks"], counted["kmeans"]) == (chunks_left, kmeans_left)
    _assert_same_run(straight, out)
    said = {  # each stage says what it takes up again
        "extract:2": "resuming extraction at chunk 3 of 3",
        "pca:1": "PCA reloaded",
        "kmeans:1": "k-means: 1 of 3 runs already done",
        "kmeans:2": "k-means: 2 of 3 runs already done",
        "train:3": "resuming from",
    }[fault]
    assert said in (out / "train.log").read_text()


def test_kill_9_in_a_later_round_with_heads_started_from_the_clusters(tmp_path: Path) -> None:
    """The second round starts its heads from the clusters and the previous round's super
    head: killed inside that round's k-means, the resumed run starts them the same way."""
    data = write_pattern_images(tmp_path / "images", n=24)
    extra = ("train.epochs=2", "cluster.head_init=centroids", "cluster.super_carry=matched")
    assert cli.main(_args(data, tmp_path / "straight", extra)) == 0
    proc = _start(data, tmp_path / "run", "kmeans:5:kill", extra)  # round 2, second run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert cli.main(_args(data, tmp_path / "run", extra)) == 0
    _assert_same_run(tmp_path / "straight", tmp_path / "run")
    assert "k-means: 2 of 3 runs already done" in (tmp_path / "run" / "train.log").read_text()


# A scheduler (SLURM's scancel, `kill -- -PGID`) signals the whole process group, the data
# loader's worker processes included: the ``group`` case sends it there while a worker runs.
@pytest.mark.parametrize(
    ("fault", "sig", "state", "group"),
    [
        ("train:1", signal.SIGTERM, {"epoch": 0, "iteration": 1, "clustered_epoch": 0}, False),
        ("extract:1", signal.SIGUSR1, None, False),  # before any training checkpoint exists
        ("train:1", signal.SIGTERM, {"epoch": 0, "iteration": 1, "clustered_epoch": 0}, True),
    ],
)
def test_stop_signal_saves_at_the_next_safe_point_and_exits_75(
    fault: str,
    sig: signal.Signals,
    state: dict[str, int] | None,
    group: bool,
    reference: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    data, straight = reference
    out = tmp_path / "run"
    extra = ("data.workers=1",) if group else ()
    proc = _start(data, out, f"{fault}:pause", extra, new_session=group)
    marker = out / f".paused-{fault.split(':')[0]}"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1].decode()[-2000:]
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err.decode()[-2000:]
    assert "run the same command to continue" in err.decode()
    if state is None:
        assert not (out / "checkpoint.pth").exists()
        features = out / STAGE_DIR / "rank-0" / "features" / "progress.json"
        assert '"chunks_done": 1' in features.read_text()
    else:
        saved = load_checkpoint(out / "checkpoint.pth")["state"]
        assert {k: saved[k] for k in state} == state
    assert cli.main(_args(data, out, extra)) == 0
    _assert_same_run(straight, out)


def test_disk_feature_store_gives_the_memory_store_clusters(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    data, straight = reference
    out = tmp_path / "disk"
    args = [*_args(data, out), "--feature-store", "disk", "--memory-limit", "32MB"]
    assert cli.main(args) == 0
    a = load_checkpoint(straight / "checkpoint.pth")["clustering"]["labels"].numpy()
    b = load_checkpoint(out / "checkpoint.pth")["clustering"]["labels"].numpy()
    assert np.array_equal(a, b)
