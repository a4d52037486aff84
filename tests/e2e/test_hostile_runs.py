"""An unlucky operator's run folder: two runs on one folder, damaged or deleted checkpoints, a
full disk, what a kill leaves behind, and signals. Each case checks the exit code, the message
and that nothing was lost (the run then finishes equal to an uninterrupted one).

One reference run (module-scoped) is copied for each case; cases that need a real crash use
the ``DEEPERCLUSTER_FAULT`` hook of ``engine/preemption.py`` in a subprocess.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import write_pattern_images
from tests.e2e.test_preemption import _assert_same_run

from deepercluster import cli
from deepercluster.engine import fit as fit_module
from deepercluster.engine.checkpoint import PREVIOUS_NAME, load_checkpoint
from deepercluster.engine.preemption import FAULT_ENV, Preempted
from deepercluster.engine.stages import STAGE_DIR

SETTINGS = [
    "train.device=cpu", "train.threads=1", "model.arch=small", "data.resolution=32",
    "data.workers=0", "cluster.k=4", "cluster.super_clusters=2", "cluster.reassign=1",
    "cluster.pca_dim=8", "cluster.chunk_images=8", "train.epochs=1", "train.batch_size=8",
    "train.checkpoint_every=2",
]  # fmt: skip
# 24 images: 3 extraction chunks, 3 k-means runs, 3 steps; saves after the clustering, at
# iteration 2 (checkpoint.prev.pth of the finished run) and at the end of the epoch.


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return ["train", "--data", str(data), "--out", str(out), "--no-progress", *sets, *extra]


def _train(data: Path, out: Path, *extra: str) -> int:
    return cli.main(_args(data, out, *extra))


def _start(data: Path, out: Path, fault: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, FAULT_ENV: fault, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "deepercluster", *_args(data, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*.tmp-*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 tiny images and an uninterrupted, finished run on them."""
    root = tmp_path_factory.mktemp("hostile-runs")
    data = write_pattern_images(root / "images", n=24)
    assert _train(data, root / "straight") == 0
    return data, root / "straight"


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / "train.log").write_text("")
    return to


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_kill_frees_it(
    reference: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, straight = reference
    out = tmp_path / "run"
    proc = _start(data, out, "train:1:pause")  # holds the folder, clustered, mid-epoch
    try:
        deadline = time.monotonic() + 120
        while not (out / ".paused-train").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            time.sleep(0.05)
        saved = (out / "checkpoint.pth").read_bytes()
        assert _train(data, out) == 73
        err = capsys.readouterr().err
        holder = f"pid {proc.pid} on {socket.gethostname()}, started "
        assert f"deepercluster: error: {out} is in use by another run ({holder}" in err, err
        assert "wait for it to finish or stop it, or choose another --out" in err
        assert (out / "checkpoint.pth").read_bytes() == saved  # the holder's work is intact
        assert f"stopped: RunFolderError: {out} is in use" in (out / "train.log").read_text()
    finally:
        proc.kill()  # kill -9: the kernel releases the lock
        proc.communicate()
    assert _train(data, out) == 0
    _assert_same_run(straight, out)
    assert _leftovers(out) == [] and _epochs(out) == [1]


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    data, straight = reference
    out = _copy(straight, tmp_path / "run")
    ck = out / "checkpoint.pth"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    assert _train(data, out) == 0
    log = (out / "train.log").read_text()
    assert (
        f"{ck} is damaged (cut short or overwritten: PytorchStreamReader failed reading zip "
        "archive: failed finding central directory) (moved to checkpoint.pth.damaged): "
        "resuming from checkpoint.prev.pth, an earlier point of the run"
    ) in log
    assert (out / "checkpoint.pth.damaged").exists()
    _assert_same_run(straight, out)  # the last step was trained again, nothing lost
    assert _epochs(out) == [1]  # the epoch's row was cut back, then written once


def _evil_checkpoint() -> bytes:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo owned",))

    buf = io.BytesIO()
    torch.save({"model": Evil(), "state": {}, "config": {}}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "random", "malicious"])
def test_an_unusable_checkpoint_without_a_previous_one_stops_every_command_in_one_line(
    kind: str, reference: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, straight = reference
    out = _copy(straight, tmp_path / "run")
    ck = out / "checkpoint.pth"
    blob, problem = {
        "truncated": (ck.read_bytes()[:5000], "is damaged (cut short or overwritten)"),
        "random": (os.urandom(20_000), "is damaged (its contents are not a checkpoint)"),
        "malicious": (
            _evil_checkpoint(),
            "holds pickled Python objects besides tensors, which are never loaded",
        ),
    }[kind]
    ck.write_bytes(blob)
    (out / PREVIOUS_NAME).unlink()
    assert _train(data, out) == 73
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"deepercluster: error: {ck} {problem}"), err
    assert "no earlier checkpoint to fall back to: start the run over with `deepercluster " in err
    for argv in (
        ["assignments", str(out), "--no-progress"],
        ["inspect", str(out), "--no-progress"],
        ["eval", "knn", "--checkpoint", str(ck), "--train-data", str(data),
         "--test-data", str(data), "--no-progress"],
    ):  # fmt: skip
        assert cli.main(argv) == 73, argv
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"deepercluster: error: {ck} {problem}"), err
        fix = (
            "if you trust the file, save its weights alone (a dict of tensors) with torch and "
            "pass that file"
            if kind == "malicious" and argv[0] == "eval"  # read as a trunk from elsewhere
            else "restore it from a copy, or pass another file"
        )
        assert err.splitlines()[-1].endswith(f"; {fix}"), err
        assert "Traceback" not in err and "weights_only" not in err
    assert ck.read_bytes() == blob and _epochs(out) == [1]  # nothing was touched


def test_a_run_without_its_checkpoint_is_refused_until_restart(
    reference: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, straight = reference
    out = _copy(straight, tmp_path / "run")
    (out / "checkpoint.pth").unlink()
    (out / PREVIOUS_NAME).unlink()
    metrics = (out / "metrics.jsonl").read_text()
    assert _train(data, out) == 73
    assert (
        f"deepercluster: error: {out} holds a run (metrics.jsonl, metrics.csv, summary.json, "
        "backbone.pth) but no checkpoint.pth to continue it; add --restart to archive the old "
        "run's files and start over, or choose another --out"
    ) in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == metrics
    assert _train(data, out, "--restart") == 0
    (archive,) = (out / "archive").iterdir()
    assert (archive / "metrics.jsonl").read_text() == metrics  # kept, not deleted
    assert "--restart: the previous run's files" in (out / "train.log").read_text()
    _assert_same_run(straight, out)
    assert _epochs(out) == [1]


def test_a_full_disk_during_a_checkpoint_write_exits_74_and_loses_nothing(
    reference: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, straight = reference
    out = tmp_path / "run"
    real, calls = torch.save, {"n": 0}

    def second_save_fills_the_disk(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] < 2:
            return real(*args, **kwargs)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # as torch reports it: its own words, the OSError as __context__
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1024"
            ) from None

    monkeypatch.setattr(torch, "save", second_save_fills_the_disk)
    assert _train(data, out) == 74
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "deepercluster: error: I/O error: No space left on device; free space (or fix the "
        "disk), then run the same command again: it resumes from the last checkpoint"
    )
    assert "Traceback" not in err
    log = (out / "train.log").read_text()
    assert "stopped: RuntimeError: [enforce fail at inline_container.cc:672]" in log
    assert "Traceback (most recent call last)" in log  # the console got one line
    assert _leftovers(out) == []
    assert load_checkpoint(out / "checkpoint.pth")["state"]["clustered_epoch"] == 0
    monkeypatch.undo()
    assert _train(data, out) == 0
    _assert_same_run(straight, out)


def test_what_a_kill_leaves_behind_is_cleaned_or_redone(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    data, straight = reference
    out = tmp_path / "run"
    proc = _start(data, out, "kmeans:2:kill")  # level 1 and one level-2 run saved
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    stage = out / STAGE_DIR / "rank-0"
    cut = stage / "kmeans-1.npz"
    cut.write_bytes(cut.read_bytes()[:100])  # a kill in the middle of its write
    (out / f".checkpoint.pth.tmp-{proc.pid}").write_bytes(bytes(10_000))
    assert _train(data, out) == 0
    log = (out / "train.log").read_text()
    for line in (
        "extraction: all 3 chunks already done, reloaded",
        "PCA reloaded",
        "k-means: 2 of 3 runs already done",
        f"{cut} is damaged (BadZipFile",
        f"removed {out / f'.checkpoint.pth.tmp-{proc.pid}'}, left by a stopped process",
    ):
        assert line in log, line
    assert _leftovers(out) == []
    _assert_same_run(straight, out)


def test_duplicate_metric_rows_and_a_missing_summary_are_repaired(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    data, straight = reference
    out = _copy(straight, tmp_path / "run")
    # A kill after the epoch's row was written, before its checkpoint: the last checkpoint
    # is the mid-epoch one, and the epoch is trained (and reported) again.
    os.replace(out / PREVIOUS_NAME, out / "checkpoint.pth")
    assert _train(data, out) == 0
    assert _epochs(out) == [1]
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + one row
    _assert_same_run(straight, out)
    # A kill during the final backbone write: the re-run trains nothing, writes the rest.
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").unlink()
    (out / "backbone.pth").unlink()
    assert _train(data, out) == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "backbone.pth").is_file() and _epochs(out) == [1]


def test_signal_handlers_are_the_callers_again_after_every_command(
    reference: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    data, straight = reference
    out = _copy(straight, tmp_path / "run")
    # The caller here is Python with its own Ctrl-C handler. A test session started as a
    # background job of a non-interactive shell inherits Ctrl-C ignored instead, and an
    # ignored signal has nothing to pass on: give this test Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    before = [signal.getsignal(s) for s in sigs]
    assert _train(data, out) == 0  # a finished run: nothing to train
    assert [signal.getsignal(s) for s in sigs] == before
    assert _train(data, tmp_path / "new", "--set", "cluster.k=100") == 2
    assert [signal.getsignal(s) for s in sigs] == before

    # A real Ctrl-C: the command ends (130 for a shell), then the caller gets its Ctrl-C.
    def ctrl_c(*args: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(fit_module, "fit", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _train(data, out)
    assert "deepercluster: interrupted; run the same command again" in capsys.readouterr().err
    assert [signal.getsignal(s) for s in sigs] == before

    # A bug is not "run again": 70, one line, and where the traceback is.
    def bug(*args: Any, **kwargs: Any) -> None:
        raise TypeError("unsupported operand")

    monkeypatch.setattr(fit_module, "fit", bug)
    assert _train(data, out) == 70
    cpu_line, *rest = capsys.readouterr().err.splitlines()  # the run's CPU settings, then:
    assert cpu_line.startswith("CPU: ") and rest == [
        "deepercluster: error: internal error (TypeError: unsupported operand); run again with "
        "`deepercluster --debug ...` to see the traceback"
    ]

    monkeypatch.undo()
    monkeypatch.setattr(fit_module, "recluster", bug)  # inside a run: train.log has it
    assert _train(data, tmp_path / "bug") == 70
    assert capsys.readouterr().err.splitlines()[-1] == (
        "deepercluster: error: internal error (TypeError: unsupported operand); the traceback "
        f"is in {tmp_path / 'bug' / 'train.log'}"
    )
    assert "Traceback" in (tmp_path / "bug" / "train.log").read_text()
    assert [signal.getsignal(s) for s in sigs] == before

    # SIGTERM stopped the run: exit 75, and the caller's own handler hears of it.
    def preempted(*args: Any, **kwargs: Any) -> None:
        raise Preempted("stopped by SIGTERM at step 1; run the same command to continue", 15)

    heard: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))
    try:
        monkeypatch.setattr(fit_module, "fit", preempted)
        assert _train(data, out) == 75
        assert heard == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_what_a_new_user_meets(
    reference: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, straight = reference
    # a text file of non-paths as --data
    listing = tmp_path / "list.txt"
    listing.write_text("hello world\nnot a path\n")
    out = tmp_path / "junk"
    assert _train(listing, out) == 2
    err = capsys.readouterr().err
    assert f"none of the 2 lines of {listing} is a readable image" in err, err
    assert len((out / "skipped.csv").read_text().splitlines()) == 3
    assert "stopped: NoReadableImages: none of the 2 lines" in (out / "train.log").read_text()
    # a refused run leaves no folder behind; --debug shows the traceback on the console
    assert cli.main(["--debug", *_args(data, tmp_path / "fresh", "--set", "cluster.k=100")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == (
        "deepercluster: error: cluster.k (100) is larger than the number of images (24); lower "
        "cluster.k (a few images per cluster at least, e.g. 2)"
    )
    assert not (tmp_path / "fresh").exists()
    # kNN on images without labels names the real flags
    argv = ["eval", "knn", "--checkpoint", str(straight), "--train-data", str(data),
            "--test-data", str(data), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "pass --train-labels CSV with path and label columns" in capsys.readouterr().err
    # every exit code is documented in --help
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for code in (0, 1, 2, 70, 73, 74, 75, 130):
        assert f"\n  {code:>3}  " in text, code
