"""The run's time left: measured seconds per step times the steps left, plus the clustering
rounds still ahead times the last round's duration."""

from __future__ import annotations

import pytest

from deepercluster.engine.eta import RunClock, format_duration


def test_nothing_is_estimated_before_a_step() -> None:
    clock = RunClock(epochs=3, steps_per_epoch=10, reassign=1)
    clock.start_epoch(0, 10)
    assert clock.seconds_left(0, elapsed=0.0) is None and clock.left(0) == "?"


def test_steps_left_and_rounds_ahead() -> None:
    # 30 epochs of 10 steps, re-clustering every 3 epochs; epoch 0 (from 0), 4 steps in 2 s.
    clock = RunClock(epochs=30, steps_per_epoch=10, reassign=3)
    clock.clustered({"time/extract_s": 3.0, "time/pca_s": 0.5, "time/kmeans_s": 1.5, "x": 9})
    clock.start_epoch(0, 10)
    # steps: 6 left here + 29 epochs x 10 = 296 at 0.5 s; rounds at epochs 3, 6, ..., 27: 9 x 5 s
    assert clock.rounds_after(0) == 9
    assert clock.seconds_left(4, elapsed=2.0) == pytest.approx(296 * 0.5 + 9 * 5.0)


def test_the_rate_is_the_mean_over_this_process_epochs() -> None:
    clock = RunClock(epochs=2, steps_per_epoch=4, reassign=0)
    clock.start_epoch(0, 4)
    clock._tic -= 8.0  # 4 steps took 8 s
    clock.end_epoch(4)
    clock.start_epoch(1, 4)
    # 6 steps in 8 + 4 s: 2 s a step, 2 steps left; RotNet never re-clusters
    assert clock.seconds_left(2, elapsed=4.0) == pytest.approx(4.0)


def test_a_resumed_epoch_counts_only_its_steps_left() -> None:
    clock = RunClock(epochs=1, steps_per_epoch=100, reassign=1)
    clock.start_epoch(0, 10)  # resumed at step 90
    assert clock.seconds_left(5, elapsed=5.0) == pytest.approx(5.0)


def test_durations_read_like_a_clock() -> None:
    assert [format_duration(s) for s in (4.6, 200, 3720, -1)] == ["5s", "3m20s", "1h02m", "0s"]
