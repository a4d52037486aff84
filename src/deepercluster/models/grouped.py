"""Row groups through their own sub-heads: the two autograd functions behind the heads.

The rows of a batch arrive sorted by super-class, and ``groups`` lists ``(slot, rows)`` for
each group in row order: group j's rows go through sub-head ``weight[slot]`` only. Two
functions share that layout:

- :func:`grouped_linear` returns the (B, n_sub) logits, for evaluation and inspection.
- :func:`grouped_cross_entropy` is the training path: the cross-entropy of every row against
  its sub-cluster, fused with the linear layer. The (B, n_sub) logits never enter autograd:
  the forward pass computes the loss, the argmax and the loss's gradient with respect to the
  logits and to the rows, and the backward pass only scales them. That removes the separate
  log-softmax, its backward pass and the reordering of the logits back to batch order.

At B = 256 with 16 sub-heads of 10,000 x 512 every sub-head sees ~16 rows; the products then
run far below the arithmetic peak and the per-operation costs count, so per group we only do
what needs that group's sub-head, and the rest runs once over the batch. At ~16 rows the
operands' layout also counts: the heads store the sub-heads as (S_own, D, n_sub) (the figures
are in the note above :func:`products.logits`), and so does the BLAS: on the CPU the fused
function times torch's products against numpy's OpenBLAS on its first step for each shape
and keeps the faster (:func:`_run_fastest`, :mod:`~deepercluster.models.products`). The
weight gradient goes slot by slot into one
(S_own, n_sub, D) tensor, laid out like the weight (autograd would stack per-group gradients:
a 328 MB copy at k = 40,000, D = 512), and for the fused function that tensor's storage is
reused across steps (:class:`GradBuffer`): a fresh one every step costs one page fault per
4 KiB on the CPU, 80,000 faults and ~0.2 s of kernel time per step at that shape, more than
the products themselves. ``bench/heads.py`` and ``docs/performance.md`` have the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from deepercluster.models import cpu_blas, products
from deepercluster.models.products import Groups, spans

__all__ = ["GradBuffer", "grouped_cross_entropy", "grouped_linear"]


class GradBuffer:
    """Storage for a parameter's gradient, reused from one backward pass to the next.

    ``optimizer.zero_grad(set_to_none=True)`` drops the gradient every step, and the next
    backward pass would allocate a new one. :meth:`take` returns a *new tensor* over the same
    storage instead; autograd then adopts it as ``.grad`` without a copy (it is referenced by
    nobody else), or adds it into an existing ``.grad``. Hooks and ``torch.autograd.grad``
    work as usual. The storage is only reused when nothing else references it any more: a
    gradient someone kept (``g = p.grad``, or the result of ``torch.autograd.grad``) is never
    overwritten, a new storage is made instead.
    """

    def __init__(self) -> None:
        self._storage: torch.UntypedStorage | None = None

    def take(self, like: Tensor) -> Tensor:
        """A contiguous tensor shaped, typed and placed like ``like``, contents undefined."""
        s = self._storage
        if (
            s is None
            or s.device != like.device
            or s.nbytes() != like.numel() * like.element_size()
            or _storage_users(s) != 1
        ):
            fresh = torch.empty_like(like)
            self._storage = fresh.untyped_storage()
            return fresh
        out = torch.empty(0, dtype=like.dtype, device=like.device)
        return out.set_(s, 0, like.shape, like.stride())

    def clear(self) -> None:
        """Forget the storage (e.g. when the parameter moves to another device)."""
        self._storage = None

    # A copied or pickled module starts with an empty buffer: sharing one would let two
    # modules write each other's gradients, and pickling it would save a gradient-sized array.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._storage = None


def _storage_users(storage: torch.UntypedStorage) -> int:
    """How many tensors (and this holder) reference ``storage``; 2 when torch cannot say, so
    that the caller then plays safe and allocates."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return 2 if use_count is None else int(use_count(storage._cdata))


def grouped_linear(x: Tensor, weight: Tensor, bias: Tensor, groups: Groups) -> Tensor:
    """Logits of row groups through their sub-heads.

    Args:
        x: (B, D) rows sorted by group, taken in the weights' dtype (autocast does not apply).
        weight: (S_own, n_sub, D) stacked sub-heads.
        bias: (S_own, n_sub).
        groups: (slot, number of rows) of each group, in row order, summing to B.

    Returns:
        (B, n_sub) logits, row i from its group's sub-head.
    """
    with _weights_dtype(x, weight) as x:
        out: Tensor = _GroupedLinear.apply(x, weight, bias, groups)
    return out


def grouped_cross_entropy(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    groups: Groups,
    grad_buffer: GradBuffer | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of row groups through their sub-heads, fused with the linear layer.

    Equal to ``F.cross_entropy(grouped_linear(x, weight, bias, groups), targets,
    reduction="none")`` (within float rounding), in values and gradients.

    Args:
        x: (B, D) rows sorted by group, taken in the weights' dtype (autocast does not apply).
        weight: (S_own, n_sub, D) stacked sub-heads, in either storage order (the one of
            :class:`~deepercluster.models.HierarchicalHeads`, (S_own, D, n_sub), is faster).
        bias: (S_own, n_sub).
        targets: (B,) int64 class of each row within its sub-head, in [0, n_sub).
        groups: (slot, number of rows) of each group, in row order, summing to B.
        grad_buffer: storage for the weight gradient, reused across steps (see
            :class:`GradBuffer`); None allocates a new one every backward pass.

    Returns:
        losses: (B,) per-row cross-entropy, differentiable.
        correct: (B,) bool, whether the row's argmax is its target (not differentiable).
    """
    with _weights_dtype(x, weight) as x:
        losses, correct = _GroupedCrossEntropy.apply(x, weight, bias, targets, groups, grad_buffer)
    return losses, correct


@contextmanager
def _weights_dtype(x: Tensor, weight: Tensor) -> Iterator[Tensor]:
    """``x`` in the weights' dtype, with autocast off for the block.

    The sub-heads run in their weights' dtype whether or not autocast is on (the training loop
    hands them float32 features): under autocast the products would come out in bf16 and meet
    the float32 buffers and in-place products of the functions below.
    """
    with torch.autocast(x.device.type, enabled=False):
        yield x.to(weight.dtype)


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, groups: Groups) -> Tensor:
        out = x.new_empty((x.shape[0], weight.shape[1]))
        for slot, rows in spans(groups):
            out[rows].copy_(products.logits(x[rows], weight, bias, slot))
        ctx.save_for_backward(x, weight)
        ctx.groups = groups
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        groups: Groups = ctx.groups
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = None
        if need_x:
            grad_x = torch.empty_like(x)
            for slot, rows in spans(groups):
                products.rows_grad(grad_out[rows], weight, slot, grad_x[rows])
        grad_w = (
            products.weight_grad(grad_out, x, groups, torch.empty_like(weight)) if need_w else None
        )
        grad_b = _bias_grad(grad_out, groups, weight.shape[:2]) if need_b else None
        return grad_x, grad_w, grad_b, None


class _GroupedCrossEntropy(torch.autograd.Function):
    """Forward: logits, loss, argmax and the loss's gradients per group; backward: scaling.

    With L_i the loss of row i and p_i its softmax, dL_i/dlogits_i = p_i - onehot(t_i) =: G_i,
    so dL_i/dx_i = G_i W and dL/dW = sum_i g_i G_i^T x_i for upstream g_i. The forward pass
    stores G (B, n_sub), the size of the logits, and G W (B, D); the backward pass only
    multiplies by g. Saved for backward: G, x and G W; nothing of size n_sub x D.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        targets: Tensor,
        groups: Groups,
        grad_buffer: GradBuffer | None,
    ) -> tuple[Tensor, Tensor]:
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_g = need_x or need_w or need_b
        b, n_sub = x.shape[0], weight.shape[1]
        log_p = x.new_empty((b, n_sub))
        grad_logits = x.new_empty((b, n_sub)) if need_g else None
        grad_x = torch.empty_like(x) if need_x else None
        t = targets.unsqueeze(1)

        def on_torch() -> None:
            products.fused_forward(x, weight, bias, t, groups, log_p, grad_logits, grad_x)

        def on_blas() -> None:
            products.blas_fused_forward(x, weight, bias, t, groups, log_p, grad_logits, grad_x)

        _run_fastest("fused forward", x, weight, groups, on_torch, on_blas, bias)
        at_target = log_p.gather(1, t)
        losses = at_target.squeeze(1).neg()
        correct = _is_argmax(log_p, t, at_target)
        ctx.mark_non_differentiable(correct)
        ctx.groups = groups
        ctx.grad_buffer = grad_buffer
        ctx.save_for_backward(x if need_w else None, grad_logits, grad_x, weight)
        return losses, correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_losses: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        x, grad_logits, grad_x, weight = ctx.saved_tensors
        groups: Groups = ctx.groups
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = grad_losses.unsqueeze(1)  # (B, 1)
        out_x = grad_x * g if need_x else None
        out_b = None
        if need_b:
            out_b = _bias_grad(grad_logits, groups, weight.shape[:2], row_weights=grad_losses)
        out_w = None
        if need_w:
            buffer: GradBuffer | None = ctx.grad_buffer
            out_w = torch.empty_like(weight) if buffer is None else buffer.take(weight)
            # dL/dW = G^T (g * x): scaling x (B, D) is cheaper than scaling G (B, n_sub).
            xg = x * g
            _run_fastest(
                "weight gradient",
                xg,
                weight,
                groups,
                lambda: products.weight_grad(grad_logits, xg, groups, out_w),
                lambda: products.blas_weight_grad(grad_logits, xg, groups, out_w),
            )
        return out_x, out_w, out_b, None, None, None


def _run_fastest(
    what: str,
    x: Tensor,
    weight: Tensor,
    groups: Groups,
    on_torch: Callable[[], object],
    on_blas: Callable[[], object],
    bias: Tensor | None = None,
) -> None:
    """Run ``on_torch`` or ``on_blas`` (the same work through torch's BLAS or numpy's
    OpenBLAS, :mod:`~deepercluster.models.products`): torch's where OpenBLAS does not apply,
    else whichever :func:`cpu_blas.fastest` timed faster for this shape on this machine."""
    if not products.blas_applies(x, weight, bias):
        on_torch()
        return
    key = (what, *products.shape_key(x, weight, groups))
    if cpu_blas.fastest(key, {"torch": on_torch, "openblas": on_blas}) == "torch":
        on_torch()
    else:
        on_blas()


def _is_argmax(scores: Tensor, t: Tensor, at_target: Tensor) -> Tensor:
    """(B,) bool: ``scores.argmax(1) == t[:, 0]``, ties resolved as argmax does (first index).

    On the CPU, argmax over (256, 10,000) scores takes ~3.7 ms, a max ~0.4 ms: the target is
    the argmax when its score beats the max of the others, which is found with the target's
    entry masked in place (``scores`` is restored before returning). Only rows where that
    max equals the target's score (ties, e.g. constant logits) need argmax. On other devices
    argmax is cheap, and the tie check would cost a sync.

    Args:
        scores: (B, C) scores, e.g. log-probabilities; modified and restored in place.
        t: (B, 1) int64 targets.
        at_target: (B, 1) ``scores.gather(1, t)``.
    """
    if scores.device.type != "cpu":
        return scores.argmax(1) == t.squeeze(1)
    scores.scatter_(1, t, float("-inf"))
    best_other = scores.amax(1, keepdim=True)
    scores.scatter_(1, t, at_target)
    correct = (at_target > best_other).squeeze(1)
    tied = (at_target == best_other).squeeze(1).nonzero().squeeze(1)
    if tied.numel():
        correct[tied] = scores[tied].argmax(1) == t[tied, 0]
    return correct


def _bias_grad(
    grad_rows: Tensor, groups: Groups, shape: torch.Size, row_weights: Tensor | None = None
) -> Tensor:
    """(S_own, n_sub) bias gradient: each group's rows of (B, n_sub) summed into its slot,
    weighted by ``row_weights`` (B,) if given (one matrix-vector product per group, no
    weighted (B, n_sub) copy)."""
    grad_b = grad_rows.new_zeros(shape)
    for slot, rows in spans(groups):
        if row_weights is None:
            torch.sum(grad_rows[rows], 0, out=grad_b[slot])
        else:
            torch.mv(grad_rows[rows].t(), row_weights[rows], out=grad_b[slot])
    return grad_b
