"""One line per step of a comparison, with the time left, on the console and in compare.log.

The estimate is the measured rate times the work left, as for a training run
(:mod:`deepercluster.engine.eta`): each kind of step still to come (pre-training one method,
probes, kNN, clusters) costs the mean of the steps of that kind that ran in this process;
kinds not timed yet are left out and the estimate says so with a ``+``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from deepercluster.engine.eta import format_duration

__all__ = ["Step", "StepLog"]


@dataclass(frozen=True)
class Step:
    """One unit of work: ``kind`` groups steps of the same cost (e.g. ``pretrain:rotnet``)."""

    kind: str
    label: str


@dataclass
class StepLog:
    """Prints ``[i/n] label ... left ≈ 12m30s`` before each step and its outcome after it.

    Attributes:
        steps: every step of the comparison, in order.
        log_file: where the lines are appended as well (None: console only).
    """

    steps: list[Step]
    log_file: Path | None = None
    _times: dict[str, list[float]] = field(default_factory=dict)
    _index: int = 0
    _tic: float = 0.0

    def _emit(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} compare {line}"
        print(stamped, flush=True)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a") as fh:
                fh.write(stamped + "\n")

    def left(self) -> str:
        """Time left for the steps from the current one on, e.g. ``"12m30s"``, ``"3m+"``."""
        seconds, unknown = 0.0, False
        for step in self.steps[self._index :]:
            times = self._times.get(step.kind)
            if times:
                seconds += sum(times) / len(times)
            else:
                unknown = True
        if unknown and seconds == 0:
            return "?"
        return format_duration(seconds) + ("+" if unknown else "")

    def start(self, step: Step) -> None:
        """The step ``step`` (the next in :attr:`steps`) begins."""
        self._index = self.steps.index(step)
        self._tic = time.perf_counter()
        self._emit(f"[{self._index + 1}/{len(self.steps)}] {step.label} (left ≈ {self.left()})")

    def done(self, step: Step, *, reused: bool, took: float | None = None) -> None:
        """The step ended; a reused result counts in the estimate with the time it ``took``
        when it was made (if known), a new one with the time measured now."""
        seconds = time.perf_counter() - self._tic
        spent = took if reused else seconds
        if spent is not None:
            self._times.setdefault(step.kind, []).append(spent)
        outcome = "reused" if reused else f"done in {format_duration(seconds)}"
        self._emit(f"[{self._index + 1}/{len(self.steps)}] {step.label}: {outcome}")
