"""Joining a process group: the errors a launch mistake gets before any collective."""

from __future__ import annotations

import pytest
import torch

from deepercluster import distributed


def test_more_local_ranks_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchrun --nproc_per_node=4 on a one-GPU node: rank 3 must not crash inside CUDA.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=r"nproc_per_node=1.*train.device=cpu"):
        distributed.init_from_env("auto")


def test_cuda_asked_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"train\.device=cpu"):
        distributed.init_from_env("cuda")
