"""The methods of a comparison and the run configuration of each (method, seed).

A method is a preset (``random``: the network at its initialisation; ``rotnet``,
``deepcluster``, ``deepercluster`` and any other name of :data:`deepercluster.config.PRESETS`)
or a named variant from a TOML file::

    methods = ["random", "rotnet", "dc-m4"]   # optional: the default --methods

    [variant.dc-m4]
    preset = "deepercluster"
    set = ["cluster.super_clusters=4"]

    [variant.deepcluster]          # a preset fitted to the data's scale keeps its name
    preset = "deepcluster"
    set = ["cluster.k=100"]

A run's configuration is resolved as: defaults < the shared base config (``--config``) < the
method's preset < the variant's ``set`` < the shared ``--set`` < the seed, data and run folder
that the comparison itself fixes. The budget (images, epochs, batch, seed) is the same for
every method, so a variant may not set it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepercluster.config import PRESETS, RunConfig, load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "BUDGET_SETTINGS",
    "RANDOM",
    "Method",
    "check_shared",
    "read_base_config",
    "read_variants",
    "resolve_methods",
    "run_config",
    "setting_value",
]

RANDOM = "random"
"""The method that trains nothing: the network as its seed initialises it."""

BUDGET_SETTINGS = ("train.epochs", "train.batch_size", "train.epoch_size", "train.seed")
"""Settings every method shares; a variant that changed them would not be comparable."""

_FIXED = ("train.seed", "data.path", "out")
"""Settings the comparison sets itself (seeds, --train-data, --out)."""


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: the row's name (a preset's or a variant's).
        preset: ``"random"`` or a name of :data:`PRESETS`.
        sets: the variant's ``section.key=value`` settings, applied after the preset.
    """

    name: str
    preset: str
    sets: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        """False for the random network, which is only initialised."""
        return self.preset != RANDOM


def _presets() -> list[str]:
    return [RANDOM, *PRESETS]


def _keys(settings: Sequence[str]) -> list[str]:
    return [item.partition("=")[0].strip() for item in settings]


def read_variants(path: str | Path) -> tuple[dict[str, Method], list[str]]:
    """The variants of a TOML file and its default method list (``methods``, may be empty).

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad TOML, an unknown key or preset, a variant named like a preset, or one
            that sets a budget setting.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"variants file {file} does not exist; pass a TOML file of [variant.NAME] tables "
            "to --variants"
        )
    try:
        tree = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"variants file {file} is not valid TOML: {exc}") from exc
    unknown = set(tree) - {"variant", "methods"}
    if unknown:
        raise ValueError(
            f"{file}: unknown key {sorted(unknown)[0]!r}; a variants file holds [variant.NAME] "
            "tables and an optional methods = [...] list"
        )
    variants: dict[str, Method] = {}
    for name, table in tree.get("variant", {}).items():
        if not isinstance(table, dict) or set(table) - {"preset", "set", "description"}:
            raise ValueError(
                f'{file}: [variant.{name}] takes preset = "...", set = ["section.key=value", '
                '...] and description = "..."'
            )
        if name in _presets() and table.get("preset") != name:
            raise ValueError(
                f"{file}: variant {name!r} has the name of another preset; rename it so that "
                "each row's name says what it ran"
            )
        preset = table.get("preset")
        if preset not in _presets():
            raise ValueError(
                f"{file}: variant {name!r} needs preset = one of {', '.join(_presets())}, "
                f"got {preset!r}"
            )
        sets = table.get("set", [])
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise ValueError(f"{file}: variant {name!r}: set must be a list of strings")
        shared = [k for k in _keys(sets) if k in (*BUDGET_SETTINGS, *_FIXED)]
        if shared:
            raise ValueError(
                f"{file}: variant {name!r} sets {shared[0]}, which every method shares; "
                "pass it with --set for all methods"
            )
        variants[name] = Method(name, str(preset), tuple(sets))
    methods = tree.get("methods", [])
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"{file}: methods must be a list of method names")
    return variants, list(methods)


def resolve_methods(
    names: Sequence[str], variants: dict[str, Method], variants_file: str | None = None
) -> list[Method]:
    """The methods named in ``names``, in order.

    Raises:
        ValueError: an unknown or repeated name (the message lists the valid ones).
    """
    if not names:
        raise ValueError("no methods: pass --methods random,rotnet,... (or methods in --variants)")
    methods: list[Method] = []
    for name in names:
        if name in variants:
            methods.append(variants[name])
        elif name in _presets():
            methods.append(Method(name, name))
        else:
            where = f" or a variant of {variants_file}" if variants_file else ""
            choices = ", ".join([*_presets(), *variants])
            raise ValueError(
                f"unknown method {name!r}: choose a preset{where} ({choices}); define new ones "
                "as [variant.NAME] tables in a --variants file"
            )
    repeated = sorted({m.name for m in methods if [n.name for n in methods].count(m.name) > 1})
    if repeated:
        raise ValueError(f"method {repeated[0]!r} is listed twice in --methods")
    return methods


def read_base_config(path: str | Path | None) -> dict[str, Any]:
    """The shared base configuration (``--config``) as a nested dict ({} without one).

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad TOML, or a file that picks a preset (the methods choose it).
    """
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    try:
        tree = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {file} is not valid TOML: {exc}") from exc
    if "preset" in tree:
        raise ValueError(
            f"{file} sets preset = {tree['preset']!r}, but in a comparison each method picks "
            "its preset; remove the line"
        )
    load_config(base=tree)  # every setting checked now, before any run starts
    return tree


def check_shared(overrides: Sequence[str]) -> None:
    """Refuse ``--set`` of what the comparison fixes itself (seeds, data, run folders)."""
    fixed = [k for k in _keys(overrides) if k in _FIXED]
    if fixed:
        flag = {"train.seed": "--seeds", "data.path": "--train-data", "out": "--out"}[fixed[0]]
        raise ValueError(f"--set {fixed[0]} is set by the comparison itself: use {flag}")


def run_config(
    method: Method,
    *,
    base: dict[str, Any],
    overrides: Sequence[str],
    seed: int,
    data: str,
    out: Path,
    device: str,
) -> RunConfig:
    """The resolved configuration of ``method`` pre-trained with ``seed`` into ``out``."""
    preset = None if method.preset == RANDOM else method.preset
    cfg = load_config(base=base, preset=preset, overrides=[*method.sets, *overrides])
    return replace(
        cfg,
        out=str(out),
        data=replace(cfg.data, path=data),
        train=replace(cfg.train, seed=seed, device=device),
    )


def setting_value(tree: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` (``"cluster.k"``) of a nested dict, None where it is missing."""
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
