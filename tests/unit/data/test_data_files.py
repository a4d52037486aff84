"""Reading image files: only regular ones are opened, and never more than max_bytes.

The folder test reads in a child process under a time limit and an address-space limit, so
that a regression (a FIFO's open blocking, an endless read of /dev/zero) fails the test
instead of hanging CI or waking the OOM killer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from deepercluster.data import BadImageError, decode_image, open_collection
from deepercluster.data.files import read_file

Encode = Callable[..., bytes]
HUGE = 3_000_000_000  # a sparse file: no disk and no memory unless someone reads it

_CHILD = """
import json, os, resource, sys, tracemalloc
from deepercluster.data import BadImageError, open_collection

collection = open_collection(sys.argv[1])
# From here on, at most 1 GiB more address space: an unbounded read fails fast.
with open("/proc/self/statm") as f:
    pages = int(f.read().split()[0])
limit = pages * os.sysconf("SC_PAGE_SIZE") + 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
tracemalloc.start()
reasons = {}
for i in range(len(collection)):
    name = os.path.relpath(collection.path(i), sys.argv[1])
    try:
        collection.read(i)
        reasons[name] = "ok"
    except BadImageError as err:
        reasons[name] = err.reason
print(json.dumps({"reasons": reasons, "peak": tracemalloc.get_traced_memory()[1]}))
"""


def _bind_socket(folder: Path, name: str) -> None:
    """A Unix socket file ``folder/name`` (bound by a relative path: AF_UNIX paths are short)."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(name)
    finally:
        os.chdir(cwd)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_special_files_are_skipped_with_a_reason_and_never_block(
    tmp_path: Path, encode: Encode
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    good = [f"good{i}.png" for i in range(3)]
    for i, name in enumerate(good):
        (root / name).write_bytes(encode((16, 12), seed=i))
    os.mkfifo(root / "x.jpg")
    (root / "zero.jpg").symlink_to("/dev/zero")
    (root / "link to fifo.png").symlink_to(root / "x.jpg")
    with (root / "huge.jpg").open("wb") as f:
        f.truncate(HUGE)
    _bind_socket(root, "sock.jpg")
    (root / "folder.jpg").mkdir()  # a folder with an image's name is walked like any other
    (root / "folder.jpg" / "inner.png").write_bytes(encode((16, 12), seed=9))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    fifo = "not a regular file: a FIFO (named pipe)"
    assert result["reasons"] == {
        **dict.fromkeys([*good, "folder.jpg/inner.png"], "ok"),
        "x.jpg": fifo,
        "link to fifo.png": f"{fifo} (a symlink to {os.path.realpath(root / 'x.jpg')})",
        "zero.jpg": "not a regular file: a character device (a symlink to /dev/zero)",
        "sock.jpg": "not a regular file: a socket",
        "huge.jpg": (
            "too large: 3,000,000,000 bytes > data.max_bytes (268,435,456 bytes); raise "
            "data.max_bytes to read it"
        ),
    }
    assert result["peak"] < 16 * 2**20  # the reads of three small PNGs, nothing of the rest


def test_a_listed_directory_is_not_read(tmp_path: Path, encode: Encode) -> None:
    (tmp_path / "a.jpg").mkdir()
    (tmp_path / "b.png").write_bytes(encode((8, 8)))
    (tmp_path / "list.txt").write_text("a.jpg\nb.png\n")
    collection = open_collection(tmp_path / "list.txt")
    with pytest.raises(BadImageError, match=r"^not a regular file: a directory$"):
        collection.read(0)
    assert collection.read(1).size == (8, 8)


def test_a_fifo_given_as_data_is_refused_unopened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(ValueError, match=r"list\.txt is not a regular file or folder; point"):
        open_collection(tmp_path / "list.txt")


def test_max_bytes_is_checked_before_reading(tmp_path: Path, encode: Encode) -> None:
    data = encode((8, 8))
    (tmp_path / "a.png").write_bytes(data)
    assert decode_image(tmp_path / "a.png", max_bytes=len(data)).size == (8, 8)
    with pytest.raises(BadImageError, match=rf"^too large: {len(data)} bytes > data.max_bytes"):
        decode_image(tmp_path / "a.png", max_bytes=len(data) - 1)
    with (tmp_path / "huge.png").open("wb") as f:
        f.truncate(HUGE)
    tracemalloc.start()
    try:
        with pytest.raises(BadImageError, match=r"^too large: 3,000,000,000 bytes"):
            decode_image(tmp_path / "huge.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_max_bytes_holds_while_reading_a_file_stat_cannot_size() -> None:
    status = Path("/proc/self/status")  # a regular file whose stat size is 0
    assert os.stat(status).st_size == 0
    assert read_file(status).startswith(b"Name:")
    with pytest.raises(BadImageError, match=r"^too large: 65 bytes > data.max_bytes \(64 bytes\)"):
        read_file(status, max_bytes=64)  # read stops at max_bytes + 1
