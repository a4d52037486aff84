"""Resolving a configuration: defaults, a preset, a TOML file, then ``--set`` overrides.

Sources are applied in that order; every section is validated when it is built, and an unknown
key, a value of the wrong type or a broken rule raises ``ValueError`` naming the setting and
the fix.
"""

from __future__ import annotations

import logging
import sys
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from deepercluster.config.sections import (
    REMOVED_SETTINGS,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


# Presets differ only in the settings that define the method; everything else is shared, so
# RotNet and DeepCluster run through exactly the same code as DeeperCluster.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's loss with the setting that did best in the CIFAR-10 study of studies/cifar10
    # (docs/results/cifar10-heads.md, section 5): one super-cluster, so the super-class head
    # is the rotation head and is kept, and the targets change less between clusterings; the
    # sub-heads start from the new clusters. With m > 1 (--set cluster.super_clusters=4) the
    # super head keeps its rotation rows across clusterings.
    "deepercluster": {
        "cluster": {
            "rotation": True,
            "super_clusters": 1,
            "k": 10_000,
            "head_init": "centroids",
            "super_carry": "rotation",
        }
    },
    "rotnet": {"cluster": {"rotation": True, "super_clusters": 1, "k": 1}},
    "deepcluster": {"cluster": {"rotation": False, "super_clusters": 1, "k": 10_000}},
    # The reference's behaviour exactly: k = 320,000 in m = 4 super-clusters, re-clustered
    # every 3 epochs, every head but RotNet's drawn afresh at each clustering.
    "paper": {
        "cluster": {
            "rotation": True,
            "super_clusters": 4,
            "k": 320_000,
            "reassign": 3,
            "head_init": "random",
            "super_carry": "none",
        }
    },
}

_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "cluster": ClusterConfig,
    "train": TrainConfig,
}


def load_config(
    *,
    preset: str | None = None,
    toml_path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a configuration: defaults < ``base`` < preset < TOML file < ``overrides``.

    Args:
        preset: name in :data:`PRESETS`, or None.
        toml_path: TOML file with a top-level ``out`` and ``[data]``, ``[model]``, ``[cluster]``,
            ``[train]`` tables; may also set ``preset = "rotnet"`` at the top level.
        overrides: ``"section.key=value"`` strings; the value is parsed as TOML when possible
            (``true``, ``3``, ``0.1``, ``"x"``) and as a bare string otherwise.
        base: a nested dict applied first (used by the demo for its own defaults).

    Raises:
        ValueError: unknown preset, section or key, a value of the wrong type, or any
            validation rule; the message names the setting and the fix.
    """
    tree: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    top: dict[str, Any] = {}
    if base:
        _merge(tree, top, base, "base")
    file_tree: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        with path.open("rb") as fh:
            try:
                file_tree = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
        preset = file_tree.pop("preset", None) if preset is None else preset
        file_tree.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        _merge(tree, top, PRESETS[preset], f"preset {preset}")
    if file_tree:
        _merge(tree, top, file_tree, str(toml_path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like section.key=value")
        parts = key.strip().split(".")
        value = _parse_value(raw.strip())
        nested: dict[str, Any] = {}
        cursor = nested
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _merge(tree, top, nested, f"--set {item}")
    sections = {name: _build(cls, tree[name], name) for name, cls in _SECTIONS.items()}
    out = top.get("out", RunConfig.out)
    if not isinstance(out, str):
        raise ValueError(f"out must be a string path, got {out!r}")
    return RunConfig(out=out, **sections)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` from :meth:`RunConfig.to_dict` output (checkpoints)."""
    return load_config(base=data)


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``to_dict()`` trees."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_configs(a, b, name + "."))
        elif a != b:
            out.append(name)
    return out


def _merge(
    tree: dict[str, dict[str, Any]], top: dict[str, Any], src: dict[str, Any], origin: str
) -> None:
    for key, value in src.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{origin}: [{key}] must be a table of settings")
            valid = {f.name for f in fields(_SECTIONS[key])}
            for sub, sub_value in value.items():
                if f"{key}.{sub}" in REMOVED_SETTINGS:
                    logging.getLogger(__name__).info(
                        "%s: ignoring %s.%s, a setting this version no longer has", origin, key, sub
                    )
                    continue
                if sub not in valid:
                    raise ValueError(
                        f"{origin}: unknown setting {key}.{sub}; valid {key} settings are "
                        f"{', '.join(sorted(valid))}"
                    )
                tree[key][sub] = sub_value
        elif key == "out":
            top["out"] = value
        else:
            raise ValueError(
                f"{origin}: unknown setting {key!r}; sections are out, {', '.join(_SECTIONS)}"
            )


def _build(cls: type[Any], values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    coerced = {
        name: _coerce(value, hints[name], f"{section}.{name}") for name, value in values.items()
    }
    return replace(cls(), **coerced) if coerced else cls()


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "on",
            "yes",
            "1",
            "false",
            "off",
            "no",
            "0",
        ):
            return value.lower() in ("true", "on", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"{name} expects a {getattr(hint, '__name__', hint)}, got {value!r}")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
