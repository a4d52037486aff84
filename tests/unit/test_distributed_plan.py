"""The training-layout plan: pure, over many world sizes."""

from __future__ import annotations

import pytest

from deepercluster.engine.group_plan import GROUPED_ABOVE_BYTES, plan_groups

BIG = GROUPED_ABOVE_BYTES  # 3x this is over the limit


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8, 16, 24, 32, 64, 128])
@pytest.mark.parametrize("n_super", [1, 4, 16])
def test_auto_layout(world: int, n_super: int) -> None:
    plan = plan_groups(world, n_super, head_bytes=BIG)
    divides = world >= n_super > 1 and world % n_super == 0
    assert plan.grouped == divides
    assert plan.reason
    if plan.grouped:
        groups = plan.training_groups()
        assert len(groups) == n_super
        assert sorted(r for g in groups for r in g) == list(range(world))  # a partition
        assert all(len(g) == world // n_super for g in groups)
        assert [plan.super_class_of(r) for r in range(world)] == [
            s for s, g in enumerate(groups) for _ in g
        ]
    else:
        assert plan.group_size == world and plan.training_groups() == []


def test_paper_layout_sixteen_ranks() -> None:
    plan = plan_groups(16, 16, head_bytes=16 * 80_000 * 4096 * 4)
    assert plan.grouped and plan.group_size == 1
    assert plan.training_groups()[5] == [5]
    assert "GiB per process" in plan.reason


def test_small_heads_stay_replicated() -> None:
    plan = plan_groups(8, 4, head_bytes=1000)
    assert not plan.grouped and "fit on every process" in plan.reason


def test_forcing() -> None:
    assert plan_groups(8, 4, layout="grouped").grouped
    assert not plan_groups(8, 4, layout="replicated", head_bytes=BIG).grouped
    with pytest.raises(ValueError, match="multiple of the number of super-classes"):
        plan_groups(6, 4, layout="grouped")
    with pytest.raises(ValueError, match=r"train\.layout"):
        plan_groups(4, 4, layout="sharded")
