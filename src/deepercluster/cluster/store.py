"""An (N, D) feature matrix on disk, written in chunks of rows and resumable after a crash.

At the paper's scale the features do not fit in memory (96 M images x 4096 float32 is 1.5 TB;
the reference keeps them all in RAM). This store keeps them in one flat file per matrix,
written chunk by chunk. A small ``progress.json``, replaced atomically after each chunk's
bytes are flushed, says how many chunks are complete, so a process killed at any moment
resumes after its last finished chunk and never reads a half-written one.

Reads and writes go through plain positioned file I/O, not ``mmap``: pages of a memory map
count in the process's resident memory (RSS) while it touches them, which would make the
memory budget meaningless; a ``read`` leaves the bytes in the kernel's page cache, which the
kernel frees under pressure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FeatureStore", "write_json_atomic"]

DTYPES = ("float32", "float16")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file, fsync and rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FeatureStore:
    """``rows`` x ``dim`` values of ``dtype`` in ``folder``, filled chunk after chunk.

    Files: ``meta.json`` (shape, dtype, chunk size), ``data.bin`` (row-major values),
    ``valid.bin`` (one byte per row: 1 = the row holds features, 0 = unreadable image),
    ``progress.json`` (``chunks_done`` and the ``skipped`` (row, reason) pairs so far).
    Opening a folder written with another shape, dtype or chunk size starts it afresh.

    Args:
        folder: where the files live (created if needed).
        rows: N.
        dim: D.
        dtype: ``float32`` or ``float16`` on disk (reads always return float32).
        chunk_rows: rows per chunk (the unit of writing and of crash recovery).
    """

    def __init__(
        self, folder: Path, *, rows: int, dim: int, dtype: str = "float32", chunk_rows: int
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"feature store dtype {dtype!r} must be one of {', '.join(DTYPES)}")
        if chunk_rows < 1 or rows < 0 or dim < 1:
            raise ValueError(f"bad feature store shape: rows={rows} dim={dim} chunk={chunk_rows}")
        self.folder = folder
        self.rows, self.dim, self.chunk_rows = rows, dim, chunk_rows
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize
        meta = {"rows": rows, "dim": dim, "dtype": dtype, "chunk_rows": chunk_rows}
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "meta.json"
        if not meta_path.exists() or json.loads(meta_path.read_text()) != meta:
            for name in ("progress.json", "data.bin", "valid.bin"):
                (folder / name).unlink(missing_ok=True)
            write_json_atomic(meta_path, meta)
        for name, size in (("data.bin", rows * self.row_bytes), ("valid.bin", rows)):
            with (folder / name).open("ab") as fh:
                fh.truncate(size)  # sparse: no disk used before the rows are written
        progress = folder / "progress.json"
        state = json.loads(progress.read_text()) if progress.exists() else {}
        self.chunks_done: int = int(state.get("chunks_done", 0))
        self.skipped: list[tuple[int, str]] = [
            (int(i), str(r)) for i, r in state.get("skipped", [])
        ]

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    @property
    def complete(self) -> bool:
        return self.chunks_done >= self.n_chunks

    @property
    def nbytes(self) -> int:
        """Size of the values on disk."""
        return self.rows * self.row_bytes

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """Rows [start, stop) of chunk ``chunk``."""
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.rows)

    def write_chunk(
        self,
        chunk: int,
        values: np.ndarray,
        valid: np.ndarray | None = None,
        skipped: list[tuple[int, str]] | None = None,
    ) -> None:
        """Store the next chunk and record it as done (chunks are written in order).

        Args:
            chunk: its index; must be ``chunks_done``.
            values: (stop - start, D) rows (any float dtype; cast to the store's).
            valid: (stop - start,) bool; None means all valid.
            skipped: (row, reason) of the chunk's unreadable rows, rows in store numbering.
        """
        if chunk != self.chunks_done:
            raise ValueError(f"chunk {chunk} written out of order (next is {self.chunks_done})")
        start, stop = self.chunk_range(chunk)
        if values.shape != (stop - start, self.dim):
            raise ValueError(
                f"chunk {chunk} has shape {values.shape}, expected {(stop - start, self.dim)}"
            )
        flags = np.ones(stop - start, np.uint8) if valid is None else valid.astype(np.uint8)
        self._pwrite(
            "data.bin", np.ascontiguousarray(values, dtype=self.dtype), start * self.row_bytes
        )
        self._pwrite("valid.bin", flags, start)
        self.chunks_done += 1
        self.skipped.extend(skipped or [])
        write_json_atomic(
            self.folder / "progress.json",
            {"chunks_done": self.chunks_done, "skipped": [list(e) for e in self.skipped]},
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as (stop - start, D) float32."""
        count = (stop - start) * self.dim
        with (self.folder / "data.bin").open("rb") as fh:
            values = np.fromfile(fh, self.dtype, count=count, offset=start * self.row_bytes)
        return values.reshape(stop - start, self.dim).astype(np.float32, copy=False)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at the given indices (any order), as (len(rows), D) float32."""
        out = np.empty((len(rows), self.dim), np.float32)
        with (self.folder / "data.bin").open("rb") as fh:
            for i, row in enumerate(rows.tolist()):
                fh.seek(row * self.row_bytes)
                out[i] = np.frombuffer(fh.read(self.row_bytes), self.dtype)
        return out

    def valid(self) -> np.ndarray:
        """(N,) bool: rows that hold features (False for unreadable images)."""
        return np.fromfile(self.folder / "valid.bin", np.uint8, count=self.rows).astype(bool)

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, rows) blocks of at most ``block_rows`` rows over the whole matrix."""
        for start in range(0, self.rows, block_rows):
            stop = min(start + block_rows, self.rows)
            yield start, self.read(start, stop)

    def to_array(self) -> np.ndarray:
        """The whole matrix in memory, (N, D) float32 (the in-memory feature store)."""
        return self.read(0, self.rows)

    def _pwrite(self, name: str, array: np.ndarray, offset: int) -> None:
        fd = os.open(self.folder / name, os.O_WRONLY)
        try:
            view = memoryview(array.tobytes())
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(fd)
        finally:
            os.close(fd)
