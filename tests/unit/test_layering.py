"""The import arrows of the architecture (STYLE.md), checked on the source with ``ast``.

    cli ─► demo ─► engine ─► {features, losses, evaluation}
        ─► {data, models, cluster} ─► {config, log, distributed, allocator}

A part may import its own subpackage and anything in a lower layer, never sideways or up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import deepercluster

ROOT = Path(deepercluster.__file__).parent

LAYER = {
    "version": 0,
    "config": 0,
    "log": 0,
    "distributed": 0,
    "allocator": 0,
    "data": 1,
    "models": 1,
    "cluster": 1,
    "features": 2,
    "losses": 2,
    "evaluation": 2,
    "protocols": 4,
    "engine": 3,
    "demo": 4,
    "inspect": 4,
    "cli": 5,
    "__main__": 6,
    "__init__": 6,
}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "deepercluster":  # `from deepercluster import distributed`
                names.extend(f"deepercluster.{alias.name}" for alias in node.names)
    return names


def test_every_part_has_a_layer() -> None:
    parts = {_part(p) for p in ROOT.rglob("*.py")}
    assert parts <= set(LAYER), f"add {parts - set(LAYER)} to LAYER"


def test_imports_point_down() -> None:
    errors = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _part(path)
        for name in _imports(path):
            if not name.startswith("deepercluster."):
                continue
            other = name.split(".")[1]
            if other == me:
                continue
            assert other in LAYER, f"{path}: unknown part {name}; add it to LAYER"
            if LAYER[other] >= LAYER[me]:
                errors.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not errors, "imports that point up or sideways:\n" + "\n".join(errors)


def test_torch_distributed_only_in_distributed_module() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if p.name != "distributed.py"
        and any(n.startswith("torch.distributed") for n in _imports(p))
    ]
    assert not offenders


def test_cluster_has_no_faiss_in_its_loop() -> None:
    # One k-means loop, in torch on the features' device: no second (faiss) implementation.
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "cluster").rglob("*.py")
        if any(n == "faiss" or n.startswith("faiss.") for n in _imports(p))
    ]
    assert not offenders
