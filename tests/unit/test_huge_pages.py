"""allocator.request_huge_pages: ``import deepercluster`` asks torch's CPU allocator for
transparent huge pages, unless told otherwise or too late.

Torch reads its switch once per process, so each case runs in a fresh interpreter, with the
switch removed from the environment that pytest passes on, and looks at the kernel's flags of
the mapping that holds a 64 MiB tensor (``hg``: advised for huge pages). The flag says what
torch asked for whether or not the kernel had huge pages free at that moment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.conftest import run_fresh_python

from deepercluster import allocator
from deepercluster.allocator import HUGE_PAGES_ENV, kernel_thp_mode

with_kernel_huge_pages = pytest.mark.skipif(
    kernel_thp_mode() not in ("always", "madvise"),
    reason="the kernel offers no transparent huge pages here",
)

# Imports in the order given, allocates a tensor (every page written) and prints what
# request_huge_pages decided, the switch as torch saw it and the kernel flags of the tensor's
# mapping.
_PROBE = """
import json, os, sys
for name in sys.argv[1].split(","):
    __import__(name)
import torch
from deepercluster.allocator import request_huge_pages
block = torch.ones(16 << 20)
address, flags = block.data_ptr(), None
with open("/proc/self/smaps") as smaps:
    inside = False
    for line in smaps:
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            low, high = (int(v, 16) for v in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            flags = line.split()[1:]
decision = request_huge_pages()
print(json.dumps({"on": decision.on, "reason": decision.reason,
                  "env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "flags": flags}))
"""


def _probe(order: str, switch: str | None = None) -> dict[str, object]:
    return run_fresh_python(_PROBE, order, huge_pages=switch)


@with_kernel_huge_pages
def test_importing_deepercluster_first_asks_torch_for_huge_pages() -> None:
    seen = _probe("deepercluster,torch")
    assert seen["on"] is True and seen["env"] == "1"
    assert "hg" in seen["flags"]  # type: ignore[operator]


@with_kernel_huge_pages
def test_an_explicit_switch_in_the_environment_is_kept() -> None:
    seen = _probe("deepercluster,torch", switch="0")
    assert seen["on"] is False and seen["env"] == "0"
    assert f"{HUGE_PAGES_ENV}=0" in seen["reason"]  # type: ignore[operator]
    assert "hg" not in seen["flags"]  # type: ignore[operator]
    assert _probe("deepercluster,torch", switch="1")["on"] is True


@with_kernel_huge_pages
def test_torch_imported_first_is_too_late_and_says_how_to_fix_it() -> None:
    seen = _probe("torch,deepercluster")
    assert seen["on"] is False and seen["env"] is None  # nothing set that torch would ignore
    assert "imported before deepercluster" in seen["reason"]  # type: ignore[operator]
    assert f"{HUGE_PAGES_ENV}=1" in seen["reason"]  # type: ignore[operator]
    assert "hg" not in seen["flags"]  # type: ignore[operator]


def test_kernel_mode_is_the_bracketed_choice(tmp_path: Path) -> None:
    mode_file = tmp_path / "enabled"
    for text, mode in (
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
        ("garbled\n", None),
    ):
        mode_file.write_text(text)
        assert kernel_thp_mode(mode_file) == mode
    assert kernel_thp_mode(tmp_path / "missing") is None


@pytest.mark.parametrize("mode", ["never", None])
def test_no_kernel_huge_pages_sets_nothing(
    mode: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    decision = allocator._decide_huge_pages(mode)
    assert not decision.on and "no transparent huge pages" in decision.reason
    assert HUGE_PAGES_ENV not in os.environ
