"""Learning-rate schedules are pure arrays with the documented shape and values."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.engine.schedules import lr_schedule


def test_constant_is_the_reference_schedule() -> None:
    lrs = lr_schedule(base_lr=0.1, epochs=3, iters_per_epoch=5)
    assert lrs.shape == (15,)
    assert np.all(lrs == 0.1)


def test_cosine_starts_at_base_and_ends_near_final() -> None:
    lrs = lr_schedule(base_lr=0.1, epochs=10, iters_per_epoch=10, kind="cosine", final_lr=0.001)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.001, abs=1e-4)
    assert np.all(np.diff(lrs) <= 1e-12)  # never increases
    assert lrs[50] == pytest.approx(0.5 * (0.1 + 0.001), rel=1e-2)


def test_step_divides_by_ten() -> None:
    lrs = lr_schedule(base_lr=1.0, epochs=6, iters_per_epoch=2, kind="step", step_epochs=2)
    np.testing.assert_allclose(lrs, [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01])


def test_warmup_is_linear_up_to_base() -> None:
    lrs = lr_schedule(base_lr=0.1, epochs=4, iters_per_epoch=5, warmup_epochs=1)
    assert lrs[0] == pytest.approx(0.001)
    assert np.all(np.diff(lrs[:6]) > 0)
    assert np.all(lrs[5:] == 0.1)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_schedule(base_lr=0.1, epochs=1, iters_per_epoch=1, kind="linear")
