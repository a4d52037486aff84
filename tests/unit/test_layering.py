"""The import arrows of the architecture (STYLE.md), checked on the source with ``ast``.

    cli ─► evaluation.compare ─► {demo, inspect, evaluation.protocols, curate.pipeline}
        ─► {engine, curate.descriptors} ─► {features, losses, evaluation, curate}
        ─► {data, models, cluster}
        ─► {config, log, distributed}

A part may import its own subpackage and anything in a lower layer, never sideways or up.

A part is a top-level module or subpackage, except ``evaluation.protocols``: all evaluation
code lives in ``evaluation/``, but its two halves sit on both sides of ``engine``. The
algorithms (NMI, agreement, tags, probes, kNN: arrays in, numbers out) are used by the
clustering rounds inside ``engine``, while the protocols read run folders through
``engine.run_folder`` and checkpoints. So ``evaluation.protocols`` is its own part, a layer
above ``engine``, and ``evaluation/__init__.py`` must not import it. ``evaluation.compare``
(the ``compare`` command's driver) pre-trains runs and scores them with the protocols: a layer
above both.
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
    "data": 1,
    "models": 1,
    "cluster": 1,
    "features": 2,
    "losses": 2,
    "evaluation": 2,
    "evaluation.protocols": 4,
    "curate": 2,
    "curate.descriptors": 3,
    "curate.pipeline": 4,
    "evaluation.compare": 5,
    "engine": 3,
    "demo": 4,
    "inspect": 4,
    "cli": 6,
    "__main__": 7,
    "__init__": 7,
}


def _part_of(dotted: str) -> str:
    """The part of ``a.b.c`` (relative to the package): the longest prefix named in LAYER."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYER:
            return ".".join(parts[:n])
    return parts[0]


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return _part_of(".".join(rel.parts))


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
            other = _part_of(name.removeprefix("deepercluster."))
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
