"""Everything that talks to ``torch.distributed``: the only module that imports it.

A run started by ``torchrun`` joins a process group: NCCL on CUDA, gloo on CPU. A plain process
joins nothing, and every collective below is then the identity, so the algorithms run unchanged
on a laptop (lightly's habit: ``if world_size > 1: all_reduce(...)``).

Collectives take an optional ``group`` (None = all ranks) and accept CPU tensors or numpy
arrays whatever the backend: NCCL needs CUDA tensors, so data is moved to the collective device
and back. Ranks never exchange data through files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

ProcessGroup = Any  # torch.distributed.ProcessGroup; Any keeps mypy quiet across versions


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank in [0, world_size).
        world_size: number of processes (1 without torchrun).
        local_rank: rank on this machine (selects the GPU).
        local_world_size: processes on this machine (they share its CPU cores).
        device: the device this process computes on.
        backend: ``nccl``, ``gloo``, or None for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and metric files."""
        return self.rank == 0


def init_from_env(device: str = "auto", *, timeout_s: float = 600.0) -> DistEnv:
    """Join the process group described by torchrun's variables, or run alone.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        timeout_s: collective timeout. A rank that dies makes the others fail after at most
            this long instead of hanging forever (gloo and NCCL both honour it).

    Returns:
        The :class:`DistEnv` of this process.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is visible; use train.device=cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return DistEnv(device=torch.device("cuda" if use_cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise ValueError(
                f"local rank {local_rank} has no GPU: this node sees {n_gpus} CUDA device(s); "
                f"launch one process per GPU (torchrun --nproc_per_node={n_gpus}), or train on "
                "the CPU with --set train.device=cpu"
            )
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return DistEnv(rank, world_size, local_rank, local_world, dev, backend)


def current_env(device: torch.device) -> DistEnv:
    """The :class:`DistEnv` of a process group the caller already joined, else single-process
    (so ``deepercluster.train(cfg)`` in a script under torchrun takes part in the group)."""
    if not is_distributed():
        return DistEnv(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size())))
    backend = str(dist.get_backend())
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, local_world, device, backend)


def shutdown() -> None:
    """Leave the process group (no-op when alone)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def rank(group: ProcessGroup | None = None) -> int:
    """Rank in ``group`` (0 when not distributed)."""
    return dist.get_rank(group) if is_distributed() else 0


def world_size(group: ProcessGroup | None = None) -> int:
    """Size of ``group`` (1 when not distributed)."""
    return dist.get_world_size(group) if is_distributed() else 1


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """Sum ``tensor`` over the ranks of ``group``; returns a new tensor on the input's device."""
    if world_size(group) == 1:
        return tensor
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(work, group=group)
    return work.to(tensor.device)


def all_reduce_sum_np(array: np.ndarray, group: ProcessGroup | None = None) -> np.ndarray:
    """:func:`all_reduce_sum` for numpy arrays."""
    if world_size(group) == 1:
        return array
    return all_reduce_sum(torch.from_numpy(np.ascontiguousarray(array)), group).numpy()


def all_gather_cat(tensor: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """Every rank's (n_r, ...) ``tensor`` concatenated in rank order: (sum_r n_r, ...) on the
    input's device, identical on every rank; n_r may differ, the trailing shape may not."""
    n = world_size(group)
    if n == 1:
        return tensor
    dev = _collective_device()
    local = tensor.detach().to(dev).contiguous()
    counts = [int(c) for c in all_gather_object(local.shape[0], group)]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(tensor.device)


def all_gather_cat_np(array: np.ndarray, group: ProcessGroup | None = None) -> np.ndarray:
    """:func:`all_gather_cat` for numpy arrays."""
    if world_size(group) == 1:
        return array
    return all_gather_cat(torch.from_numpy(np.ascontiguousarray(array)), group).numpy()


def broadcast_object(obj: Any, src: int = 0, group: ProcessGroup | None = None) -> Any:
    """Rank ``src``'s ``obj`` on every rank (small picklable objects: configs, states)."""
    if world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def barrier(group: ProcessGroup | None = None) -> None:
    if world_size(group) > 1:
        dist.barrier(group=group)


def all_ranks_ok(ok: bool, group: ProcessGroup | None = None) -> bool:
    """True when ``ok`` is True on every rank: lets all ranks raise together, not hang."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    return int(all_reduce_sum(flag, group)) == 0


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums over ranks: if y = sum_r x_r feeds every
    rank's loss L_q, then dL/dx_r = sum_q dL_q/dy."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: ProcessGroup | None) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        out = grad.contiguous().clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def all_reduce_sum_autograd(tensor: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """Differentiable sum over ranks, for synchronised batch norm (whose statistics depend
    on every rank's inputs). Needs a tensor on the collective device (CPU for gloo)."""
    if world_size(group) == 1:
        return tensor
    out: Tensor = _AllReduceSum.apply(tensor, group)
    return out


def new_group(ranks: list[int]) -> ProcessGroup | None:
    """A sub-group of ranks; every rank must call this for every group, in the same order."""
    if not is_distributed():
        return None
    return dist.new_group(ranks=ranks)


def all_gather_object(obj: Any, group: ProcessGroup | None = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (small picklable objects)."""
    n = world_size(group)
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj, group=group)
    return out


def all_reduce_grads(params: list[torch.nn.Parameter], group: ProcessGroup | None = None) -> None:
    """Sum the gradients of ``params`` over the ranks, in one flat buffer.

    Parameters without a gradient on this rank (e.g. nothing in its batch reached them)
    contribute zeros, so every rank takes part in the same collective and none waits forever.
    The sum (not the mean) is right because each rank's loss is already divided by the global
    number of samples of the step.
    """
    if world_size(group) == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    # `flat` is a fresh buffer: reduce it in place (this runs every step) unless it must move
    # to the collective device first.
    if flat.device == _collective_device():
        dist.all_reduce(flat, group=group)
    else:
        flat = all_reduce_sum(flat, group)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view(p.shape).to(p.dtype)
        offset += p.numel()


def shard_range(n: int, group: ProcessGroup | None = None) -> tuple[int, int]:
    """This rank's contiguous slice [lo, hi) of n items; concatenating the slices in rank
    order gives back 0..n-1, so gathered results are in collection order."""
    r, w = rank(group), world_size(group)
    return n * r // w, n * (r + 1) // w


def is_communication_error(exc: BaseException) -> bool:
    """True for the errors a collective raises when another rank died or timed out."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError)
        and any(s in text for s in ("connection", "timed out", "timeout", "gloo", "nccl"))
    )


def make_groups(
    training_ranks: list[list[int]], clustering_ranks: list[list[int]]
) -> tuple[list[ProcessGroup | None], list[ProcessGroup | None]]:
    """The training groups, then the clustering groups, from the global ranks of each (in
    group order: ``GroupPlan.training_groups()``, ``clustering_groups()``); a collective."""
    return [new_group(r) for r in training_ranks], [new_group(r) for r in clustering_ranks]


def all_to_all_np(array: np.ndarray, send_counts: list[int], recv_counts: list[int]) -> np.ndarray:
    """Personalised exchange over all ranks: rows [sum(send[:d]), sum(send[:d+1])) go to rank d.

    Args:
        array: (sum(send_counts), ...) rows grouped by destination rank, in rank order.
        send_counts: rows for each destination rank.
        recv_counts: rows coming from each source rank (every rank must know them).

    Returns:
        (sum(recv_counts), ...) received rows, grouped by source rank in rank order.
    """
    if world_size() == 1:
        return array
    dev = _collective_device()
    src = torch.from_numpy(np.ascontiguousarray(array)).to(dev)
    out = src.new_empty((sum(recv_counts), *array.shape[1:]))
    dist.all_to_all_single(out, src, output_split_sizes=recv_counts, input_split_sizes=send_counts)
    result: np.ndarray = out.cpu().numpy()
    return result


# Large tensors travel in pieces of this many bytes: with NCCL every piece is staged in GPU
# memory, so a 20 GB head or a 96 M-image label array never needs a 20 GB GPU buffer.
_CHUNK_BYTES = 256 * 2**20


def broadcast_tensor(tensor: Tensor, src: int = 0, group: ProcessGroup | None = None) -> None:
    """Overwrite ``tensor`` (a CPU tensor of the same shape and dtype on every rank) with rank
    ``src``'s values, in chunks of at most 256 MiB."""
    if world_size(group) == 1:
        return
    flat, dev = _bytes_view(tensor).view(-1), _collective_device()
    for start, step in _chunks(flat):
        piece = flat[start : start + step].to(dev, copy=True)
        dist.broadcast(piece, src=src, group=group)
        flat[start : start + step] = piece.to(flat.device)


def _bytes_view(t: Tensor) -> Tensor:
    # Not every backend reduces or sends bool: move those as the bytes they are.
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _chunks(flat: Tensor) -> list[tuple[int, int]]:
    """(start, length) of the pieces of at most ``_CHUNK_BYTES`` a 1-D tensor travels in."""
    step = max(1, _CHUNK_BYTES // max(flat.element_size(), 1))
    return [(start, step) for start in range(0, flat.numel(), step)]


def send_tensor(tensor: Tensor, dst: int) -> None:
    """Point-to-point: send ``tensor`` to global rank ``dst`` (which calls :func:`recv_tensor`)."""
    flat, dev = _bytes_view(tensor.detach().contiguous()).view(-1), _collective_device()
    for start, step in _chunks(flat):
        dist.send(flat[start : start + step].to(dev), dst=dst)


def recv_tensor(out: Tensor, src: int) -> None:
    """Point-to-point: fill the contiguous CPU tensor ``out`` with what rank ``src`` sends."""
    flat, dev = _bytes_view(out).view(-1), _collective_device()
    for start, step in _chunks(flat):
        piece = torch.empty(min(step, flat.numel() - start), dtype=flat.dtype, device=dev)
        dist.recv(piece, src=src)
        flat[start : start + step] = piece.to(flat.device)


def broadcast_tree(tree: Any, src: int = 0, min_bytes: int = 2**20) -> Any:
    """Rank ``src``'s nested dict/list ``tree`` on every rank (other ranks' ``tree`` is ignored).

    Tensors and arrays of at least ``min_bytes`` travel apart, chunked (:func:`broadcast_tensor`),
    so a checkpoint's weights and per-image labels never go through one huge pickle.
    """
    if world_size() == 1:
        return tree
    big: list[Tensor] = []

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(strip(v) for v in node)
        is_array = isinstance(node, np.ndarray)
        if (is_array or isinstance(node, Tensor)) and node.nbytes >= min_bytes:
            t = torch.from_numpy(np.ascontiguousarray(node)) if is_array else node.cpu()
            big.append(t.contiguous())
            return _Placeholder(len(big) - 1, tuple(t.shape), t.dtype, is_array)
        return node

    skeleton = broadcast_object(strip(tree) if rank() == src else None, src=src)

    def fill(node: Any) -> Any:
        # Every rank walks the same skeleton in the same order: the broadcasts line up.
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(fill(v) for v in node)
        if isinstance(node, _Placeholder):
            t = big[node.index] if rank() == src else torch.empty(node.shape, dtype=node.dtype)
            broadcast_tensor(t, src=src)
            return t.numpy() if node.is_array else t
        return node

    return fill(skeleton)


@dataclass(frozen=True)
class _Placeholder:
    """Where :func:`broadcast_tree` cut a big tensor out of the pickled skeleton."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    is_array: bool
