"""SyncBatchNorm2d in one process: it is nn.BatchNorm2d, and so is its synchronised math.

The pooled-statistics path normally needs several ranks (tests/distributed/test_syncbn.py).
Here it is forced on by pretending to be in a group of 2 whose all-reduce is the identity, so
the formula itself is checked against ``nn.BatchNorm2d`` in milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepercluster import distributed
from deepercluster.models import SyncBatchNorm2d, convert_sync_batchnorm, small_convnet


@pytest.fixture
def pooled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the synchronised branch in one process: a 'group' of 2 whose sum is the identity."""
    monkeypatch.setattr(distributed, "world_size", lambda group=None: 2)
    monkeypatch.setattr(distributed, "all_reduce_sum_autograd", lambda t, group=None: t)


def _pair(dtype: torch.dtype = torch.float64, **kwargs: object) -> tuple[nn.BatchNorm2d, ...]:
    ref = nn.BatchNorm2d(3, dtype=dtype, **kwargs)  # type: ignore[arg-type]
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    if ref.running_mean is not None:
        ref.running_mean.uniform_(-1, 1)  # a shift that is not the batch mean
    sync = convert_sync_batchnorm(ref.__class__(3, dtype=dtype, **kwargs))  # type: ignore[arg-type]
    sync.load_state_dict(ref.state_dict())
    assert isinstance(sync, SyncBatchNorm2d)
    return ref, sync


def _run(bn: nn.Module, x: torch.Tensor, steps: int = 3) -> tuple[torch.Tensor, ...]:
    """Forward/backward ``steps`` times; last output, input grad and param grads."""
    for _ in range(steps):
        xi = x.detach().clone().requires_grad_(True)
        bn.zero_grad()
        out = bn(xi)
        (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = [p.grad for p in bn.parameters()]
    return (out.detach(), xi.grad, *[g for g in grads if g is not None])


@pytest.mark.parametrize("train", [True, False])
def test_alone_it_is_batchnorm_bit_for_bit(train: bool) -> None:
    ref, sync = _pair(torch.float32)
    ref.train(train)
    sync.train(train)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    for a, b in zip(_run(ref, x), _run(sync, x), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ref.running_mean, sync.running_mean)
    assert torch.equal(ref.running_var, sync.running_var)
    assert torch.equal(ref.num_batches_tracked, sync.num_batches_tracked)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}],
    ids=["default", "cumulative", "no-affine", "no-running-stats"],
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.usefixtures("pooled_path")
def test_pooled_math_matches_batchnorm(kwargs: dict[str, object], channels_last: bool) -> None:
    ref, sync = _pair(torch.float64, **kwargs)
    x = torch.randn(5, 3, 4, 6, dtype=torch.float64) * 3 + 2
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    got, want = _run(sync, x), _run(ref, x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for name, buf in ref.named_buffers():
        torch.testing.assert_close(dict(sync.named_buffers())[name], buf, rtol=1e-12, atol=0)


@pytest.mark.usefixtures("pooled_path")
def test_pooled_math_float32_and_bf16_autocast() -> None:
    ref, sync = _pair(torch.float32)
    x = torch.randn(8, 3, 4, 4) * 2 - 1
    for a, b in zip(_run(sync, x, steps=1), _run(ref, x, steps=1), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.bfloat16()
        got, want = sync(xb), ref(xb)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.usefixtures("pooled_path")
def test_large_mean_keeps_variance_precise_in_float32() -> None:
    # |mean| / std = 1e4: E[x^2] - E[x]^2 in float32 is wrong by more than the variance itself.
    bn = SyncBatchNorm2d(3)
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) + 1e4
    out = bn(x.float())  # first step: running mean 0, nothing to shift by
    assert torch.isfinite(out).all()  # the variance was clamped, not negative
    bn.running_mean.fill_(1e4 + 0.3)  # a settled running mean is a close enough shift
    out = bn(x.float())
    # Reference: float64 math on the very same float32 inputs (K = 0 gives errors of ~1e3).
    want = nn.functional.batch_norm(x.float().double(), None, None, training=True)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-4)


def test_convert_keeps_tensors_keys_and_flags() -> None:
    model = small_convnet(sobel=True, resolution=32)
    model.eval()
    first_bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    first_bn.weight.requires_grad_(False)
    first_bn.momentum = None
    before = model.state_dict()
    tensors = {n: p.data_ptr() for n, p in model.named_parameters()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    assert convert_sync_batchnorm(model) is model
    converted = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert n_bn > 0 and len(converted) == n_bn
    assert all(type(m) is SyncBatchNorm2d and not m.training for m in converted)
    assert converted[0].momentum is None and not converted[0].weight.requires_grad
    assert list(model.state_dict()) == list(before)  # checkpoints stay loadable
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == tensors
    model.load_state_dict(before)


def test_convert_single_layer_shared_layer_and_idempotence() -> None:
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3, affine=False, track_running_stats=False)
    new = convert_sync_batchnorm(bn, group=None)
    assert isinstance(new, SyncBatchNorm2d) and new is not bn
    assert (new.eps, new.momentum, new.affine, new.track_running_stats) == (1e-3, 0.3, False, False)
    assert new.weight is None and new.running_mean is None
    assert convert_sync_batchnorm(new) is new

    shared = nn.BatchNorm2d(2)
    net = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(nn.ReLU(), shared)})
    convert_sync_batchnorm(net)
    assert isinstance(net["a"][0], SyncBatchNorm2d) and net["a"][0] is net["b"][1]


@pytest.mark.gpu
@pytest.mark.usefixtures("pooled_path")
@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
def test_pooled_math_on_cuda(amp: torch.dtype | None) -> None:
    ref, sync = _pair(torch.float32)
    ref, sync = ref.cuda(), sync.cuda()
    x = (torch.randn(8, 3, 6, 6, device="cuda") + 3).to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=amp or torch.float16, enabled=amp is not None):
        xa = x.to(amp) if amp is not None else x
        got, want = sync(xa), ref(xa)
    assert got.dtype == want.dtype and got.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-5 if amp is None else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-5, atol=1e-5)
