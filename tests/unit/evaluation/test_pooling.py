"""R-MAC and GeM descriptors against a direct computation on hand-listed regions."""

from __future__ import annotations

import pytest
import torch

from deepercluster.evaluation.pooling import gem, rmac, rmac_regions

# (top, left, side) worked out by hand from Tolias et al.'s grid: a 4 x 6 map has one extra
# region along its long side (overlap 0.5 is the closest to 40%), a square map none.
REGIONS_4x6 = [
    (0, 0, 4), (0, 2, 4),
    (0, 0, 2), (0, 2, 2), (0, 4, 2), (2, 0, 2), (2, 2, 2), (2, 4, 2),
    (0, 0, 2), (0, 1, 2), (0, 2, 2), (0, 4, 2), (1, 0, 2), (1, 1, 2), (1, 2, 2), (1, 4, 2),
    (2, 0, 2), (2, 1, 2), (2, 2, 2), (2, 4, 2),
]  # fmt: skip
REGIONS_3x3 = (
    [(0, 0, 3)]
    + [(t, c, 2) for t in (0, 1) for c in (0, 1)]
    + [(t, c, 1) for t in range(3) for c in range(3)]
)


def test_region_grid_matches_the_hand_worked_layout() -> None:
    assert rmac_regions(4, 6, 3) == REGIONS_4x6
    # a tall map is the wide one transposed (listed row by row, so in another order)
    transposed = sorted((left, top, s) for top, left, s in REGIONS_4x6)
    assert sorted(rmac_regions(6, 4, 3)) == transposed
    assert rmac_regions(3, 3, 3) == REGIONS_3x3
    assert rmac_regions(4, 6, 1) == REGIONS_4x6[:2]
    with pytest.raises(ValueError, match="at least one region level"):
        rmac_regions(4, 4, 0)


@pytest.mark.parametrize(("shape", "regions"), [((4, 6), REGIONS_4x6), ((3, 3), REGIONS_3x3)])
def test_rmac_equals_the_direct_sum_of_normalised_region_maxima(
    shape: tuple[int, int], regions: list[tuple[int, int, int]]
) -> None:
    maps = torch.rand(2, 5, *shape)
    expected = torch.zeros(2, 5)
    for b in range(2):
        for top, left, side in regions:
            v = torch.tensor(
                [max(float(maps[b, c, i, j]) for i in range(top, top + side)
                     for j in range(left, left + side)) for c in range(5)]
            )  # fmt: skip
            expected[b] += v / v.norm()
        expected[b] /= expected[b].norm()
    torch.testing.assert_close(rmac(maps, 3), expected, atol=1e-5, rtol=1e-5)


def test_gem_is_the_normalised_power_mean_and_spans_average_to_max() -> None:
    maps = torch.rand(3, 4, 5, 7)
    direct = (maps**3).mean(dim=(2, 3)) ** (1 / 3)
    torch.testing.assert_close(gem(maps, 3.0), direct / direct.norm(dim=1, keepdim=True))
    avg = maps.mean(dim=(2, 3))
    torch.testing.assert_close(gem(maps, 1.0), avg / avg.norm(dim=1, keepdim=True))
    top = maps.amax(dim=(2, 3))
    torch.testing.assert_close(gem(maps, 200.0), top / top.norm(dim=1, keepdim=True), atol=0.02,
                               rtol=0.02)  # fmt: skip
    with pytest.raises(ValueError, match="exponent p must be positive"):
        gem(maps, 0.0)
