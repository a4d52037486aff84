"""The sub-heads' per-group work, on torch's BLAS or numpy's OpenBLAS: the three products and
the fused cross-entropy's forward pass.

A batch's rows arrive sorted by super-class and ``groups`` lists ``(slot, rows)`` for each
group in row order: group j's rows go through sub-head ``weight[slot]`` only. A training step
needs three products per group: the logits x W^T, the rows' gradient G W and the weight's
gradient G^T x, with x (rows, D), W (n_sub, D) and G (rows, n_sub).

At B = 256 with 16 sub-heads of 10,000 x 512 each group has ~16 rows; such products run far
below the arithmetic peak, and how far depends on the BLAS, the operands' layout and the CPU.
Two implementations are kept: torch's (MKL on x86; per group, with the tuning of the notes
below, measured on an Intel Xeon; this module) and numpy's OpenBLAS, one sub-head per thread
(:mod:`~deepercluster.models.cpu_blas`; on an AMD EPYC it took the logits of 16 sub-heads in
28-40 ms where MKL took 50-82), for the fused loss' forward pass (:func:`fused_forward`,
:func:`blas_fused_forward`) and its weight gradient (:func:`weight_grad`,
:func:`blas_weight_grad`). The loss (:mod:`~deepercluster.models.grouped`) times both ways
on its first step for each shape and keeps the faster; :func:`blas_applies` says when the
choice is offered at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from deepercluster.models import cpu_blas
from deepercluster.models.cpu_blas import ndarray

__all__ = [
    "Groups",
    "blas_applies",
    "blas_fused_forward",
    "blas_weight_grad",
    "fused_forward",
    "logits",
    "rows_grad",
    "shape_key",
    "spans",
    "stored_transposed",
    "weight_grad",
    "zero_absent",
]

Groups = list[tuple[int, int]]


def stored_transposed(weight: Tensor) -> bool:
    """Whether the (S_own, n_sub, D) ``weight`` is stored as (S_own, D, n_sub), i.e. each
    sub-head's transpose is contiguous (how :class:`~deepercluster.models.HierarchicalHeads`
    stores it)."""
    return weight.stride(-2) == 1 and weight.shape[-1] > 1


# Slice width, row bound and sub-head size of the sliced logits product (:func:`logits`).
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
def logits(x: Tensor, weight: Tensor, bias: Tensor, slot: int) -> Tensor:
    """(rows, n_sub) logits of rows ``x`` (rows, D) through sub-head ``slot``."""
    if not stored_transposed(weight):
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


def rows_grad(grad_rows: Tensor, weight: Tensor, slot: int, out: Tensor) -> None:
    """``out`` (rows, D) = ``grad_rows`` (rows, n_sub) @ sub-head ``slot`` (n_sub, D)."""
    if stored_transposed(weight):
        # W^T G^T with the contiguous (D, n_sub) transpose streamed, then a (D, rows) copy.
        out.copy_(torch.mm(weight[slot].t(), grad_rows.t()).t())
    else:
        torch.mm(grad_rows, weight[slot], out=out)


def spans(groups: Groups) -> Iterator[tuple[int, slice]]:
    """(slot, rows) of each group: its sub-head's slot and its slice of the sorted rows."""
    start = 0
    for slot, n in groups:
        yield slot, slice(start, start + n)
        start += n


def weight_grad(grad_rows: Tensor, x: Tensor, groups: Groups, out: Tensor) -> Tensor:
    """(S_own, n_sub, D) weight gradient into ``out``: slot s gets grad_rows_s^T x_s.

    ``grad_rows`` (B, n_sub) and ``x`` (B, D) are sorted by group; ``out`` may be stored in
    either order (it is laid out like the weight). Slots of sub-heads that had no rows get 0
    (their gradient is 0, not undefined).
    """
    transposed = stored_transposed(out)
    for slot, rows in spans(groups):
        if transposed:  # written as its contiguous (D, n_sub) transpose
            torch.mm(x[rows].t(), grad_rows[rows], out=out[slot].t())
        else:
            torch.mm(grad_rows[rows].t(), x[rows], out=out[slot])
    return zero_absent(out, groups)


def zero_absent(out: Tensor, groups: Groups) -> Tensor:
    """Zero the slots of ``out`` (S_own, ...) whose sub-heads had no rows: their gradient is
    0, not undefined."""
    present = {slot for slot, _ in groups}
    for slot in range(out.shape[0]):
        if slot not in present:
            out[slot].zero_()
    return out


def fused_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    t: Tensor,
    groups: Groups,
    log_p: Tensor,
    grad_logits: Tensor | None,
    grad_x: Tensor | None,
) -> None:
    """The fused cross-entropy's forward pass on torch's BLAS, group after group (what
    :func:`~deepercluster.models.grouped.grouped_cross_entropy` computes forward).

    Per group only what needs the sub-head (its products), the row-wise softmax and its
    one-hot correction (so that G W needs no gather of target rows, which are strided in the
    heads' storage order); everything else runs once over the batch: at ~16 rows per group,
    the per-call cost of an operation, not its arithmetic, is what a per-group loop would pay.

    Args:
        x: (B, D) rows sorted by group; t: (B, 1) targets.
        log_p: (B, n_sub) output, the log-softmax of the logits.
        grad_logits: (B, n_sub) output, p - onehot(t), or None when no gradient is needed.
        grad_x: (B, D) output, (p - onehot(t)) W, or None.
    """
    minus_one = x.new_full(t.shape, -1.0)
    for slot, rows in spans(groups):
        z = log_p[rows]
        torch.log_softmax(logits(x[rows], weight, bias, slot), 1, out=z)
        if grad_logits is not None:
            g = torch.exp(z, out=grad_logits[rows])  # softmax
            g.scatter_add_(1, t[rows], minus_one[rows])  # p - onehot
            if grad_x is not None:
                # (p - onehot) W now, while this sub-head was just read.
                rows_grad(g, weight, slot, grad_x[rows])


def blas_fused_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    t: Tensor,
    groups: Groups,
    log_p: Tensor,
    grad_logits: Tensor | None,
    grad_x: Tensor | None,
) -> None:
    """The fused forward pass on numpy's OpenBLAS, one group per thread: each task takes its
    group's logits, log-softmax, p - onehot and (p - onehot) W (numpy, one thread), the last
    while its sub-head was just read. Arguments as :func:`fused_forward`.

    Against three phases over all groups (the logits, the softmax once over the batch in
    torch, then G W): 83 vs 87 ms for 16 sub-heads of 10,000 x 512, 16 rows each, 2 threads
    (medians of 15; fastest 70 vs 79 ms), the heads' forward + backward 1.06x faster.
    """
    xs, ws, bs, ts = ndarray(x), ndarray(weight), ndarray(bias), ndarray(t)[:, 0]
    lps = ndarray(log_p)
    gls = None if grad_logits is None else ndarray(grad_logits)
    gxs = None if grad_x is None else ndarray(grad_x)

    def group(job: tuple[int, slice]) -> None:
        slot, rows = job
        z = lps[rows]  # logits, then log-softmax in place
        np.matmul(xs[rows], ws[slot].T, out=z)  # ws[slot].T: (D, n_sub), contiguous here
        z += bs[slot]
        z -= z.max(axis=1, keepdims=True)
        p = np.empty_like(z) if gls is None else gls[rows]
        np.exp(z, out=p)
        total = p.sum(axis=1, keepdims=True)
        z -= np.log(total)
        if gls is None:
            return
        p /= total  # softmax
        p[np.arange(p.shape[0]), ts[rows]] -= 1.0  # p - onehot
        if gxs is not None:
            np.matmul(p, ws[slot], out=gxs[rows])

    cpu_blas.each(group, spans(groups))


# Numpy's OpenBLAS is only offered for sub-heads too large to stay in cache, as the sliced
# logits are (below that the products are cheap, and torch's path keeps runs reproducible
# from one process to the next: the timing choice may differ between processes).
_BLAS_MIN_BYTES = 8 << 20


def blas_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether numpy's OpenBLAS may run the products of rows ``x`` (B, D) through ``weight``
    (S_own, n_sub, D) and ``bias`` (S_own, n_sub): CPU tensors of one BLAS dtype (numpy would
    cast a mismatch silently where torch refuses it), contiguous rows, the heads' storage
    order (each sub-head's (D, n_sub) transpose contiguous), large sub-heads, and an OpenBLAS
    whose threads :func:`cpu_blas.each` can limit."""
    if bias is not None and (bias.device.type != "cpu" or bias.dtype != x.dtype):
        return False
    return (
        x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and stored_transposed(weight)
        and weight[0].numel() * weight.element_size() >= _BLAS_MIN_BYTES
        and cpu_blas.available()
    )


def shape_key(x: Tensor, weight: Tensor, groups: Groups) -> tuple[object, ...]:
    """What the speed of a step's products depends on: the sub-head's shape and dtype, and the
    rows per group (to the power of two)."""
    rows = x.shape[0] // max(1, len(groups))
    return (tuple(weight.shape[1:]), str(weight.dtype), rows.bit_length())


def blas_weight_grad(grad_rows: Tensor, x: Tensor, groups: Groups, out: Tensor) -> Tensor:
    """As :func:`weight_grad` (``out`` laid out like the heads' weight), numpy's OpenBLAS,
    one group per thread."""
    gs, xs, outs = ndarray(grad_rows), ndarray(x), ndarray(out)

    def group(job: tuple[int, slice]) -> None:
        slot, rows = job
        np.matmul(xs[rows].T, gs[rows], out=outs[slot].T)  # written as its (D, n_sub)

    cpu_blas.each(group, spans(groups))
    return zero_absent(out, groups)
