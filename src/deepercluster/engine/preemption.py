"""Pre-emption: stop at the next safe point on SIGTERM/SIGUSR1, with every rank agreeing.

Schedulers announce a pre-emption with a signal (SLURM: SIGTERM, or SIGUSR1 with
``--signal=USR1@120``), then kill the job a little later. A handler that exits on the spot
would lose everything since the last checkpoint, and under torchrun the ranks would stop at
different steps. So the handler only raises a flag; the driver polls it at its safe points
(after each training step, after each extraction chunk, after each k-means run), all ranks
together through one tiny all-reduce, saves what it has and raises :class:`Preempted`, which
the command line turns into :data:`EXIT_PREEMPTED`. Running the same command again continues.

A test hook, :func:`fault_point`, lets the tests kill (SIGKILL) or pause the process at a
chosen safe point, to check that a crash there loses nothing that was saved.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch

from deepercluster import distributed
from deepercluster.log import get_logger

log = get_logger("preemption")

EXIT_PREEMPTED = 75
"""Exit code of a run stopped by SIGTERM/SIGUSR1 after saving (sysexits' EX_TEMPFAIL:
"try again later"); re-running the same command resumes. A requeue script can test for it."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

FAULT_ENV = "DEEPERCLUSTER_FAULT"
"""Test hook: ``<stage>:<n>:<kill|pause>[:<rank>]`` acts at the n-th safe point of ``stage``
(extract, pca, kmeans, train) reached by this process (only on ``rank`` if given): kill sends
itself SIGKILL, pause writes ``<run>/.paused-<stage>`` (holding its pid) and waits (up to a
minute) for a stop signal."""


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the run's data loaders: their workers leave the stop to the run.

    A scheduler signals the whole process group (SLURM's scancel, ``kill -- -PGID``). A worker
    killed by it makes the main process raise "DataLoader worker ... killed" (even halfway
    through writing a checkpoint) instead of saving at its next safe point. So a worker ignores
    SIGUSR1, and SIGTERM from anyone but its parent; the parent's SIGTERM (PyTorch ending a
    worker that did not stop in time) still ends it, as PyTorch's own handler does.
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: the sender cannot be told
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    # Only sigwaitinfo names the sender: SIGTERM stays blocked and one thread waits for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True).start()


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class Preempted(Exception):
    """Raised at a safe point after a stop signal, once the work so far is saved.

    Attributes:
        signum: the signal this process received (None: another rank received one).
    """

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignal:
    """Catches SIGTERM/SIGUSR1 while active and tells the ranks, together, when to stop.

    Use as a context manager around the run: the previous handlers come back on exit,
    however the run ends, so a program (or a test session) that runs ``fit`` gets its own
    handlers back. Outside the main thread (signal handlers cannot be installed there) it
    never fires.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: the work in progress (a step, a chunk) finishes and is saved.
        self.received = signum

    @property
    def requested(self) -> bool:
        """This process received a stop signal (no communication)."""
        return self.received is not None

    def agreed(self) -> bool:
        """True on every rank when any rank received a stop signal (a collective call).

        Every rank must call it at the same safe points; one 8-byte all-reduce per call.
        """
        flag = 1 if self.requested else 0
        if distributed.world_size() > 1:
            flag = int(distributed.all_reduce_sum(torch.tensor([flag], dtype=torch.int64))[0])
        return flag > 0

    def check(self, what: str) -> None:
        """Raise :class:`Preempted` on every rank if a stop was asked anywhere.

        Args:
            what: the safe point reached, for the message (e.g. "epoch 3, iteration 40").
        """
        if self.agreed():
            self.stop_here(what)

    def stop_here(self, what: str) -> NoReturn:
        """Raise :class:`Preempted` (after :meth:`agreed` returned True on every rank)."""
        name = signal.Signals(self.received).name if self.received else "another rank"
        log.warning("stop requested (%s): saved at %s; run again to continue", name, what)
        raise Preempted(
            f"stopped by {name} at {what}; run the same command to continue", self.received
        )


class FaultPoints:
    """The :data:`FAULT_ENV` test hook: counts safe points per stage and acts at one of them."""

    def __init__(self, run_dir: Path, stop: StopSignal, rank: int = 0) -> None:
        self.run_dir = run_dir
        self.stop = stop
        self.counts: dict[str, int] = {}
        spec = os.environ.get(FAULT_ENV, "")
        self.target: tuple[str, int, str] | None = None
        if spec:
            stage, n, action, *only = spec.split(":")
            if action not in ("kill", "pause"):
                raise ValueError(f"{FAULT_ENV}={spec!r}: the action must be kill or pause")
            if not only or int(only[0]) == rank:
                self.target = (stage, int(n), action)

    def reached(self, stage: str) -> None:
        """Count one safe point of ``stage``; kill or pause here if the hook says so."""
        self.counts[stage] = self.counts.get(stage, 0) + 1
        if self.target is None or self.target[:2] != (stage, self.counts[stage]):
            return
        if self.target[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        (self.run_dir / f".paused-{stage}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60.0
        while not self.stop.requested and time.monotonic() < deadline:
            time.sleep(0.02)


class SafePoints:
    """The driver's safe points: one call per point counts it for the test hook and stops
    the run there if a stop signal arrived anywhere (a collective call).

    Args:
        run_dir: the run folder (where the pause hook leaves its marker).
        stop: the run's :class:`StopSignal`.
        rank: this process's rank (the hook may target one rank).
    """

    def __init__(self, run_dir: Path, stop: StopSignal, rank: int = 0) -> None:
        self.stop = stop
        self.faults = FaultPoints(run_dir, stop, rank)

    def __call__(
        self,
        stage: str,
        what: str,
        *,
        save: Callable[[], None] | None = None,
        check_stop: bool = True,
    ) -> None:
        """Reach a safe point of ``stage`` (extract, pca, kmeans, train).

        Args:
            stage: the stage, for the test hook.
            what: the point reached, for the stop message (e.g. "epoch 3, iteration 40").
            save: called before stopping when the work up to here is not saved yet.
            check_stop: False where the stop is checked a little later instead (the last
                step of an epoch: the epoch's own checkpoint comes first). Every rank must
                pass the same value, since the check is a collective.

        Raises:
            Preempted: a stop was asked on some rank; the work up to here is saved.
        """
        self.faults.reached(stage)
        if check_stop and self.stop.agreed():
            if save is not None:
                save()
            self.stop.stop_here(what)
