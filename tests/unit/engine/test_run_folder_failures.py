"""The pieces that keep a run folder whole: lock, previous checkpoint, damaged files, errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepercluster.engine.checkpoint import PREVIOUS_NAME, load_checkpoint, save_checkpoint
from deepercluster.engine.claim import remove_dead_temp_files
from deepercluster.engine.failures import CheckpointError, RunFolderError, io_error_of
from deepercluster.engine.lock import RunLock
from deepercluster.log import MetricsWriter


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()} on "):
        second.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    first.release()
    second.acquire()  # released: free again
    second.release()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / ".lock")], check=False)
    assert proc.returncode == -9
    lock = RunLock(tmp_path)
    lock.acquire()  # the kernel let go of it with the process
    lock.release()


def test_a_forked_worker_does_not_keep_the_lock_of_a_killed_run(tmp_path: Path) -> None:
    code = (
        "import os, sys, time; from pathlib import Path; "
        "from deepercluster.engine.lock import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
        "pid = os.fork()\n"
        "if pid == 0: os.write(1, b'forked\\n'); time.sleep(30); os._exit(0)\n"
        "os.write(1, b'%d\\n' % pid); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    # Two lines, each one atomic write, in either order (the child keeps the pipe open: no read
    # to the end). The child's line says its fork hook has run; until then it holds a copy.
    lines = {proc.stdout.readline().strip() for _ in range(2)}
    assert "forked" in lines, lines
    worker = int((lines - {"forked"}).pop())
    assert proc.wait() == -9
    try:
        lock = RunLock(tmp_path)
        lock.acquire()  # the worker (a DataLoader's, say) still lives, without the lock
        lock.release()
    finally:
        os.kill(worker, 9)
        proc.stdout.close()


def test_each_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    for i in range(3):
        save_checkpoint(path, {"i": torch.tensor(i)}, keep_previous=True)
    assert int(load_checkpoint(path)["i"]) == 2
    assert int(load_checkpoint(tmp_path / PREVIOUS_NAME)["i"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pth", PREVIOUS_NAME])


def test_full_disk_during_a_save_leaves_the_old_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"i": torch.tensor(1)}, keep_previous=True)

    def full_disk(*args: object, **kwargs: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # torch's C++ writer reports it in its own words
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos"
            ) from None

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RuntimeError) as info:
        save_checkpoint(path, {"i": torch.tensor(2)}, keep_previous=True)
    found = io_error_of(info.value)
    assert found is not None and found.errno == errno.ENOSPC  # found in __context__
    assert int(load_checkpoint(path)["i"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
        (RuntimeError("PytorchStreamWriter failed writing file: No space left on device"), 28),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64"), None),
        (ValueError("bad"), None),
    ],
)
def test_io_errors_are_found_in_the_message_too(error: BaseException, code: int | None) -> None:
    found = io_error_of(error)
    assert (found.errno if found else None) == code


def _evil() -> bytes:
    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, ("echo owned",))

    import io

    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    return buf.getvalue()


def test_damaged_checkpoints_are_named_without_torch_advice(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"w": torch.zeros(1000)})
    blob = good.read_bytes()
    cases = {
        "cut.pth": (blob[: len(blob) // 2], "is damaged (cut short or overwritten"),
        "short.pth": (blob[:3000], "is damaged (cut short or overwritten"),
        **{
            f"random-{i}.pth": (os.urandom(4000), "is damaged (its contents are not a checkpoint)")
            for i in range(200)  # anything may come out of the unpickler: always named so
        },
        "empty.pth": (b"", "is damaged (empty)"),
        "evil.pth": (_evil(), "holds pickled Python objects besides tensors"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name} {words}"), str(info.value)
        assert "weights_only" not in str(info.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "list.pth")


def test_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stage = tmp_path / "clustering-stage" / "rank-0"
    stage.mkdir(parents=True)
    left = [tmp_path / f".checkpoint.pth.tmp-{dead}", stage / f".kmeans-1.tmp-{dead}.npz"]
    mine = tmp_path / f".summary.json.tmp-{os.getpid()}"
    for path in [*left, mine]:
        path.write_bytes(b"x" * 100)
    remove_dead_temp_files(tmp_path)
    assert [p.exists() for p in left] == [False, False] and mine.exists()


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for epoch in (1, 2, 2):  # a kill after epoch 2's row, before its checkpoint
            writer.write({"epoch": epoch, "loss": 1.0 + epoch}, step=epoch)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 3, "lo')  # a line cut short
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        assert writer.keep_epochs(1) == 3  # the checkpoint: 1 epoch finished
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,loss", "1,2.0"]


def test_metrics_numbered_from_0_by_an_older_version_are_renumbered(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for epoch in (0, 1, 2):
            writer.write({"epoch": epoch, "loss": 1.0 + epoch}, step=epoch)
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        assert writer.keep_epochs(2) == 1  # its epoch 2 (third) came after the checkpoint
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,loss",
        "1,1.0",
        "2,2.0",
    ]


def test_each_failure_has_its_exit_code_and_fix(tmp_path: Path) -> None:
    from deepercluster.cli.exits import describe

    (tmp_path / "checkpoint.pth").write_bytes(b"")
    (tmp_path / PREVIOUS_NAME).write_bytes(b"")
    code, message = describe(CheckpointError(tmp_path / "checkpoint.pth", "is damaged (x)"))
    assert code == 73 and message.endswith(
        "run the run's `deepercluster train` command again: it resumes from "
        "checkpoint.prev.pth and rewrites it"
    )
    code, message = describe(CheckpointError(tmp_path / "backbone.pth", "is damaged (x)"))
    assert code == 73 and "rewrites it from checkpoint.pth" in message
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.csv")
    assert describe(full) == (
        74,
        "I/O error (/runs/x/metrics.csv): No space left on device; free space (or fix the "
        "disk), then run the same command again: it resumes from the last checkpoint",
    )
    assert describe(FileNotFoundError(2, "No such file or directory", "a.png"))[0] == 2
    assert describe(RunFolderError("busy"))[0] == 73
    assert describe(KeyError("x"))[0] == 70
