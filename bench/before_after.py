"""Before/after ratios of the optimised modules, old code loaded from a git revision.

    python -m bench.before_after --rev 4a587de [--device cuda]

Loads ``models/heads.py`` (and ``models/grouped.py``), ``losses.py``, ``data/decode.py``,
``data/transforms.py``, ``cluster/kmeans.py``, ``cluster/hierarchical.py`` and
``engine/train.py`` as they were at ``--rev`` (the commit before the optimisations) next to the
installed ones, and times old against new interleaved on the same inputs: heads forward +
backward at the scaled paper shapes, the 32 px and 224 px training and clustering items after
the read, the flat and hierarchical k-means of ``bench/kmeans.py`` (m = 4 and 16, k = 2048), and a
training step of the small convnet. Prints and writes
``results/bench/before_after-<rev>-<device>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from bench.common import Context, Row, info, interleaved, machine, median, ratio

_SRC = "src/deepercluster/"


def _old_module(rev: str, rel: str, name: str, imports: dict[str, str] | None = None) -> ModuleType:
    """``rel`` as it was at ``rev``, as module ``name``; ``imports`` maps a module it imports
    to an old module already loaded (e.g. its helpers as they were at ``rev`` too)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{_SRC}{rel}"], capture_output=True, text=True, check=True
    ).stdout
    for new_name, old_name in (imports or {}).items():
        source = source.replace(f"from {new_name} import", f"from {old_name} import")
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # Relative imports resolve to today's package (the modules not loaded from rev).
    module.__package__ = "deepercluster" + "".join("." + part for part in rel.split("/")[:-1])
    sys.modules[name] = module
    exec(compile(source, f"{rev}:{rel}", "exec"), module.__dict__)
    return module


def _heads(ctx: Context, rev: str) -> list[Row]:
    from deepercluster import losses as new_losses
    from deepercluster.models import HierarchicalHeads

    try:  # the heads' autograd functions, as they were at rev, when they had their own module
        _old_module(rev, "models/grouped.py", "_old_grouped")
        imports = {"deepercluster.models.grouped": "_old_grouped"}
    except subprocess.CalledProcessError:
        imports = {}
    old = _old_module(rev, "models/heads.py", "_old_heads", imports)
    # Each side's own training loss (losses.py at that revision: logits + cross-entropy
    # before the fused sub-head cross-entropy, which needs the new heads).
    old_losses = _old_module(rev, "losses.py", "_old_losses")
    dim, n_super, n_sub, batch = 512, 16, 10_000, 256
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, generator=gen).to(ctx.device).requires_grad_(True)
    ys = torch.randint(n_super, (batch,), generator=gen).to(ctx.device)
    yb = torch.randint(n_sub, (batch,), generator=gen).to(ctx.device)
    fns: dict[str, Callable[[], object]] = {}
    sides = (("new", HierarchicalHeads, new_losses), ("old", old.HierarchicalHeads, old_losses))
    for name, cls, loss_module in sides:
        heads = cls(dim, n_super, n_sub).to(ctx.device)

        def step(heads: torch.nn.Module = heads, loss_module: ModuleType = loss_module) -> object:
            heads.zero_grad(set_to_none=True)
            loss_module.hierarchical_loss(heads, x, ys, yb).loss.backward()
            return None

        fns[name] = step
    t = interleaved(fns, ctx)
    return [
        info(
            "heads",
            "old / new heads training loss, forward + backward (D=512, S=16, n_sub=10000, B=256)",
            ratio(t, "old", "new"),
            "x",
            old_s=median(t["old"]),
            new_s=median(t["new"]),
        )
    ]


def _data(ctx: Context, rev: str) -> list[Row]:
    from deepercluster.data import ClusterTransform, TrainTransform
    from deepercluster.data.decode import decode_image
    from deepercluster.data.position_rng import PositionRng

    old_decode = _old_module(rev, "data/decode.py", "_old_decode")
    try:
        old_rng: ModuleType | None = _old_module(rev, "data/position_rng.py", "_old_position_rng")
    except subprocess.CalledProcessError:  # before the per-position stream existed
        old_rng = None
    old_tf = _old_module(rev, "data/transforms.py", "_old_transforms")
    rows: list[Row] = []
    for label, path, res, n in (
        ("CIFAR-10 32px", "/work/shared/data/cifar10/train.tar", 32, 2000),
        ("food photos 224px", "/work/shared/data/food-photos/images.tar", 224, 200),
    ):
        if not Path(path).exists():
            continue
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile()][:n]
            blobs = [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]
        new_t, old_t = TrainTransform(res), old_tf.TrainTransform(res)
        new_c, old_c = ClusterTransform(res), old_tf.ClusterTransform(res)

        # What a training item does after reading its bytes, each side as its TrainView does
        # it: a per-position random stream, decode, crop + flip + normalise, rotation.
        def new(blobs: list[bytes] = blobs, t: TrainTransform = new_t) -> None:
            for p, b in enumerate(blobs):
                t(decode_image(b), PositionRng(0, 0, p), p % 4)

        def old(blobs: list[bytes] = blobs, t: object = old_t) -> None:
            for p, b in enumerate(blobs):
                if old_rng is not None:  # the revision had the per-position stream
                    rng = old_rng.PositionRng(0, 0, p)
                    t(old_decode.decode_image(b), rng, p % 4)  # type: ignore[operator]
                else:
                    rng = np.random.default_rng([0, 0, p])
                    old_tf.rotate(t(old_decode.decode_image(b), rng), p % 4)  # type: ignore[operator]

        # A clustering item after the read: decode, resize, centre crop, normalise.
        def new_cluster(blobs: list[bytes] = blobs, t: ClusterTransform = new_c) -> None:
            for b in blobs:
                t(decode_image(b))

        def old_cluster(blobs: list[bytes] = blobs, t: object = old_c) -> None:
            for b in blobs:
                t(old_decode.decode_image(b))  # type: ignore[operator]

        sides = {"new": new, "old": old, "new_cluster": new_cluster, "old_cluster": old_cluster}
        with torch.inference_mode():
            prev = torch.get_num_threads()
            torch.set_num_threads(1)
            t = interleaved(sides, ctx, reps=3)
            torch.set_num_threads(prev)
        for item, what, new_key, old_key in (
            ("training", "stream, decode, augment", "new", "old"),
            ("clustering", "decode, resize, crop", "new_cluster", "old_cluster"),
        ):
            rows.append(
                info(
                    "data",
                    f"old / new {item} item after the read: {what} ({label})",
                    ratio(t, old_key, new_key),
                    "x",
                    old_us=median(t[old_key]) / n * 1e6,
                    new_us=median(t[new_key]) / n * 1e6,
                )
            )
    return rows


def _kmeans(ctx: Context, rev: str) -> list[Row]:
    from bench.kmeans import mixture
    from deepercluster.cluster.hierarchical import hierarchical_kmeans
    from deepercluster.cluster.kmeans import kmeans

    old_kmeans = _old_module(rev, "cluster/kmeans.py", "_old_kmeans")
    # The old hierarchy on the old flat k-means (not the installed one it imports by name).
    old = _old_module(
        rev,
        "cluster/hierarchical.py",
        "_old_hierarchical",
        {"deepercluster.cluster.kmeans": old_kmeans.__name__},
    )
    x = mixture(50_000, 128, centres=4096)
    rows: list[Row] = []
    objectives: dict[tuple[str, int], float] = {}
    # m = 1 is the flat k-means itself (the side the hierarchy's ratio is taken against).
    for m in (1, 4, 16):

        def run(name: str, module: ModuleType | None, m: int = m) -> Callable[[], None]:
            def call() -> None:
                if m == 1:
                    flat = kmeans if module is None else module.kmeans
                    result = flat(x, 2048, niter=10, seed=0)
                else:
                    hier = hierarchical_kmeans if module is None else module.hierarchical_kmeans
                    result = hier(x, k=2048, m=m, niter=10, seed=0)
                objectives[name, m] = float(result.objective)

            return call

        t = interleaved(
            {"new": run("new", None), "old": run("old", old_kmeans if m == 1 else old)},
            ctx,
            reps=3,
        )
        kind = "flat k-means" if m == 1 else f"hierarchical k-means, m={m}"
        rows.append(
            info(
                "kmeans",
                f"old / new {kind} (N=50k, D=128, k=2048, 10 it.)",
                ratio(t, "old", "new"),
                "x",
                old_s=median(t["old"]),
                new_s=median(t["new"]),
                same_objective=objectives["old", m] == objectives["new", m],
            )
        )
    return rows


def _train(ctx: Context, rev: str) -> list[Row]:
    from bench.train_step import _setting
    from deepercluster.engine import train as new_train

    old = _old_module(rev, "engine/train.py", "_old_train")
    fns: dict[str, Callable[[], object]] = {}
    steps = 1
    for name, module in (("new", new_train), ("old", old)):
        fns[name], _, steps = _setting(
            ctx, "small", 32, 128, "fp32", False, train_fn=module.train_one_epoch
        )
    t = interleaved(fns, ctx)
    return [
        info(
            "train",
            "old / new train_one_epoch step (small 32px b128 fp32, data in memory)",
            ratio(t, "old", "new"),
            "x",
            old_s_per_step=median(t["old"]) / steps,
            new_s_per_step=median(t["new"]) / steps,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.before_after", description=__doc__)
    p.add_argument("--rev", default="4a587de", help="git revision of the code before")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    ctx = Context(device=torch.device(args.device), size="quick", reps=5, warmup=1)
    rows = _heads(ctx, args.rev) + _data(ctx, args.rev) + _kmeans(ctx, args.rev)
    rows += _train(ctx, args.rev)
    for r in rows:
        print(f"{r.bench:6} {r.name:75} {r.value:.2f}x  {r.detail}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"before_after-{args.rev}-{ctx.device.type}.json"
    record = {"rev": args.rev, "machine": machine(ctx.device), "rows": [r.to_dict() for r in rows]}
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
