"""Shared fixtures: seeds and markers."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" in item.keywords and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
