"""The public API: sorted, complete ``__all__`` (httpx's habit), a working ``train`` alias, and
an import without side effects on the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import deepercluster


def test_all_is_sorted_and_exported() -> None:
    assert deepercluster.__all__ == sorted(
        deepercluster.__all__, key=lambda s: (not s.isupper(), s)
    )
    for name in deepercluster.__all__:
        assert hasattr(deepercluster, name), name


def test_public_names_are_all_listed() -> None:
    public = {
        n for n in vars(deepercluster)
        if not n.startswith("_") and not isinstance(getattr(deepercluster, n), type(deepercluster))
    }  # fmt: skip
    assert public <= set(deepercluster.__all__)


def test_train_is_fit() -> None:
    assert deepercluster.train is deepercluster.fit


# Prints the environment variables that importing ``sys.argv[1:]`` adds, removes or changes.
_ENV_CHANGES = """
import importlib, json, os, sys
before = dict(os.environ)
for name in sys.argv[1:]:
    importlib.import_module(name)
after = dict(os.environ)
print(json.dumps(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))))
"""


def _env_changes(*modules: str) -> set[str]:
    """Variables that importing ``modules`` changes in a fresh interpreter started with only
    what it needs: in this one the package is imported already, and anything it wrote into
    os.environ would be inherited."""
    keep = ("PATH", "PYTHONPATH", "HOME", "TMPDIR", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    out = subprocess.run(
        [sys.executable, "-c", _ENV_CHANGES, *modules],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return set(json.loads(out.stdout))


def test_import_leaves_the_environment_alone() -> None:
    # A library must not tune the process it is imported into (e.g. torch's allocator
    # switches, which torch reads from the environment at its first allocation). torchvision
    # sets TORCHINDUCTOR_CACHE_DIR at import (through torch._dynamo): that one is theirs.
    # scikit-learn sets KMP_* switches at import, so the package imports it only where used.
    ours = _env_changes("deepercluster")
    theirs = _env_changes("numpy", "torch", "torchvision", "PIL")
    assert ours <= theirs, f"import deepercluster changed {sorted(ours - theirs)}"
