"""The whole run's time left, for the training bar.

The estimate is the measured rate times the work left: training steps left (in this epoch and
the epochs after it) times the mean seconds per step of this process's epochs so far, plus
one clustering round for each re-clustering still ahead times the duration of the last round
(its extraction, PCA and k-means times, which a resumed run finds in its checkpoint). Nothing
is estimated before a step has been timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ROUND_TIMES = ("time/extract_s", "time/pca_s", "time/kmeans_s")
"""The clustering metrics that add up to one clustering round."""


@dataclass
class RunClock:
    """Times training steps and clustering rounds to estimate the run's time left.

    Attributes:
        epochs: the run's epochs (``train.epochs``).
        steps_per_epoch: optimizer steps of a whole epoch.
        reassign: re-cluster every this many epochs; 0 when the run never clusters (RotNet).
        round_seconds: duration of the last clustering round (None before one is known).
    """

    epochs: int
    steps_per_epoch: int
    reassign: int
    round_seconds: float | None = None
    _seconds: float = 0.0
    _steps: int = 0
    _epoch: int = 0
    _epoch_steps: int = 0
    _tic: float = 0.0

    def clustered(self, metrics: dict[str, float]) -> None:
        """Note the duration of a clustering round from its metrics (``time/*_s``)."""
        times = [float(metrics[k]) for k in ROUND_TIMES if k in metrics]
        if times:
            self.round_seconds = sum(times)

    def start_epoch(self, epoch: int, steps: int) -> None:
        """Epoch ``epoch`` (from 0) starts, with ``steps`` steps left to train in it."""
        self._epoch, self._epoch_steps, self._tic = epoch, steps, time.perf_counter()

    def end_epoch(self, steps_done: int) -> None:
        """The epoch started last trained ``steps_done`` steps."""
        self._seconds += time.perf_counter() - self._tic
        self._steps += steps_done

    def rounds_after(self, epoch: int) -> int:
        """Clustering rounds in the epochs after ``epoch`` (from 0)."""
        if not self.reassign:
            return 0
        return sum(1 for e in range(epoch + 1, self.epochs) if e % self.reassign == 0)

    def seconds_left(self, done: int, elapsed: float | None = None) -> float | None:
        """Seconds left in the run after ``done`` steps of the current epoch.

        Args:
            done: steps trained so far in the current epoch (by this process).
            elapsed: seconds they took (default: since :meth:`start_epoch`).

        Returns:
            The estimate, or None while no step has been timed.
        """
        if elapsed is None:
            elapsed = time.perf_counter() - self._tic
        steps = self._steps + done
        if steps == 0:
            return None
        per_step = (self._seconds + elapsed) / steps
        steps_left = self._epoch_steps - done
        steps_left += self.steps_per_epoch * (self.epochs - self._epoch - 1)
        rounds = self.rounds_after(self._epoch) * (self.round_seconds or 0.0)
        return steps_left * per_step + rounds

    def left(self, done: int) -> str:
        """``seconds_left`` for the bar, e.g. ``"1h02m"``; ``"?"`` before the first step."""
        seconds = self.seconds_left(done)
        return "?" if seconds is None else format_duration(seconds)


def format_duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``1h02m``."""
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
