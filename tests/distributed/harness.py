"""Run a function on N local gloo ranks (``torch.multiprocessing.spawn``) and collect results.

Each rank gets torchrun's environment variables and joins the group through
:func:`deepercluster.distributed.init_from_env`, so the code under test takes the same path as
under ``torchrun``. Results come back pickled through a per-rank file in a temporary folder
(test plumbing only: the library itself never passes data through files).
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _entry(
    rank: int, world: int, port: int, out: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # N ranks share 2 cores: one thread each keeps them from fighting over the cores.
    torch.set_num_threads(1)
    from deepercluster import distributed

    distributed.init_from_env("cpu", timeout_s=120)
    try:
        result = fn(rank, world, *args)
    finally:
        distributed.shutdown()
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable[..., Any], world: int, *args: Any) -> list[Any]:
    """``[fn(rank, world, *args) for rank in range(world)]``, each in its own gloo process.

    ``fn`` must be importable (defined at module level of a test module or here).
    """
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_entry, args=(world, free_port(), out, fn, args), nprocs=world, join=True)
        return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(world)]
