"""Hierarchical loss: equals a per-sample reference; RotNet and DeepCluster as special cases."""

from __future__ import annotations

import pytest
import torch

from deepercluster.losses import HierarchicalLossOutput, hierarchical_loss, super_class_targets
from deepercluster.models import HierarchicalHeads


def _random_heads(d: int, s: int, n_sub: int) -> HierarchicalHeads:
    heads = HierarchicalHeads(d, s, n_sub).double()
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_()
    return heads


def _naive_loss(
    heads: HierarchicalHeads, feats: torch.Tensor, y: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Per sample: -log softmax(super)[y_i] - log softmax(sub-head y_i)[z_i], then batch means."""
    x = feats.relu()
    sup, sub = [], []
    for i in range(len(y)):
        s_logits = heads.super_head.weight @ x[i] + heads.super_head.bias
        c_logits = heads.sub_weight[y[i]] @ x[i] + heads.sub_bias[y[i]]
        sup.append(torch.logsumexp(s_logits, 0) - s_logits[y[i]])
        sub.append(torch.logsumexp(c_logits, 0) - c_logits[z[i]])
    return torch.stack(sup).mean() + torch.stack(sub).mean()


TARGET_CASES = {
    "mixed": [0, 7, 3, 3, 5, 0, 1, 7, 3, 2, 2],  # super-classes 4 and 6 absent
    "batch_of_one": [2],
    "all_same": [1, 1, 1, 1],
    "some_absent": [0, 2, 2, 0, 2],
}


@pytest.mark.parametrize("case", sorted(TARGET_CASES))
def test_matches_per_sample_reference_with_gradients(case: str) -> None:
    d, s, n_sub = 7, 8, 5
    heads = _random_heads(d, s, n_sub)
    y = torch.tensor(TARGET_CASES[case])
    feats = torch.randn(len(y), d, dtype=torch.float64, requires_grad=True)
    z = torch.randint(0, n_sub, y.shape)

    out = hierarchical_loss(heads, feats, y, z)
    ref = _naive_loss(heads, feats, y, z)
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.super_loss + out.sub_loss, ref, rtol=1e-12, atol=1e-12)

    grads = torch.autograd.grad(out.loss, [feats, *heads.parameters()])
    ref_grads = torch.autograd.grad(ref, [feats, *heads.parameters()])
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    # the sub-heads of absent super-classes get a zero gradient
    absent = sorted(set(range(s)) - set(TARGET_CASES[case]))
    sub_weight_grad = grads[1 + [n for n, _ in heads.named_parameters()].index("sub_weight")]
    assert torch.equal(sub_weight_grad[absent], torch.zeros(len(absent), n_sub, d).double())


def test_owned_subset_gives_the_full_heads_loss_and_gradients() -> None:
    # The grouped layout: a process holding sub-heads [3, 1] computes, for its samples, the
    # loss and sub-head gradients that the full heads compute.
    full = _random_heads(6, 4, 5)
    part = HierarchicalHeads(6, 4, 5, owned=[3, 1]).double()
    part.load_state_dict(
        {
            **full.state_dict(),
            "sub_weight": full.sub_weight[[3, 1]],
            "sub_bias": full.sub_bias[[3, 1]],
        }
    )
    feats = torch.randn(6, 6, dtype=torch.float64)
    y, z = torch.tensor([1, 3, 3, 1, 1, 3]), torch.tensor([0, 4, 2, 2, 1, 3])
    hierarchical_loss(full, feats, y, z).loss.backward()  # type: ignore[no-untyped-call]
    out = hierarchical_loss(part, feats, y, z)
    torch.testing.assert_close(out.loss, hierarchical_loss(full, feats, y, z).loss)
    out.loss.backward()  # type: ignore[no-untyped-call]
    assert full.sub_weight.grad is not None and part.sub_weight.grad is not None
    torch.testing.assert_close(part.sub_weight.grad, full.sub_weight.grad[[3, 1]])


def test_no_grad() -> None:
    heads = _random_heads(6, 4, 5)
    feats = torch.randn(5, 6, dtype=torch.float64)
    y, z = torch.tensor([1, 1, 0, 3, 0]), torch.tensor([0, 4, 4, 1, 2])
    with torch.no_grad():
        out = hierarchical_loss(heads, feats, y, z)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, _naive_loss(heads, feats, y, z), rtol=1e-12, atol=1e-12)


def test_correct_follows_argmax_on_ties() -> None:
    # Constant logits (a dead backbone) must not count every target as right: argmax takes
    # the first maximal class, so only that one is.
    heads = HierarchicalHeads(6, 4, 5)
    with torch.no_grad():
        for p in heads.parameters():
            p.zero_()
        heads.sub_bias[1, 1] = heads.sub_bias[1, 3] = 2.0  # sub-head 1: classes 1 and 3 tie
    y, z = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 3, 2, 1, 3, 0])
    out = hierarchical_loss(heads, torch.randn(6, 6), y, z)
    assert out.sub_correct == 2  # sample 0 (class 0 of five equal ones) and sample 3
    assert out.super_correct == 3  # all-zero super logits: argmax 0


def test_parts_are_detached_and_total_is_differentiable() -> None:
    heads = HierarchicalHeads(4, 2, 3)
    out = hierarchical_loss(
        heads, torch.randn(3, 4), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    )
    assert isinstance(out, HierarchicalLossOutput)
    assert out.loss.requires_grad and out.loss.dim() == 0
    assert not out.super_loss.requires_grad and not out.sub_loss.requires_grad


def _one_hot_setup(
    y: list[int], z: list[int], *, s: int = 4, n_sub: int = 3, scale: float = 100.0
) -> tuple[HierarchicalHeads, torch.Tensor]:
    """Heads and features whose logits are `scale` at (y_i, z_i) and 0 elsewhere."""
    d = s + n_sub
    heads = HierarchicalHeads(d, s, n_sub)
    with torch.no_grad():
        heads.super_head.weight.zero_()
        heads.super_head.weight[:, :s] = scale * torch.eye(s)
        heads.sub_weight.zero_()
        heads.sub_weight[:, :, s:] = scale * torch.eye(n_sub)
    feats = torch.zeros(len(y), d)
    feats[torch.arange(len(y)), torch.tensor(y)] = 1.0
    feats[torch.arange(len(y)), s + torch.tensor(z)] = 1.0
    return heads, feats


def test_loss_vanishes_for_confident_correct_logits() -> None:
    y, z = [0, 3, 2, 2, 1], [2, 0, 1, 1, 0]
    heads, feats = _one_hot_setup(y, z)
    out = hierarchical_loss(heads, feats, torch.tensor(y), torch.tensor(z))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.super_correct == out.sub_correct == 5


def test_correct_counts() -> None:
    y, z = [0, 3, 2, 2, 1], [2, 0, 1, 1, 0]
    heads, feats = _one_hot_setup(y, z)
    wrong_y = torch.tensor([1, 3, 2, 2, 1])  # sample 0's super target is wrong
    wrong_z = torch.tensor([2, 1, 0, 1, 0])  # samples 1 and 2's sub targets are wrong
    out = hierarchical_loss(heads, feats, wrong_y, wrong_z)
    assert out.super_correct == 4
    # Sample 0 is routed to sub-head 1, whose logits are also scale * e_z: still right.
    assert out.sub_correct == 3
    assert out.super_loss.item() > 10 and out.sub_loss.item() > 10


def test_rotation_counts_ignore_the_super_cluster() -> None:
    # m = 2: super-classes (rotation r, super-cluster s) = 2r + s; the heads predict y.
    y, z = [0, 3, 2, 2, 1], [2, 0, 1, 1, 0]
    heads, feats = _one_hot_setup(y, z)
    # Sample 0: right rotation (0), wrong super-cluster; sample 1: wrong rotation (0 vs 1).
    targets = torch.tensor([1, 0, 2, 2, 1])
    out = hierarchical_loss(heads, feats, targets, torch.tensor(z), n_super_clusters=2)
    assert out.super_correct == 3
    assert out.rotation_correct == 4


def test_rotnet_special_case_has_zero_sub_loss() -> None:
    # Rotation on, m = 1 super-cluster, k = 1 cluster: S = 4 rotations, n_sub = 1.
    rotations = torch.tensor([0, 1, 2, 3, 1])
    y = super_class_targets(
        rotations, torch.zeros(5, dtype=torch.int64), n_super_clusters=1, rotation=True
    )
    assert torch.equal(y, rotations)
    heads = HierarchicalHeads(8, 4, 1)
    out = hierarchical_loss(heads, torch.randn(5, 8), y, torch.zeros(5, dtype=torch.int64))
    assert out.sub_loss.item() == 0.0 and out.sub_correct == 5
    assert out.super_loss.item() > 0
    out.loss.backward()  # type: ignore[no-untyped-call]
    assert heads.sub_weight.grad is not None
    assert torch.equal(heads.sub_weight.grad, torch.zeros_like(heads.sub_weight))
    assert heads.super_head.weight.grad is not None and heads.super_head.weight.grad.abs().sum() > 0


def test_deepcluster_special_case_has_zero_super_loss() -> None:
    # Rotation off, m = 1: one super-class, and its sub-head is the k-way classifier.
    k = 6
    y = super_class_targets(
        torch.zeros(4, dtype=torch.int64),
        torch.zeros(4, dtype=torch.int64),
        n_super_clusters=1,
        rotation=False,
    )
    assert torch.equal(y, torch.zeros(4, dtype=torch.int64))
    heads = HierarchicalHeads(8, 1, k)
    feats = torch.randn(4, 8)
    z = torch.tensor([5, 0, 3, 3])
    out = hierarchical_loss(heads, feats, y, z)
    assert out.super_loss.item() == 0.0 and out.super_correct == 4
    expected = torch.nn.functional.cross_entropy(
        feats.relu() @ heads.sub_weight[0].T + heads.sub_bias[0], z
    )
    torch.testing.assert_close(out.sub_loss, expected)


def test_super_class_targets_with_rotation() -> None:
    m = 3
    r = torch.tensor([0, 1, 2, 3, 3, 0])
    s = torch.tensor([0, 0, 1, 2, 0, 2], dtype=torch.int32)
    y = super_class_targets(r, s, n_super_clusters=m, rotation=True)
    assert y.dtype == torch.int64
    assert y.tolist() == [0, 3, 7, 11, 9, 2]
    # Every (rotation, super-cluster) pair gets its own class in [0, 4m).
    rr, ss = torch.meshgrid(torch.arange(4), torch.arange(m), indexing="ij")
    all_y = super_class_targets(rr.flatten(), ss.flatten(), n_super_clusters=m, rotation=True)
    assert sorted(all_y.tolist()) == list(range(4 * m))


def test_super_class_targets_without_rotation() -> None:
    s = torch.tensor([2, 0, 1], dtype=torch.uint8)
    y = super_class_targets(
        torch.zeros(3, dtype=torch.int64), s, n_super_clusters=3, rotation=False
    )
    assert y.dtype == torch.int64 and y.tolist() == [2, 0, 1]


def test_super_class_targets_validation() -> None:
    with pytest.raises(ValueError, match="n_super_clusters"):
        super_class_targets(torch.zeros(2), torch.zeros(2), n_super_clusters=0, rotation=True)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        super_class_targets(torch.zeros(3), torch.zeros(2), n_super_clusters=1, rotation=True)


def test_mismatched_targets() -> None:
    heads = HierarchicalHeads(4, 2, 3)
    y = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="one pair of targets"):
        hierarchical_loss(heads, torch.randn(3, 4), y, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="must both be int64"):
        hierarchical_loss(heads, torch.randn(3, 4), y, torch.zeros(3))
