"""Hierarchical heads: grouped sub-logits equal a per-sample reference, values and gradients;
owned subsets of the sub-heads; initialisation."""

from __future__ import annotations

import pytest
import torch
from tests.unit.models.conftest import random_heads
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from deepercluster.models import HierarchicalHeads

D, S, N_SUB = 6, 4, 5


def _heads(*, seed: int = 0) -> HierarchicalHeads:
    return random_heads(D, S, N_SUB, seed=seed)


def _naive_sub_logits(
    heads: HierarchicalHeads, feats: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    x = feats.relu()
    rows = [x[i] @ heads.sub_weight[t[i]].T + heads.sub_bias[t[i]] for i in range(len(t))]
    return torch.stack(rows)


def _grads(
    heads: HierarchicalHeads, feats: torch.Tensor, logits: torch.Tensor, seed: int
) -> dict[str, torch.Tensor]:
    upstream = torch.randn(
        logits.shape, generator=torch.Generator().manual_seed(seed), dtype=logits.dtype
    )
    heads.zero_grad(set_to_none=True)
    feats.grad = None
    (logits * upstream).sum().backward()  # type: ignore[no-untyped-call]
    assert heads.sub_weight.grad is not None and heads.sub_bias.grad is not None
    assert feats.grad is not None
    return {
        "w": heads.sub_weight.grad.clone(),
        "b": heads.sub_bias.grad.clone(),
        "x": feats.grad.clone(),
    }


TARGET_CASES = {
    "mixed": [3, 0, 2, 0, 1, 3, 3],
    "batch_of_one": [2],
    "all_same": [1, 1, 1, 1],
    "some_absent": [0, 2, 2, 0, 2],
}


@pytest.mark.parametrize("case", sorted(TARGET_CASES))
def test_grouped_sub_logits_match_per_sample_reference(case: str) -> None:
    targets = torch.tensor(TARGET_CASES[case])
    heads = _heads()
    feats = torch.randn(len(targets), D, dtype=torch.float64, requires_grad=True)

    grouped = heads.sub_logits(feats, targets)
    naive = _naive_sub_logits(heads, feats, targets)
    assert grouped.shape == (len(targets), N_SUB)
    torch.testing.assert_close(grouped, naive, rtol=1e-12, atol=1e-12)

    g_grouped = _grads(heads, feats, grouped, seed=1)
    g_naive = _grads(heads, feats, naive, seed=1)
    for key in g_grouped:
        torch.testing.assert_close(g_grouped[key], g_naive[key], rtol=1e-12, atol=1e-12)

    absent = sorted(set(range(S)) - set(TARGET_CASES[case]))
    assert torch.equal(g_grouped["w"][absent], torch.zeros_like(g_grouped["w"][absent]))
    assert torch.equal(g_grouped["b"][absent], torch.zeros_like(g_grouped["b"][absent]))


def test_super_logits_and_forward() -> None:
    heads = _heads()
    feats = torch.randn(5, D, dtype=torch.float64)
    targets = torch.tensor([0, 3, 3, 1, 0])
    expected = feats.relu() @ heads.super_head.weight.T + heads.super_head.bias
    torch.testing.assert_close(heads.super_logits(feats), expected)
    sup, sub = heads(feats, targets)
    torch.testing.assert_close(sup, expected)
    torch.testing.assert_close(sub, heads.sub_logits(feats, targets))


def test_heads_rectify_the_features() -> None:
    heads = _heads()
    negative = -torch.rand(3, D, dtype=torch.float64)
    targets = torch.tensor([2, 0, 2])
    assert torch.equal(heads.super_logits(negative), heads.super_head.bias.expand(3, S))
    assert torch.equal(heads.sub_logits(negative, targets), heads.sub_bias[targets])


def test_each_sample_costs_only_its_own_sub_head() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    batch = 9
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    with FlopCounterMode(display=False) as counter:
        heads.sub_logits(torch.randn(batch, D), targets)
    assert counter.get_total_flops() == 2 * batch * N_SUB * D  # not 2 * B * S * n_sub * D


class _LargestOutput(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_per_sample_weight_or_flat_logit_tensor_is_materialised() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    batch = 8
    feats = torch.randn(batch, D, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    with _LargestOutput() as probe:
        heads.sub_logits(feats, targets)
    # (B, S * n_sub) = 160 and (B, n_sub, D) = 240 elements; the grouped path stays below both.
    assert probe.largest < min(batch * S * N_SUB, batch * N_SUB * D)


def test_sub_heads_work_under_autocast() -> None:
    # A user's own loop may wrap the heads in bf16 autocast: the logits then come out in bf16,
    # close to the float32 ones, and the backward pass reaches the features and the weights.
    heads = HierarchicalHeads(80, S, 7)
    x = torch.randn(6, 80, requires_grad=True)
    y = torch.tensor([0, 0, 2, 2, 2, 3])
    plain = heads.sub_logits(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = heads.sub_logits(x, y)
    assert auto.dtype == torch.bfloat16
    torch.testing.assert_close(auto.float(), plain, rtol=0.05, atol=0.02)
    auto.float().sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and heads.sub_weight.grad is not None


def test_empty_batch() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    out = heads.sub_logits(torch.randn(0, D), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, N_SUB)


def test_reset_parameters_is_reproducible_and_changes_weights() -> None:
    a, b = HierarchicalHeads(D, S, N_SUB), HierarchicalHeads(D, S, N_SUB)
    with torch.no_grad():
        for p in a.parameters():
            p.fill_(1.0)
    a.reset_parameters(torch.Generator().manual_seed(7))
    b.reset_parameters(torch.Generator().manual_seed(7))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, torch.ones_like(pa)), name
    assert torch.equal(a.sub_bias, torch.zeros_like(a.sub_bias))
    assert torch.equal(a.super_head.bias, torch.zeros_like(a.super_head.bias))
    b.reset_parameters(torch.Generator().manual_seed(8))
    assert not torch.equal(a.sub_weight, b.sub_weight)


def test_reset_parameters_can_keep_the_super_head() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    before = heads.super_head.weight.clone()
    heads.reset_parameters(torch.Generator().manual_seed(1), super_head=False)
    assert torch.equal(heads.super_head.weight, before)


def test_reference_init_scale() -> None:
    heads = HierarchicalHeads(256, 4, 256)
    assert heads.sub_weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert heads.super_head.weight.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.tensor([0, S]), "n_super"),
        (torch.tensor([0, 1], dtype=torch.int32), "int64"),
        (torch.tensor([0]), "shape"),
    ],
)
def test_bad_targets_are_rejected(targets: torch.Tensor, match: str) -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    with pytest.raises(ValueError, match=match):
        heads.sub_logits(torch.randn(2, D), targets)


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_sub >= 1"):
        HierarchicalHeads(D, S, 0)


# ---- owning a subset of the sub-heads (the paper's grouped layout) ----

OWNED = [3, 1]


def test_full_heads_state_dict_is_unchanged() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    shapes = {k: tuple(v.shape) for k, v in heads.state_dict().items()}
    assert shapes == {
        "super_head.weight": (S, D),
        "super_head.bias": (S,),
        "sub_weight": (S, N_SUB, D),
        "sub_bias": (S, N_SUB),
    }
    assert heads.sub_weight.is_contiguous()
    assert heads.owned == tuple(range(S))
    assert HierarchicalHeads(D, S, N_SUB, owned=None).owned == heads.owned


def test_a_state_dict_stored_transposed_loads() -> None:
    # Earlier versions kept sub_weight as a transposed (S, D, n_sub) view: same shape, same
    # values, other strides. Their checkpoints load into today's contiguous weight.
    old = HierarchicalHeads(D, S, N_SUB).state_dict()
    old["sub_weight"] = old["sub_weight"].transpose(1, 2).contiguous().transpose(1, 2)
    heads = HierarchicalHeads(D, S, N_SUB)
    heads.load_state_dict(old)
    assert torch.equal(heads.sub_weight, old["sub_weight"]) and heads.sub_weight.is_contiguous()


def test_owned_subset_shapes() -> None:
    heads = HierarchicalHeads(D, S, N_SUB, owned=OWNED)
    assert heads.owned == (3, 1)
    assert heads.sub_weight.shape == (2, N_SUB, D) and heads.sub_bias.shape == (2, N_SUB)
    assert heads.super_head.out_features == S  # the super head stays full everywhere
    assert set(heads.state_dict()) == set(HierarchicalHeads(D, S, N_SUB).state_dict())
    # Sub-head g lives in slot OWNED.index(g) of the stacked parameters.
    for slot, g in enumerate(OWNED):
        assert heads.sub_head(g)[0].data_ptr() == heads.sub_weight[slot].data_ptr()
    assert "owned=(3, 1)" in repr(heads)


def test_sub_head_init_does_not_depend_on_the_owned_subset() -> None:
    full = HierarchicalHeads(D, S, N_SUB)
    part = HierarchicalHeads(D, S, N_SUB, owned=OWNED)
    single = HierarchicalHeads(D, S, N_SUB, owned=[1])
    for heads in (full, part, single):
        heads.reset_parameters(torch.Generator().manual_seed(11))
    for g in OWNED:
        assert torch.equal(part.sub_head(g)[0], full.sub_head(g)[0]), g
    assert torch.equal(single.sub_head(1)[0], full.sub_head(1)[0])
    assert torch.equal(part.super_head.weight, full.super_head.weight)
    assert not torch.equal(full.sub_head(1)[0], full.sub_head(3)[0])  # heads differ


def test_owned_subset_gives_the_full_heads_logits() -> None:
    full = HierarchicalHeads(D, S, N_SUB).double()
    part = HierarchicalHeads(D, S, N_SUB, owned=OWNED).double()
    for heads in (full, part):
        heads.reset_parameters(torch.Generator().manual_seed(5))
    feats = torch.randn(7, D, dtype=torch.float64)
    for targets in (torch.tensor([3, 1, 1, 3, 3, 1, 3]), torch.full((7,), 1)):
        sup_f, sub_f = full(feats, targets)
        sup_p, sub_p = part(feats, targets)
        torch.testing.assert_close(sup_p, sup_f, rtol=0, atol=0)
        torch.testing.assert_close(sub_p, sub_f, rtol=0, atol=0)
        torch.testing.assert_close(part.sub_logits(feats, targets), sub_f, rtol=0, atol=0)


def test_owned_subset_gradients_land_in_the_right_slot() -> None:
    part = HierarchicalHeads(D, S, N_SUB, owned=OWNED)
    part.sub_logits(torch.rand(3, D), torch.tensor([1, 1, 1])).sum().backward()  # type: ignore[no-untyped-call]
    assert part.sub_weight.grad is not None
    assert part.sub_weight.grad[part.owned.index(1)].abs().sum() > 0
    assert torch.equal(part.sub_weight.grad[part.owned.index(3)], torch.zeros(N_SUB, D))


def test_unowned_target_is_rejected() -> None:
    part = HierarchicalHeads(D, S, N_SUB, owned=OWNED)
    with pytest.raises(ValueError, match=r"super-class\(es\) \[0, 2\].*owned=\(3, 1\)"):
        part.sub_logits(torch.randn(4, D), torch.tensor([3, 0, 2, 1]))
    with pytest.raises(ValueError, match=r"\[2\]"):
        part(torch.randn(1, D), torch.tensor([2]))
    with pytest.raises(ValueError, match="n_super"):
        part.sub_logits(torch.randn(1, D), torch.tensor([S]))
    with pytest.raises(ValueError, match="super-class 0 is not owned"):
        part.sub_head(0)
    with pytest.raises(ValueError, match=f"super-class {S} is not owned"):
        part.load_sub_head(S, torch.zeros(N_SUB, D), torch.zeros(N_SUB))


@pytest.mark.parametrize("owned", [[], [0, 0], [S], [-1]])
def test_bad_owned_is_rejected(owned: list[int]) -> None:
    with pytest.raises(ValueError, match="owned must list distinct super-classes"):
        HierarchicalHeads(D, S, N_SUB, owned=owned)


def test_owned_subset_reset_is_reproducible() -> None:
    a = HierarchicalHeads(D, S, N_SUB, owned=OWNED)
    b = HierarchicalHeads(D, S, N_SUB, owned=OWNED)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.sub_bias, torch.zeros_like(a.sub_bias))
    b.reset_parameters(torch.Generator().manual_seed(4))
    assert not torch.equal(a.sub_weight, b.sub_weight)
    kept = b.super_head.weight.clone()
    b.reset_parameters(torch.Generator().manual_seed(5), super_head=False)
    assert torch.equal(b.super_head.weight, kept)
    assert not torch.equal(a.sub_weight, b.sub_weight)


def test_sub_head_round_trip_assembles_the_full_heads() -> None:
    full = HierarchicalHeads(D, S, N_SUB)
    with torch.no_grad():
        full.sub_bias.normal_()
    parts = [HierarchicalHeads(D, S, N_SUB, owned=[g]) for g in range(S)]
    for g, part in enumerate(parts):
        part.load_sub_head(g, *full.sub_head(g))
    assembled = HierarchicalHeads(D, S, N_SUB)
    for g, part in enumerate(parts):
        assembled.load_sub_head(g, *part.sub_head(g))
    assert torch.equal(assembled.sub_weight, full.sub_weight)
    assert torch.equal(assembled.sub_bias, full.sub_bias)
    # sub_head returns views of the parameters, without autograd history.
    weight, bias = parts[2].sub_head(2)
    assert not weight.requires_grad and weight.data_ptr() == parts[2].sub_weight.data_ptr()
    assert not bias.requires_grad and bias.data_ptr() == parts[2].sub_bias.data_ptr()
    with pytest.raises(ValueError, match=r"needs weight \(5, 6\)"):
        parts[0].load_sub_head(0, torch.zeros(N_SUB, D + 1), torch.zeros(N_SUB))
