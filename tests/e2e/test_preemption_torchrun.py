"""Pre-emption of a 2-process job: a SIGTERM reaching one rank stops both at the same step."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import write_pattern_images
from tests.distributed.harness import free_port, run_ranks

from deepercluster.engine.checkpoint import load_checkpoint
from deepercluster.engine.preemption import EXIT_PREEMPTED, FAULT_ENV

pytestmark = pytest.mark.distributed

SETTINGS = [
    "train.device=cpu",
    "train.threads=1",
    "model.arch=small",
    "data.resolution=32",
    "data.workers=0",
    "cluster.k=4",
    "cluster.super_clusters=2",
    "cluster.pca_dim=8",
    "train.epochs=1",
    "train.batch_size=4",  # per rank: 8 images per step, 6 steps in the epoch
]


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    data = write_pattern_images(tmp_path / "images", n=48)
    out = tmp_path / "run"
    port = str(free_port())
    sets = [a for s in SETTINGS for a in ("--set", s)]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
            # rank 1 holds after its second step until a signal comes; rank 0 runs on
            **{FAULT_ENV: "train:2:pause:1"},
        )
        cmd = [sys.executable, "-m", "deepercluster", "train", "--data", str(data)]
        procs.append(
            subprocess.Popen(
                [*cmd, "--out", str(out), "--no-progress", "--timeout", "60", *sets],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        marker = out / ".paused-train"
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
            time.sleep(0.05)
        assert int(marker.read_text()) == procs[1].pid
        procs[1].send_signal(signal.SIGTERM)
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, errors[0][-2000:]
    assert "stopped by another rank at epoch 1, iteration 2" in errors[0]
    state = load_checkpoint(out / "checkpoint.pth")["state"]
    assert state == {"epoch": 0, "iteration": 2, "clustered_epoch": 0, "position": 16}


class _Crash(Exception):
    pass


def _round_crashed_then_resumed(rank: int, world: int, root: str) -> dict[str, Any]:
    """One clustering round on 2 ranks, stopped after the 2nd k-means run, then run again."""
    import numpy as np
    import torch

    from deepercluster.cluster import hierarchical
    from deepercluster.config import load_config
    from deepercluster.data import open_collection
    from deepercluster.engine.clustering import recluster
    from deepercluster.models import build_backbone

    cfg = load_config(overrides=[f"{s.split('=')[0]}={s.split('=')[1]}" for s in SETTINGS])
    collection = open_collection(Path(root) / "images")
    torch.manual_seed(0)
    model = build_backbone("small", sobel=True, resolution=32)

    def run(work: str, safe_point: Any = None) -> Any:
        clustering, _ = recluster(
            model, model.feature_dim, collection, cfg, epoch=0, device=torch.device("cpu"),
            previous=None, progress=False, work_dir=Path(root) / work, safe_point=safe_point,
        )  # fmt: skip
        return clustering

    def crash_after_second_run(stage: str, what: str) -> None:
        if stage == "kmeans" and what.startswith("k-means run 2"):
            raise _Crash

    with contextlib.suppress(_Crash):
        run("crashed", crash_after_second_run)
    calls = [0]
    real = hierarchical.lloyd

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    hierarchical.lloyd = counted  # type: ignore[assignment]
    resumed = run("crashed")
    hierarchical.lloyd = real  # type: ignore[assignment]
    straight = run("straight")
    return {
        "recomputed": calls[0],
        "same": bool(np.array_equal(resumed.labels, straight.labels)),
    }


def test_distributed_clustering_round_never_recomputes_a_saved_run(tmp_path: Path) -> None:
    write_pattern_images(tmp_path / "images", n=48)
    results = run_ranks(_round_crashed_then_resumed, 2, str(tmp_path))
    # m = 2: 3 k-means runs; the first two were saved by both ranks before the crash
    assert results == [{"recomputed": 1, "same": True}] * 2
