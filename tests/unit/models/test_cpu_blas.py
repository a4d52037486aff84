"""The once-per-shape timing choice between torch's BLAS and numpy's OpenBLAS, the thread pool
that runs OpenBLAS one thread per task, and when the heads offer the choice at all."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.unit.models.conftest import random_heads
from threadpoolctl import threadpool_info

from deepercluster.models import HierarchicalHeads, cpu_blas, products

needs_openblas = pytest.mark.skipif(
    not cpu_blas.available(), reason="numpy's OpenBLAS not found in this process"
)


@pytest.fixture(autouse=True)
def fresh_choices() -> Iterator[None]:
    cpu_blas.forget()
    yield
    cpu_blas.forget()


def _counting(delay: float, calls: list[str], name: str) -> tuple[str, Callable[[], None]]:
    def run() -> None:
        calls.append(name)
        time.sleep(delay)

    return name, run


def test_fastest_times_each_candidate_once_per_key_and_remembers() -> None:
    calls: list[str] = []
    candidates = dict([_counting(0.02, calls, "slow"), _counting(0.0, calls, "quick")])
    assert cpu_blas.fastest(("op", 1), candidates) == "quick"
    assert sorted(calls) == ["quick"] * 3 + ["slow"] * 3
    calls.clear()
    assert cpu_blas.fastest(("op", 1), candidates) == "quick"
    assert calls == []  # remembered: nothing timed again
    assert any(
        key.startswith("op 1") and name == "quick" for key, name in cpu_blas.choices().items()
    )
    # Another key, or the same key at another thread count, is timed afresh.
    cpu_blas.fastest(("op", 2), candidates)
    assert len(calls) == 6
    calls.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        cpu_blas.fastest(("op", 1), candidates)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 6


def test_the_environment_pins_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    candidates = dict([_counting(0.01, calls, "slow"), _counting(0.0, calls, "quick")])
    monkeypatch.setenv(cpu_blas.PIN_ENV, "slow")
    assert cpu_blas.fastest(("op",), candidates) == "slow"
    assert calls == []  # nothing timed
    monkeypatch.setenv(cpu_blas.PIN_ENV, "")  # empty: choose by timing
    assert cpu_blas.fastest(("op",), candidates) == "quick"


def test_forced_overrides_the_timing_choice() -> None:
    calls: list[str] = []
    candidates = dict([_counting(0.01, calls, "slow"), _counting(0.0, calls, "quick")])
    with cpu_blas.forced("slow"):
        assert cpu_blas.fastest(("op",), candidates) == "slow"
        with cpu_blas.forced("absent"):  # not a candidate: the timing decides
            assert cpu_blas.fastest(("op",), candidates) == "quick"
        assert cpu_blas.fastest(("op",), candidates) == "slow"
    assert cpu_blas.fastest(("op",), candidates) == "quick"


def _numpy_blas_threads() -> int:
    numpy_libs = [
        info
        for info in threadpool_info()
        if info["internal_api"] == "openblas" and "numpy" in info["filepath"]
    ]
    assert len(numpy_libs) == 1, numpy_libs
    return int(numpy_libs[0]["num_threads"])


@needs_openblas
@pytest.mark.parametrize("torch_threads", [1, 2])
def test_each_runs_every_item_with_openblas_single_threaded(torch_threads: int) -> None:
    before = _numpy_blas_threads()
    seen: list[int] = []
    threads_in_task: set[int] = set()
    names: set[str] = set()
    lock = threading.Lock()

    def task(item: int) -> None:
        blas_threads = _numpy_blas_threads()
        with lock:
            seen.append(item)
            threads_in_task.add(blas_threads)
            names.add(threading.current_thread().name)

    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        cpu_blas.each(task, range(10))
    finally:
        torch.set_num_threads(previous)
    assert sorted(seen) == list(range(10))
    assert threads_in_task == {1}
    assert _numpy_blas_threads() == before  # restored
    assert len(names) <= torch_threads


@needs_openblas
def test_each_propagates_a_task_error_and_restores_the_thread_count() -> None:
    before = _numpy_blas_threads()

    def task(item: int) -> None:
        if item == 3:
            raise ValueError("item 3")

    with pytest.raises(ValueError, match="item 3"):
        cpu_blas.each(task, range(6))
    assert _numpy_blas_threads() == before


def test_each_runs_in_the_calling_thread_when_openblas_refuses_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # threadpoolctl lets one thread control OpenBLAS' pthreads count; when the limit does not
    # take, OpenBLAS keeps its threads and the tasks must not run on several threads at once.
    class Refusing:
        def limit(self, limits: int) -> Any:
            return contextlib.nullcontext()

        def info(self) -> list[dict[str, int]]:
            return [{"num_threads": 2}]

    monkeypatch.setattr(cpu_blas, "_numpy_openblas", lambda: Refusing())
    names: list[str] = []
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cpu_blas.each(lambda item: names.append(threading.current_thread().name), range(5))
    finally:
        torch.set_num_threads(previous)
    assert names == [threading.current_thread().name] * 5


def test_openblas_is_offered_only_for_large_cpu_sub_heads_in_the_heads_order() -> None:
    big = HierarchicalHeads(512, 2, 5_000)  # (512, 5,000) float32: 10 MB per sub-head
    x = torch.zeros(32, 512)
    assert products.blas_applies(x, big.sub_weight) == cpu_blas.available()
    small = HierarchicalHeads(512, 2, 250)  # 0.5 MB: stays in cache, torch's path
    assert not products.blas_applies(x, small.sub_weight)
    plain = big.sub_weight.detach().contiguous()  # (S, n_sub, D) storage order
    assert not products.blas_applies(x, plain)
    assert not products.blas_applies(x.bfloat16(), big.sub_weight.detach().bfloat16())
    assert not products.blas_applies(torch.zeros(512, 32).t(), big.sub_weight)
    assert products.blas_applies(x, big.sub_weight, big.sub_bias) == cpu_blas.available()
    # numpy would cast a float64 bias silently where torch refuses the mix
    assert not products.blas_applies(x, big.sub_weight, big.sub_bias.detach().double())


@needs_openblas
def test_the_fused_loss_times_both_paths_then_keeps_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a forced choice, the first step times torch's and OpenBLAS' products (both run
    # for real) and records the choice; values and gradients equal the plain reference.
    monkeypatch.setattr(products, "_BLAS_MIN_BYTES", 0)
    heads = random_heads(16, 4, 9, seed=2)
    y, z = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([8, 1, 0, 4, 4, 2])
    feats = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    ref = F.cross_entropy(heads.sub_logits(feats, y), z, reduction="none")
    ref.sum().backward()  # type: ignore[no-untyped-call]
    assert heads.sub_weight.grad is not None and feats.grad is not None
    want = [heads.sub_weight.grad.clone(), feats.grad.clone()]
    heads.zero_grad(set_to_none=True)
    feats.grad = None
    losses, _ = heads.sub_cross_entropy(feats, y, z)
    losses.sum().backward()  # type: ignore[no-untyped-call]
    chosen = cpu_blas.choices()
    assert {key.split(" (")[0] for key in chosen} == {"fused forward", "weight gradient"}
    assert set(chosen.values()) <= {"torch", "openblas"}
    torch.testing.assert_close(losses, ref, rtol=1e-12, atol=1e-12)
    assert heads.sub_weight.grad is not None and feats.grad is not None
    torch.testing.assert_close(heads.sub_weight.grad, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(feats.grad, want[1], rtol=1e-12, atol=1e-12)
