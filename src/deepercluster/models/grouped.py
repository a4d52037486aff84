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
are in the note above :func:`_logits`). The weight gradient goes slot by slot into one
(S_own, n_sub, D) tensor, laid out like the weight (autograd would stack per-group gradients:
a 328 MB copy at k = 40,000, D = 512), and for the fused function that tensor's storage is
reused across steps (:class:`GradBuffer`): a fresh one every step costs one page fault per
4 KiB on the CPU, 80,000 faults and ~0.2 s of kernel time per step at that shape, more than
the products themselves. ``bench/heads.py`` and ``docs/performance.md`` have the figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["GradBuffer", "grouped_cross_entropy", "grouped_linear"]

Groups = list[tuple[int, int]]


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
        for slot, rows in _spans(groups):
            out[rows].copy_(_logits(x[rows], weight, bias, slot))
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
            for slot, rows in _spans(groups):
                _rows_grad(grad_out[rows], weight, slot, grad_x[rows])
        grad_w = _weight_grad(grad_out, x, groups, torch.empty_like(weight)) if need_w else None
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
        # Per group only what needs the sub-head (its products), the row-wise softmax and its
        # one-hot correction (so that G W needs no gather of target rows, which are strided in
        # the heads' storage order); everything else runs once over the batch: at ~16 rows per
        # group, the per-call cost of an operation, not its arithmetic, is what a per-group
        # loop would pay.
        log_p = x.new_empty((b, n_sub))
        grad_logits = x.new_empty((b, n_sub)) if need_g else None
        grad_x = torch.empty_like(x) if need_x else None
        t = targets.unsqueeze(1)
        minus_one = x.new_full(t.shape, -1.0)
        for slot, rows in _spans(groups):
            z = log_p[rows]
            torch.log_softmax(_logits(x[rows], weight, bias, slot), 1, out=z)
            if grad_logits is not None:
                g = torch.exp(z, out=grad_logits[rows])  # softmax
                g.scatter_add_(1, t[rows], minus_one[rows])  # p - onehot
                if grad_x is not None:
                    # (p - onehot) W now, while this sub-head was just read.
                    _rows_grad(g, weight, slot, grad_x[rows])
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
            _weight_grad(grad_logits, x * g, groups, out_w)
        return out_x, out_w, out_b, None, None, None


def _stored_transposed(weight: Tensor) -> bool:
    """Whether the (S_own, n_sub, D) ``weight`` is stored as (S_own, D, n_sub), i.e. each
    sub-head's transpose is contiguous (how :class:`~deepercluster.models.HierarchicalHeads`
    stores it)."""
    return weight.stride(-2) == 1 and weight.shape[-1] > 1


# Slice width, row bound and sub-head size of the sliced logits product (:func:`_logits`).
_K_SLICE = 32
_FEW_ROWS = 24
# Slices only pay when a sub-head is too large to stay in cache: 16 groups of 8-16 rows,
# D = 512, 2 threads, one product / sliced: 0.39-0.46x at 250-1,000 classes (0.5-2 MB),
# 0.76-0.80x at 2,500 (4.9 MB), 1.12-1.18x at 5,000 (9.8 MB), 1.46-1.56x at 10,000 (20 MB).
_SLICE_MIN_BYTES = 8 << 20


def _slices_pay(x: Tensor, w: Tensor) -> bool:
    """Whether rows ``x`` (rows, D) should take their logits through sub-head ``w`` (D, n_sub)
    in slices of ``_K_SLICE`` features: few rows, on the CPU, and a large sub-head."""
    rows, dim = x.shape
    return (
        x.device.type == "cpu"
        and rows < _FEW_ROWS
        and dim > _K_SLICE
        and w.numel() * w.element_size() >= _SLICE_MIN_BYTES
    )


# The three products of a training step, per sub-head, are all (n_sub x D) against ~16 rows at
# B = 256, far below the arithmetic peak, and MKL's speed then depends on which operand is
# streamed and how it is laid out. Measured on 16 sub-heads of 10,000 x 512, 16 rows each,
# 2 threads (ms): logits 36-43 stored (n_sub, D) as W x^T vs 57 stored (D, n_sub); rows'
# gradient G W 55-57 vs 22; weight gradient 31-39 vs 25-31. Stored (D, n_sub) the step is
# ~20% faster, so the heads keep that order, and each product below takes the orientation
# that is fastest for the order it is given (any order gives the same values).
def _logits(x: Tensor, weight: Tensor, bias: Tensor, slot: int) -> Tensor:
    """(rows, n_sub) logits of rows ``x`` (rows, D) through sub-head ``slot``."""
    if not _stored_transposed(weight):
        return torch.addmm(bias[slot].unsqueeze(1), weight[slot], x.t()).t()
    w = weight[slot].t()  # (D, n_sub), contiguous
    if not _slices_pay(x, w):
        return torch.addmm(bias[slot], x, w)
    # Few rows on the CPU, a large sub-head: the product in slices of _K_SLICE features (rows
    # of w), accumulated in place. One (rows, D) x (D, n_sub) product seems to pack all of w
    # (20 MB at 512 x 10,000) before using it, where a 32-feature slice (1.3 MB) stays in
    # cache. Measured
    # (bench/heads.py shapes, MKL, 2 threads): the logits of 16 sub-heads of 10,000 x 512 at
    # 12-20 rows each took 38-53 ms sliced against 48-62 ms in one product (1.15-1.3x,
    # interleaved); from ~24 rows up one product is as fast or faster, and slices of 8-16 or
    # 64 features are slower.
    out = torch.addmm(bias[slot], x[:, :_K_SLICE], w[:_K_SLICE])
    for k in range(_K_SLICE, x.shape[1], _K_SLICE):
        out.addmm_(x[:, k : k + _K_SLICE], w[k : k + _K_SLICE])
    return out


def _rows_grad(grad_rows: Tensor, weight: Tensor, slot: int, out: Tensor) -> None:
    """``out`` (rows, D) = ``grad_rows`` (rows, n_sub) @ sub-head ``slot`` (n_sub, D)."""
    if _stored_transposed(weight):
        # W^T G^T with the contiguous (D, n_sub) transpose streamed, then a (D, rows) copy.
        out.copy_(torch.mm(weight[slot].t(), grad_rows.t()).t())
    else:
        torch.mm(grad_rows, weight[slot], out=out)


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


def _spans(groups: Groups) -> Iterator[tuple[int, slice]]:
    """(slot, rows) of each group: its sub-head's slot and its slice of the sorted rows."""
    start = 0
    for slot, n in groups:
        yield slot, slice(start, start + n)
        start += n


def _weight_grad(grad_rows: Tensor, x: Tensor, groups: Groups, out: Tensor) -> Tensor:
    """(S_own, n_sub, D) weight gradient into ``out``: slot s gets grad_rows_s^T x_s.

    ``grad_rows`` (B, n_sub) and ``x`` (B, D) are sorted by group; ``out`` may be stored in
    either order (it is laid out like the weight). Slots of sub-heads that had no rows get 0
    (their gradient is 0, not undefined).
    """
    transposed = _stored_transposed(out)
    for slot, rows in _spans(groups):
        if transposed:  # written as its contiguous (D, n_sub) transpose
            torch.mm(x[rows].t(), grad_rows[rows], out=out[slot].t())
        else:
            torch.mm(grad_rows[rows].t(), x[rows], out=out[slot])
    present = {slot for slot, _ in groups}
    for slot in range(out.shape[0]):
        if slot not in present:
            out[slot].zero_()
    return out


def _bias_grad(
    grad_rows: Tensor, groups: Groups, shape: torch.Size, row_weights: Tensor | None = None
) -> Tensor:
    """(S_own, n_sub) bias gradient: each group's rows of (B, n_sub) summed into its slot,
    weighted by ``row_weights`` (B,) if given (one matrix-vector product per group, no
    weighted (B, n_sub) copy)."""
    grad_b = grad_rows.new_zeros(shape)
    for slot, rows in _spans(groups):
        if row_weights is None:
            torch.sum(grad_rows[rows], 0, out=grad_b[slot])
        else:
            torch.mv(grad_rows[rows].t(), row_weights[rows], out=grad_b[slot])
    return grad_b
