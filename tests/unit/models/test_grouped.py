"""The fused sub-head cross-entropy equals logits + F.cross_entropy; its gradient storage is
reused across steps but never under someone who kept a gradient. Every test runs twice: with
the products on torch's BLAS and on numpy's OpenBLAS (one group per thread)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.unit.models.conftest import random_heads

from deepercluster.models import HierarchicalHeads, cpu_blas, products
from deepercluster.models.grouped import GradBuffer, grouped_cross_entropy, grouped_linear

D, S, N_SUB = 6, 4, 5

TARGET_CASES = {
    "mixed": [3, 0, 2, 0, 1, 3, 3],
    "batch_of_one": [2],
    "all_same": [1, 1, 1, 1],
    "some_absent": [0, 2, 2, 0, 2],
}


@pytest.fixture(autouse=True, params=["torch", "openblas"])
def backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, int]]:
    """The BLAS of the fused loss' products (OpenBLAS offered at any sub-head size here);
    yields how often each OpenBLAS function ran."""
    calls = {"forward": 0, "weight": 0}
    if request.param == "openblas":
        if not cpu_blas.available():
            pytest.skip("numpy's OpenBLAS not found in this process")
        monkeypatch.setattr(products, "_BLAS_MIN_BYTES", 0)
        for name, key in (("blas_fused_forward", "forward"), ("blas_weight_grad", "weight")):
            original = getattr(products, name)

            def counted(*args: Any, _run: Any = original, _key: str = key) -> Any:
                calls[_key] += 1
                return _run(*args)

            monkeypatch.setattr(products, name, counted)
    with cpu_blas.forced(request.param):
        yield calls


def _heads(seed: int = 0) -> HierarchicalHeads:
    return random_heads(D, S, N_SUB, seed=seed)


def _grads(heads: HierarchicalHeads, feats: torch.Tensor) -> list[torch.Tensor]:
    assert heads.sub_weight.grad is not None and heads.sub_bias.grad is not None
    assert feats.grad is not None
    return [heads.sub_weight.grad.clone(), heads.sub_bias.grad.clone(), feats.grad.clone()]


@pytest.mark.parametrize("case", sorted(TARGET_CASES))
def test_fused_cross_entropy_matches_logits_then_cross_entropy(
    case: str, request: pytest.FixtureRequest, backend: dict[str, int]
) -> None:
    y = torch.tensor(TARGET_CASES[case])
    z = torch.randint(N_SUB, y.shape, generator=torch.Generator().manual_seed(1))
    heads = _heads()
    feats = torch.randn(len(y), D, dtype=torch.float64, requires_grad=True)
    upstream = torch.rand(len(y), dtype=torch.float64)  # not all equal: tests the scaling

    ref = F.cross_entropy(heads.sub_logits(feats, y), z, reduction="none")
    (ref * upstream).sum().backward()  # type: ignore[no-untyped-call]
    expected = _grads(heads, feats)
    heads.zero_grad(set_to_none=True)
    feats.grad = None

    losses, correct = heads.sub_cross_entropy(feats, y, z)
    torch.testing.assert_close(losses, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(correct, heads.sub_logits(feats, y).argmax(1) == z)
    assert not correct.requires_grad
    (losses * upstream).sum().backward()  # type: ignore[no-untyped-call]
    for got, want in zip(_grads(heads, feats), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    absent = sorted(set(range(S)) - set(TARGET_CASES[case]))
    assert heads.sub_weight.grad is not None
    assert torch.equal(heads.sub_weight.grad[absent], torch.zeros(len(absent), N_SUB, D).double())
    # the forced backend is the one that ran (OpenBLAS: forward and weight gradient once each)
    on_blas = request.node.callspec.params["backend"] == "openblas"
    assert backend == ({"forward": 1, "weight": 1} if on_blas else {"forward": 0, "weight": 0})


def test_gradients_accumulate_into_an_existing_grad() -> None:
    heads, y, z = _heads(), torch.tensor([0, 1, 3, 3]), torch.tensor([4, 0, 2, 2])
    feats = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    heads.sub_cross_entropy(feats, y, z)[0].sum().backward()  # type: ignore[no-untyped-call]
    once = _grads(heads, feats)
    heads.sub_cross_entropy(feats, y, z)[0].sum().backward()  # type: ignore[no-untyped-call]
    for got, want in zip(_grads(heads, feats), once, strict=True):
        torch.testing.assert_close(got, 2 * want, rtol=1e-12, atol=1e-12)


def test_autograd_grad_returns_the_weight_gradient_and_leaves_grad_alone() -> None:
    heads, y, z = _heads(), torch.tensor([2, 0, 2]), torch.tensor([1, 1, 3])
    feats = torch.randn(3, D, dtype=torch.float64)
    losses, _ = heads.sub_cross_entropy(feats, y, z)
    (g_w,) = torch.autograd.grad(losses.sum(), [heads.sub_weight])
    ref = F.cross_entropy(heads.sub_logits(feats, y), z, reduction="sum")
    (want,) = torch.autograd.grad(ref, [heads.sub_weight])
    torch.testing.assert_close(g_w, want, rtol=1e-12, atol=1e-12)
    assert heads.sub_weight.grad is None


def test_gradient_storage_is_reused_only_when_nobody_holds_the_last_gradient() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    feats = torch.randn(8, D)
    y, z = torch.randint(S, (8,)), torch.randint(N_SUB, (8,))

    decoys = []

    def step() -> torch.Tensor:
        heads.zero_grad(set_to_none=True)
        # Takes the block the allocator would hand out next, so an equal address below can
        # only come from reused storage, not from malloc returning the freed block.
        decoys.append(torch.empty_like(heads.sub_weight))
        heads.sub_cross_entropy(feats, y, z)[0].mean().backward()  # type: ignore[no-untyped-call]
        assert heads.sub_weight.grad is not None
        return heads.sub_weight.grad

    first_ptr = step().data_ptr()
    assert step().data_ptr() == first_ptr  # dropped by zero_grad: lent again

    kept = step()
    kept_copy = kept.clone()
    with torch.no_grad():
        feats.mul_(3.0)  # the next gradient differs
    fresh = step()
    assert fresh.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, kept_copy)  # what we kept was not overwritten
    assert not torch.equal(fresh, kept_copy)


def test_copied_heads_do_not_share_gradient_storage() -> None:
    heads = HierarchicalHeads(D, S, N_SUB)
    feats, y, z = torch.randn(4, D), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    heads.sub_cross_entropy(feats, y, z)[0].sum().backward()  # type: ignore[no-untyped-call]
    twin = copy.deepcopy(heads)
    heads.zero_grad(set_to_none=True)
    twin.zero_grad(set_to_none=True)
    for h in (heads, twin):
        h.sub_cross_entropy(feats, y, z)[0].sum().backward()  # type: ignore[no-untyped-call]
    assert heads.sub_weight.grad is not None and twin.sub_weight.grad is not None
    assert heads.sub_weight.grad.data_ptr() != twin.sub_weight.grad.data_ptr()


def test_no_grad_and_empty_batch() -> None:
    heads = _heads()
    feats = torch.randn(5, D, dtype=torch.float64)
    y, z = torch.tensor([1, 1, 0, 3, 0]), torch.tensor([0, 4, 4, 1, 2])
    with torch.no_grad():
        losses, correct = heads.sub_cross_entropy(feats, y, z)
    ref = F.cross_entropy(heads.sub_logits(feats, y), z, reduction="none")
    torch.testing.assert_close(losses, ref.detach(), rtol=1e-12, atol=1e-12)
    empty = torch.zeros(0, dtype=torch.int64)
    losses, correct = heads.sub_cross_entropy(feats[:0], empty, empty)
    assert losses.shape == (0,) and correct.shape == (0,)


def test_bad_sub_targets_are_refused() -> None:
    heads = _heads()
    with pytest.raises(ValueError, match="sub_targets must be int64"):
        heads.sub_cross_entropy(torch.randn(3, D).double(), torch.tensor([0, 1, 2]), torch.zeros(2))


def test_both_storage_orders_give_the_same_values_and_gradients() -> None:
    # The heads store the sub-heads as (S, D, n_sub); the grouped functions take either order
    # and pick their products' orientation from it.
    heads = HierarchicalHeads(D, S, N_SUB)
    assert heads.sub_weight.shape == (S, N_SUB, D)
    assert heads.sub_weight.transpose(1, 2).is_contiguous()
    g = torch.Generator().manual_seed(3)
    stored_t = torch.randn(S, D, N_SUB, generator=g, dtype=torch.float64).transpose(1, 2)
    bias = torch.randn(S, N_SUB, generator=g, dtype=torch.float64)
    x = torch.randn(7, D, generator=g, dtype=torch.float64)
    targets = torch.randint(N_SUB, (7,), generator=g)
    groups = [(2, 3), (0, 1), (3, 3)]  # slot 1 absent: its gradient must be 0
    upstream = torch.rand(7, generator=g, dtype=torch.float64)
    results = []
    for weight in (stored_t, stored_t.contiguous()):
        w = weight.detach().requires_grad_(True)
        b, xx = bias.clone().requires_grad_(True), x.clone().requires_grad_(True)
        logits = grouped_linear(xx, w, b, groups)
        losses, correct = grouped_cross_entropy(xx, w, b, targets, groups, GradBuffer())
        ref = F.cross_entropy(logits, targets, reduction="none")
        torch.testing.assert_close(losses, ref, rtol=1e-12, atol=1e-12)
        assert torch.equal(correct, logits.argmax(1) == targets)
        (losses * upstream).sum().backward()  # type: ignore[no-untyped-call]
        assert w.grad is not None and b.grad is not None and xx.grad is not None
        # The gradient is laid out like the weight (autograd adopted it without a copy).
        assert w.grad.stride() == w.stride()
        assert torch.equal(w.grad[1], torch.zeros(N_SUB, D, dtype=torch.float64))
        grads = [w.grad.clone(), b.grad.clone(), xx.grad.clone()]
        w.grad = b.grad = xx.grad = None
        (ref * upstream).sum().backward()  # type: ignore[no-untyped-call]
        assert w.grad is not None and b.grad is not None and xx.grad is not None
        for got, want in zip(grads, [w.grad, b.grad, xx.grad], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        results.append([logits.detach(), losses.detach(), *grads])
    for a, b_ in zip(*results, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)


def test_correct_follows_argmax_on_ties() -> None:
    # Constant logits (a dead backbone) must not count every target as right: argmax takes
    # the first maximal class, so only that one is.
    weight = torch.zeros(S, N_SUB, D, requires_grad=True)
    bias = torch.zeros(S, N_SUB)
    bias[1, 1] = bias[1, 3] = 2.0  # sub-head 1: classes 1 and 3 tie at the top
    x = torch.randn(6, D)
    targets = torch.tensor([0, 3, 2, 1, 3, 0])
    groups = [(0, 3), (1, 3)]
    _, correct = grouped_cross_entropy(x, weight, bias, targets, groups, None)
    assert correct.tolist() == [True, False, False, True, False, False]
    logits = grouped_linear(x, weight, bias, groups)
    assert torch.equal(correct, logits.argmax(1) == targets)


def test_slices_only_for_few_rows_through_a_large_sub_head() -> None:
    few, many = torch.zeros(products._FEW_ROWS - 1, 512), torch.zeros(products._FEW_ROWS, 512)
    large = torch.zeros(512, 10_000)  # 20 MB: the heads benchmark's sub-heads
    small = torch.zeros(512, 250)  # 0.5 MB: stays in cache, one product is faster
    assert products._slices_pay(few, large)
    assert not products._slices_pay(many, large)
    assert not products._slices_pay(few, small)
    assert not products._slices_pay(torch.zeros(4, products._K_SLICE), torch.zeros(32, 70_000))


def test_sliced_logits_of_few_rows_equal_one_product_per_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On the CPU a group of fewer than _FEW_ROWS rows takes its logits through a large
    # sub-head in slices of _K_SLICE features (every sub-head counts as large here); D = 80
    # ends on a partial slice, and the 24- and 30-row groups take the single product. Every
    # row is checked against its own product with its sub-head.
    monkeypatch.setattr(products, "_SLICE_MIN_BYTES", 0)
    dim, n_sub = 80, 7
    assert dim % products._K_SLICE != 0 and dim > 2 * products._K_SLICE
    heads = random_heads(dim, S, n_sub, seed=4)
    sizes = {0: 1, 1: products._FEW_ROWS - 1, 2: products._FEW_ROWS, 3: 30}
    y = torch.cat([torch.full((n,), s) for s, n in sizes.items()])
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(len(y), dim, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randint(n_sub, y.shape, generator=g)
    # .relu(): sub_logits sees the heads' input after their ReLU, as the reference does.
    x = feats.relu()
    naive = torch.stack(
        [x[i] @ heads.sub_weight[y[i]].T + heads.sub_bias[y[i]] for i in range(len(y))]
    )
    torch.testing.assert_close(heads.sub_logits(feats, y), naive, rtol=1e-12, atol=1e-12)
    ref = F.cross_entropy(naive, z, reduction="none")
    ref.sum().backward()  # type: ignore[no-untyped-call]
    expected = _grads(heads, feats)
    heads.zero_grad(set_to_none=True)
    feats.grad = None
    losses, _ = heads.sub_cross_entropy(feats, y, z)
    torch.testing.assert_close(losses, ref, rtol=1e-12, atol=1e-12)
    losses.sum().backward()  # type: ignore[no-untyped-call]
    for got, want in zip(_grads(heads, feats), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("slice_min_bytes", [0, products._SLICE_MIN_BYTES])
def test_sub_heads_run_in_their_weights_dtype_under_autocast(
    monkeypatch: pytest.MonkeyPatch, slice_min_bytes: int
) -> None:
    # A user's own loop may wrap the heads in bf16 autocast: both the logits and the fused loss
    # (whose buffers are float32) must work there and give what they give without autocast,
    # on the sliced path of few rows (D = 80, every sub-head counted as large) as on the
    # single product.
    monkeypatch.setattr(products, "_SLICE_MIN_BYTES", slice_min_bytes)
    heads = HierarchicalHeads(80, S, 7)
    x = torch.randn(6, 80, requires_grad=True)
    y, z = torch.tensor([0, 0, 2, 2, 2, 3]), torch.randint(7, (6,))
    plain = [heads.sub_logits(x, y), heads.sub_cross_entropy(x, y, z)[0]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = [heads.sub_logits(x, y), heads.sub_cross_entropy(x, y, z)[0]]
    for got, want in zip(auto, plain, strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)
    auto[1].sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and heads.sub_weight.grad is not None
