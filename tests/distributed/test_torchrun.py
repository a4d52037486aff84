"""The real launcher: ``torchrun -m deepercluster train`` on CPU (gloo), resume on another
world size, and a rank that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepercluster.engine.checkpoint import load_checkpoint
from tests.conftest import write_pattern_images
from tests.distributed.harness import free_port

pytestmark = pytest.mark.distributed
TIMEOUT = 8  # seconds; a frozen rank is detected only by this timeout

SETTINGS = [
    "train.device=cpu",  # compared with CPU results (a GPU box would pick CUDA)
    "model.arch=small",
    "data.resolution=32",
    "data.workers=0",
    "cluster.k=8",
    "cluster.super_clusters=2",
    "cluster.reassign=1",
    "cluster.pca_dim=16",
    "train.batch_size=4",
    "train.threads=1",
]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for s in [*SETTINGS, *extra] for a in ("--set", s)]
    return [
        "-m",
        "deepercluster",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *sets,
    ]


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("layout", ["replicated", "grouped"])
def test_torchrun_four_ranks_then_resume_on_two(layout: str, tmp_path: Path) -> None:
    data = write_pattern_images(tmp_path / "images", n=48)
    out = tmp_path / "run"
    # grouped: DeepCluster-style 2 super-classes (no rotation, m = 2): two training groups of
    # two processes, and level 2 of k-means in two clustering groups
    extra = ["cluster.rotation=false"] if layout == "grouped" else []
    first = _torchrun(4, _args(data, out, "train.epochs=1", f"train.layout={layout}", *extra))
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"4 processes (gloo), {layout} layout" in first.stderr
    if layout == "grouped":
        assert "level 2 of k-means in 2 clustering groups" in first.stderr
    ck = load_checkpoint(out / "checkpoint.pth")
    assert ck["state"]["epoch"] == 1 and len(ck["rng"]) == 4
    assert ck["layout"]["layout"] == layout
    n_super = 2 if layout == "grouped" else 8  # S = m, or 4m with rotation
    assert ck["heads"]["sub_weight"].shape == (n_super, 4, 512)  # k/m = 4 sub-clusters each
    # every sub-head was trained and saved, whichever process held it
    assert all(float(w.abs().sum()) > 0 for w in ck["heads"]["sub_weight"])
    second = _torchrun(2, _args(data, out, "train.epochs=2", "train.layout=auto", *extra))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "2 processes (gloo), replicated" in second.stderr
    ck = load_checkpoint(out / "checkpoint.pth")
    assert ck["state"]["epoch"] == 2 and len(ck["rng"]) == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_dead_rank_stops_the_others_within_the_timeout(
    sig: signal.Signals, tmp_path: Path
) -> None:
    """Two ranks started by hand (as srun would); rank 1 is killed (or frozen) mid-training."""
    data = write_pattern_images(tmp_path / "images", n=48)
    out = tmp_path / "run"
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        args = [*_args(data, out, "train.epochs=50"), "--timeout", str(TIMEOUT)]
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pth").exists():  # training has started
            assert time.monotonic() < deadline, (
                procs[0].stderr.read() if procs[0].poll() else "slow"
            )
            time.sleep(0.2)
        time.sleep(1.0)
        procs[1].send_signal(sig)
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()  # reap it and close its pipes
    assert procs[0].returncode == 1, err[-3000:]
    assert "lost contact with the other processes" in err, err[-3000:]
    assert waited < TIMEOUT + 10  # the collective timeout, plus slack
    # and the run resumes from its last checkpoint (one process is fine)
    resumed = subprocess.run(
        [sys.executable, *_args(data, out, "train.epochs=2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
