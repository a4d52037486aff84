"""The CPU settings of the process the user launched: OpenMP's wait policy, torch threads and
DataLoader workers.

Only the command line decides these, for its own process: the library never writes
``os.environ`` and keeps the settings it is given. On a small machine shared with other jobs,
torch's default threads plus two DataLoader workers plus spinning OpenMP threads ask for more
cores than there are; the defaults here fit the work into the cores this process may use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SMALL_MACHINE = 4
"""At most this many usable cores: DataLoader workers only get the cores left by torch."""


def set_wait_policy() -> str:
    """``OMP_WAIT_POLICY=PASSIVE`` for this process when the user left it unset.

    Idle OpenMP threads then sleep instead of spinning, so the cores go back to other jobs
    between kernels. OpenMP reads the variable once, when torch loads it: this must run before
    torch is imported (``import deepercluster`` does not import it; the CLI calls this first).

    Returns:
        The policy in force, or a note that torch was loaded first and kept its own.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if "torch" in sys.modules:
        return "unset (torch was loaded before the CLI could set it)"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


def set_torch_threads(threads: int) -> None:
    """``--threads N`` of the evaluation commands: N torch threads, torch's default for 0."""
    if threads > 0:
        import torch  # not at import: the CLI sets OMP_WAIT_POLICY before torch loads

        torch.set_num_threads(threads)


def env_threads() -> int:
    """``OMP_NUM_THREADS`` as the user set it (0 when unset, or set by torchrun for its
    processes: training shares the cores among them instead)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return 0
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), shared among the local processes of a
    torchrun job."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(local, 1))


@dataclass(frozen=True)
class CpuDefaults:
    """Threads and workers chosen for a run.

    Attributes:
        threads: torch threads, ``train.threads``.
        workers: DataLoader processes, ``data.workers``.
        cores: usable cores they were chosen for.
        capped_from: the configured ``data.workers`` when the small-machine cap lowered it.
    """

    threads: int
    workers: int
    cores: int
    capped_from: int | None = None

    def describe(self, policy: str) -> str:
        capped = (
            f" (capped from {self.capped_from}: {self.cores} cores here)"
            if self.capped_from is not None
            else ""
        )
        return (
            f"CPU: {_count(self.cores, 'usable core')}, {_count(self.threads, 'torch thread')}, "
            f"{_count(self.workers, 'DataLoader worker')}{capped}, OMP_WAIT_POLICY {policy}; "
            "change them "
            "with --set train.threads=N --set data.workers=N or OMP_WAIT_POLICY=ACTIVE"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cpu_defaults(
    *, cores: int, threads: int, workers: int, workers_set: bool, omp_threads: int = 0
) -> CpuDefaults:
    """Threads and workers for ``cores`` usable cores.

    Args:
        cores: usable cores (:func:`usable_cores`).
        threads: ``train.threads`` as configured; 0 (unset) becomes ``omp_threads``, else
            ``cores``.
        workers: ``data.workers`` as configured.
        workers_set: the user chose ``data.workers`` (kept as is).
        omp_threads: the user's ``OMP_NUM_THREADS`` (:func:`env_threads`), 0 when unset.

    Returns:
        On a machine of at most :data:`SMALL_MACHINE` cores, workers are capped at the cores
        left by the torch threads: each worker decodes on a core of its own or steals one from
        the compute. A larger machine keeps the configured workers.
    """
    threads = threads or omp_threads or cores
    if workers_set or cores > SMALL_MACHINE:
        return CpuDefaults(threads, workers, cores)
    cap = max(0, cores - threads)
    if workers <= cap:
        return CpuDefaults(threads, workers, cores)
    return CpuDefaults(threads, cap, cores, capped_from=workers)


def workers_chosen(overrides: Sequence[str], config_file: str | None) -> bool:
    """Whether the user set ``data.workers`` (by ``--set`` or in the ``--config`` file)."""
    if any(o.replace(" ", "").startswith("data.workers=") for o in overrides):
        return True
    if config_file is None:
        return False
    try:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh).get("data", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False  # the config loader reports the file's problem
    return isinstance(data, dict) and "workers" in data
