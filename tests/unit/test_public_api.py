"""The public API: sorted, complete ``__all__`` (httpx's habit) and a working ``train`` alias."""

from __future__ import annotations

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
