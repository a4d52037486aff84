"""PositionRng: SplitMix64 reference outputs, determinism per key, uniformity, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepercluster.data import TrainTransform
from deepercluster.data.position_rng import PositionRng


def test_matches_the_splitmix64_reference_stream() -> None:
    # Vigna's splitmix64.c seeded with x = 0; integers(0, 2**64) returns the raw 64-bit word.
    rng = PositionRng()
    words = [rng.integers(0, 2**64) for _ in range(4)]
    assert words == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]


def test_same_key_same_draws_and_every_component_matters() -> None:
    def draws(*key: int) -> list[float]:
        rng = PositionRng(*key)
        return [rng.random(), rng.uniform(0.08, 1.0), float(rng.integers(0, 1000))]

    assert draws(3, 1, 77) == draws(3, 1, 77)
    variants = [draws(3, 1, 77), draws(4, 1, 77), draws(3, 2, 77), draws(3, 1, 78), draws(1, 3, 77)]
    assert len({tuple(d) for d in variants}) == len(variants)


def test_child_appends_a_key_component_whatever_was_drawn() -> None:
    parent = PositionRng(3, 1)
    expected = PositionRng(3, 1, 77)
    first = parent.child(77)
    parent.random()  # draws from the parent must not shift its children
    assert [first.random(), parent.child(77).random()] == [expected.random()] * 2
    assert parent.child(78).random() != PositionRng(3, 1, 77).random()
    with pytest.raises(ValueError, match="key components"):
        parent.child(-1)


def test_first_draws_over_positions_are_uniform_and_uncorrelated() -> None:
    n = 20_000
    first = np.array([PositionRng(0, 5, p).random() for p in range(n)])
    assert first.min() >= 0.0 and first.max() < 1.0
    counts = np.histogram(first, bins=20, range=(0.0, 1.0))[0]
    chi2 = float(((counts - n / 20) ** 2 / (n / 20)).sum())
    assert chi2 < 50.0  # 19 degrees of freedom: P(chi2 > 50) < 1e-4 for uniform draws
    # neighbouring positions (the samples of one batch) must not move together
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < 0.05


def test_integers_cover_the_range_evenly() -> None:
    rng = PositionRng(9)
    values = np.array([rng.integers(-3, 4) for _ in range(14_000)])
    assert values.min() == -3 and values.max() == 3
    assert np.all(np.abs(np.bincount(values + 3) - 2000) < 200)
    uniform = np.array([rng.uniform(2.0, 5.0) for _ in range(5000)])
    assert uniform.min() >= 2.0 and uniform.max() < 5.0 and abs(uniform.mean() - 3.5) < 0.05


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="key components"):
        PositionRng(0, -1)
    with pytest.raises(ValueError, match="key components"):
        PositionRng(2**64)
    with pytest.raises(ValueError, match="low < high"):
        PositionRng(0).integers(5, 5)


def test_train_transform_takes_either_source() -> None:
    img_pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    img = Image.fromarray(img_pixels)
    transform = TrainTransform(16)
    assert transform(img, PositionRng(1, 2, 3)).equal(transform(img, PositionRng(1, 2, 3)))
    assert transform(img, np.random.default_rng(0)).shape == (3, 16, 16)
    assert transform.crop_params(50, 40, PositionRng(1, 2, 3)) != transform.crop_params(
        50, 40, PositionRng(1, 2, 4)
    )
