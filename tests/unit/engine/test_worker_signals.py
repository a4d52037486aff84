"""Data-loader workers and stop signals: a scheduler's signal is the run's to handle."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import time
from typing import Any

import pytest

from deepercluster.engine.preemption import ignore_stop_signals


def _worker(ready: Any) -> None:
    ignore_stop_signals(0)
    ready.set()
    time.sleep(60)


@pytest.mark.skipif(
    not hasattr(signal, "sigwaitinfo"), reason="the sender is known via sigwaitinfo"
)
def test_a_worker_outlives_a_schedulers_signals_but_not_its_parents_sigterm() -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_worker, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # not its parent
        subprocess.run(["kill", "-USR1", str(worker.pid)], check=True)
        worker.join(1.0)
        assert worker.is_alive()  # both would have ended it by default
        worker.terminate()  # SIGTERM from the parent: PyTorch ending a worker that lingers
        worker.join(30)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
