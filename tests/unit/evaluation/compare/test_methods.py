"""What each row of a comparison runs: variants files, the order settings apply in, the shared
budget, refused run folders, and the time-left estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepercluster.engine.failures import RunFolderError
from deepercluster.evaluation.compare.methods import (
    Method,
    check_shared,
    read_base_config,
    read_variants,
    resolve_methods,
    run_config,
)
from deepercluster.evaluation.compare.progress import Step, StepLog
from deepercluster.evaluation.compare.runs import (
    RUN_RECORD,
    check_run_folder,
    pretrain_seconds,
    training_curves,
)


def _variants(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "v.toml"
    path.write_text(text)
    return path


def test_settings_apply_base_then_preset_then_variant_then_shared(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text("[cluster]\nk = 48\npca_dim = 16\n[train]\nlr = 0.3\n")
    variants, listed = read_variants(_variants(tmp_path, """
methods = ["random", "dc"]
[variant.dc]
preset = "deepcluster"
set = ["cluster.k=7", "train.lr=0.2"]
[variant.rotnet]
preset = "rotnet"
set = ["cluster.k=1"]
"""))  # fmt: skip
    assert listed == ["random", "dc"] and variants["rotnet"].sets == ("cluster.k=1",)
    random, dc, rotnet = resolve_methods(["random", "dc", "rotnet"], variants)
    common = dict(base=read_base_config(base), seed=2, data="/d", out=tmp_path / "r", device="cpu")
    cfg = run_config(dc, overrides=["train.lr=0.5"], **common)  # type: ignore[arg-type]
    assert (cfg.cluster.k, cfg.cluster.pca_dim, cfg.train.lr) == (7, 16, 0.5)
    assert (cfg.train.seed, cfg.data.path, cfg.out) == (2, "/d", str(tmp_path / "r"))
    assert run_config(rotnet, overrides=[], **common).cluster.k == 1  # type: ignore[arg-type]
    # the preset wins over the base file (the base is shared, the preset is the method)
    assert run_config(random, overrides=[], **common).cluster.k == 48  # type: ignore[arg-type]
    assert not random.trains and dc.trains


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[variant.rotnet]\npreset = "deepcluster"\n', "has the name of another preset"),
        ('[variant.x]\npreset = "simclr"\n', "needs preset = one of random"),
        ('[variant.x]\npreset = "rotnet"\nset = ["train.epochs=9"]\n', "every method shares"),
        ('[variant.x]\npreset = "rotnet"\nsets = []\n', r"takes preset"),
        ("[base]\nk = 1\n", "unknown key 'base'"),
        ("[variant.x\n", "not valid TOML"),
    ],
)
def test_bad_variants_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_variants(_variants(tmp_path, text))


def test_unknown_missing_and_repeated_methods(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="variants file"):
        read_variants(tmp_path / "none.toml")
    with pytest.raises(ValueError, match=r"unknown method 'x'.*random, deepercluster"):
        resolve_methods(["x"], {})
    with pytest.raises(ValueError, match="listed twice"):
        resolve_methods(["rotnet", "rotnet"], {})
    with pytest.raises(ValueError, match="use --seeds"):
        check_shared(["train.seed=3"])
    base = tmp_path / "base.toml"
    base.write_text('preset = "rotnet"\n')
    with pytest.raises(ValueError, match="each method picks its preset"):
        read_base_config(base)


def test_a_run_folder_with_other_settings_is_refused(tmp_path: Path) -> None:
    import json

    images = {"train_data": "/d", "max_train": 0, "count": 36}
    cfg = run_config(Method("rotnet", "rotnet"), base={}, overrides=[], seed=0, data="/d",
                     out=tmp_path, device="cpu")  # fmt: skip
    check_run_folder(tmp_path, cfg, images)  # nothing recorded yet
    (tmp_path / RUN_RECORD).write_text(json.dumps({"config": cfg.to_dict(), "images": images}))
    check_run_folder(tmp_path, cfg, images)
    faster = run_config(Method("rotnet", "rotnet"), base={}, overrides=["train.threads=3"],
                        seed=0, data="/d", out=tmp_path, device="cuda")  # fmt: skip
    check_run_folder(tmp_path, faster, images)  # where and how fast: not what it learns
    other = run_config(Method("rotnet", "rotnet"), base={}, overrides=["train.epochs=9"], seed=0,
                       data="/d", out=tmp_path, device="cpu")  # fmt: skip
    with pytest.raises(RunFolderError, match=r"train.epochs: 100 there vs 9 now"):
        check_run_folder(tmp_path, other, images)
    with pytest.raises(RunFolderError, match=r"max_train: 0 there vs 500 now"):
        check_run_folder(tmp_path, cfg, {**images, "max_train": 500})


def test_time_left_counts_the_kinds_already_timed(tmp_path: Path) -> None:
    steps = [Step("pretrain:a", "a"), Step("linear", "a probes"), Step("linear", "b probes")]
    log = StepLog(steps, tmp_path / "compare.log")
    assert log.left() == "?"
    log.start(steps[0])
    log.done(steps[0], reused=True)  # reused, time unknown: not counted
    log.start(steps[1])
    assert log.left() == "?"
    log.done(steps[1], reused=True, took=30.0)  # reused, made in 30 s earlier
    assert log.left() == "1m00s"  # from step 2 (the current one) on
    log.start(steps[2])
    assert log.left() == "30s"
    assert "[1/3] a: reused" in (tmp_path / "compare.log").read_text()


def test_a_random_network_depends_only_on_its_architecture_and_seed(tmp_path: Path) -> None:
    import json

    images = {"train_data": "/d", "max_train": 0, "count": 36}
    cfg = run_config(Method("random", "random"), base={}, overrides=[], seed=0, data="/d",
                     out=tmp_path, device="cpu")  # fmt: skip
    (tmp_path / RUN_RECORD).write_text(json.dumps({"config": cfg.to_dict(), "images": images}))
    longer = run_config(Method("random", "random"), base={}, overrides=["train.epochs=9"],
                        seed=0, data="/d", out=tmp_path, device="cpu")  # fmt: skip
    check_run_folder(tmp_path, longer, {**images, "max_train": 5}, random=True)
    other = run_config(Method("random", "random"), base={}, overrides=["model.sobel=false"],
                       seed=0, data="/d", out=tmp_path, device="cpu")  # fmt: skip
    with pytest.raises(RunFolderError, match=r"model\.sobel"):
        check_run_folder(tmp_path, other, images, random=True)


def test_curves_and_minutes_come_from_the_runs_metrics(tmp_path: Path) -> None:
    import json

    rows = [  # re-clustering every 2 epochs: the clusters' numbers repeat in between
        {"epoch": 1, "train/loss": 3.0, "train/super_acc": 0.3, "cluster/epoch": 1.0,
         "time/train_s": 10.0, "time/extract_s": 2.0, "time/pca_s": 0.5, "time/kmeans_s": 1.5},
        {"epoch": 2, "train/loss": 2.0, "train/super_acc": 0.4, "cluster/epoch": 1.0,
         "time/train_s": 11.0},
        {"epoch": 3, "train/loss": 1.5, "train/super_acc": 0.5, "cluster/epoch": 3.0,
         "cluster/nmi_previous": 0.6, "time/train_s": 12.0, "time/extract_s": 2.0},
        {"epoch": 4, "train/loss": 1.2, "train/super_acc": 0.6, "cluster/epoch": 3.0,
         "cluster/nmi_previous": 0.6, "time/train_s": 13.0},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves(tmp_path)
    assert curves["train/loss"] == [[1, 3.0], [2, 2.0], [3, 1.5], [4, 1.2]]
    assert curves["cluster/nmi_previous"] == [[3, 0.6]]  # one point per clustering
    assert "train/sub_acc" not in curves
    assert pretrain_seconds(tmp_path) == 10 + 2 + 0.5 + 1.5 + 11 + 12 + 2 + 13
    assert pretrain_seconds(tmp_path / "none") == 0.0
