"""The CPU defaults of the launched process: OpenMP's wait policy set before torch loads,
DataLoader workers capped on a small machine, the user's choices kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deepercluster.cli.cpu import cpu_defaults, workers_chosen


def test_two_cores_leave_no_core_for_workers() -> None:
    cpu = cpu_defaults(cores=2, threads=0, workers=2, workers_set=False)
    assert (cpu.threads, cpu.workers, cpu.capped_from) == (2, 0, 2)
    assert "capped from 2" in cpu.describe("PASSIVE")
    assert "--set data.workers=N" in cpu.describe("PASSIVE")


def test_fewer_threads_leave_cores_to_workers() -> None:
    cpu = cpu_defaults(cores=4, threads=2, workers=4, workers_set=False)
    assert (cpu.threads, cpu.workers, cpu.capped_from) == (2, 2, 4)


def test_omp_num_threads_is_the_default_thread_count() -> None:
    cpu = cpu_defaults(cores=2, threads=0, workers=2, workers_set=False, omp_threads=1)
    assert (cpu.threads, cpu.workers) == (1, 1)
    assert (
        cpu_defaults(cores=2, threads=2, workers=0, workers_set=False, omp_threads=1).threads == 2
    )


def test_users_workers_and_large_machines_are_kept() -> None:
    assert cpu_defaults(cores=2, threads=0, workers=2, workers_set=True).workers == 2
    big = cpu_defaults(cores=32, threads=0, workers=2, workers_set=False)
    assert (big.threads, big.workers, big.capped_from) == (32, 2, None)


def test_workers_chosen_by_set_or_config_file(tmp_path: Path) -> None:
    assert workers_chosen(["data.workers=3"], None)
    assert not workers_chosen(["train.threads=1"], None)
    toml = tmp_path / "c.toml"
    toml.write_text("[data]\nworkers = 1\n")
    assert workers_chosen([], str(toml))
    toml.write_text("[train]\nepochs = 1\n")
    assert not workers_chosen([], str(toml))


_PROBE = """
import os, sys
import deepercluster, deepercluster.cli
from deepercluster.cli.cpu import set_wait_policy
before = "torch" in sys.modules
print(before, set_wait_policy(), os.environ.get("OMP_WAIT_POLICY"))
"""


def _probe(**extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | extra
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.split()


def test_the_cli_sets_passive_before_torch_loads() -> None:
    assert _probe() == ["False", "PASSIVE", "PASSIVE"]


def test_the_users_wait_policy_is_kept() -> None:
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == ["False", "ACTIVE", "ACTIVE"]
