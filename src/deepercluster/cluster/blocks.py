"""Where the clustering reads its rows from: a tensor in memory or a feature store on disk.

Every clustering algorithm of this package (PCA moments, k-means, balancing) is a loop over
:class:`Blocks`: (first row, (b, D) float32 tensor) pairs on one device, in row order. The
same loop therefore serves features held in memory (on CPU or CUDA), streamed from a
:class:`~deepercluster.cluster.store.FeatureStore` (bounded memory), and this rank's shard of
a distributed collection: :meth:`Blocks.locate` places the local rows in the whole collection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from deepercluster import distributed
from deepercluster.distributed import ProcessGroup

__all__ = ["Blocks", "Located", "RowSource", "as_blocks", "row_blocks"]

# Rows per block of an in-memory tensor: enough for the products to run at full speed, small
# enough that the float64 copy of a block (M-step, PCA moments) stays a bounded temporary.
MEMORY_BLOCK_ROWS = 65536


class RowSource(Protocol):
    """A (rows, dim) float matrix read by range or by index (a FeatureStore)."""

    rows: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def take(self, rows: np.ndarray) -> np.ndarray: ...


def row_blocks(
    source: RowSource, block_rows: int, members: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Blocks of rows: (position of the block's first row among ``members``, (b, D) rows).

    Args:
        source: the matrix.
        block_rows: rows read at once (the memory bound).
        members: (n,) ascending row indices to visit; None visits every row.
    """
    if members is None:
        for start in range(0, source.rows, block_rows):
            yield start, source.read(start, min(start + block_rows, source.rows))
        return
    for lo in range(0, len(members), block_rows):
        wanted = members[lo : lo + block_rows]
        span = int(wanted[-1]) + 1 - int(wanted[0])
        if span > 64 * len(wanted):  # very sparse: one small read per row beats the sweep
            yield lo, source.take(wanted)
            continue
        # Dense enough: sweep the span in windows of at most block_rows rows and gather.
        out = np.empty((len(wanted), source.dim), np.float32)
        done = 0
        while done < len(wanted):
            first = int(wanted[done])
            stop = min(first + block_rows, source.rows)
            upto = int(np.searchsorted(wanted, stop))
            out[done:upto] = source.read(first, stop)[wanted[done:upto] - first]
            done = upto
        yield lo, out


class Located:
    """Where a rank's rows sit in the collection: global rows [offset, offset + n)."""

    def __init__(self, total: int, offset: int, n: int) -> None:
        self.total, self.offset, self.n = total, offset, n

    def local(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split sorted global row ids into (positions in ``rows``, local row ids)."""
        lo, hi = np.searchsorted(rows, [self.offset, self.offset + self.n])
        return np.arange(lo, hi), rows[lo:hi] - self.offset


class Blocks:
    """The rows at hand, as (first row, (b, D) float32 tensor) blocks on ``device``.

    Either a tensor (every block is a view, no copy) or a row source with optional ascending
    ``members`` (blocks are read from it, ``block_rows`` at a time, and moved to ``device``).

    Args:
        data: (N, D) float32 tensor, or a row source.
        members: ascending row indices of a row source to visit (None: every row).
        block_rows: rows per block.
        device: where the blocks of a row source go (a tensor's own device otherwise).
    """

    def __init__(
        self,
        data: Tensor | RowSource,
        *,
        members: np.ndarray | None = None,
        block_rows: int = MEMORY_BLOCK_ROWS,
        device: torch.device | str = "cpu",
    ) -> None:
        self.data, self.members, self.block_rows = data, members, max(1, block_rows)
        if isinstance(data, Tensor):
            self.n, self.dim, self.device = int(data.shape[0]), int(data.shape[1]), data.device
        else:
            self.n = data.rows if members is None else len(members)
            self.dim, self.device = data.dim, torch.device(device)

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        if isinstance(self.data, Tensor):
            for start in range(0, self.n, self.block_rows):
                yield start, self.data[start : start + self.block_rows]
            return
        for start, rows in row_blocks(self.data, self.block_rows, self.members):
            yield start, torch.from_numpy(rows).to(self.device)

    def take(self, rows: np.ndarray) -> Tensor:
        """(len(rows), D) the rows at these local indices (any order)."""
        if isinstance(self.data, Tensor):
            return self.data[torch.as_tensor(rows, device=self.device)]
        wanted = rows if self.members is None else self.members[rows]
        return torch.from_numpy(self.data.take(wanted)).to(self.device)

    def subset(self, rows: np.ndarray | None) -> Blocks:
        """The blocks of the local rows ``rows`` (ascending); None: these blocks."""
        if rows is None:
            return self
        if isinstance(self.data, Tensor):
            picked = self.data[torch.as_tensor(rows, device=self.device)]
            return Blocks(picked, block_rows=self.block_rows)
        wanted = rows if self.members is None else self.members[rows]
        return Blocks(self.data, members=wanted, block_rows=self.block_rows, device=self.device)

    def small_in_memory(self) -> Blocks:
        """These rows read once into memory if they fit in one block (a level-1 sample, a
        small super-cluster), so that a k-means reads the disk once, not at every pass."""
        return self.in_memory() if self.n <= self.block_rows else self

    def in_memory(self) -> Blocks:
        """These rows as one tensor on ``device`` (read once)."""
        if isinstance(self.data, Tensor):
            return self
        rows = torch.empty((self.n, self.dim), dtype=torch.float32, device=self.device)
        for start, block in self:
            rows[start : start + len(block)] = block
        return Blocks(rows, block_rows=self.block_rows)

    def locate(self, group: ProcessGroup | None = None) -> Located:
        """This rank's rows in the collection of ``group`` (one small all-gather).

        Raises:
            ValueError: on every rank, when the ranks' feature dimensions differ.
        """
        table = distributed.all_gather_cat_np(np.array([[self.n, self.dim]], np.int64), group)
        if (table[:, 1] != self.dim).any():
            raise ValueError(
                f"ranks hold features of dimensions {table[:, 1].tolist()}; every shard must "
                "come from the same model (and PCA)"
            )
        me = distributed.rank(group)
        return Located(int(table[:, 0].sum()), int(table[:me, 0].sum()), self.n)


def as_blocks(x: np.ndarray | Tensor | Blocks) -> Blocks:
    """Blocks over an (N, D) float32 array or tensor (numpy arrays are wrapped, not copied)."""
    if isinstance(x, Blocks):
        return x
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return Blocks(x)
