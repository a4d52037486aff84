"""Configuration: presets, TOML, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepercluster.config import PRESETS, RunConfig, config_from_dict, diff_configs, load_config


def test_defaults_are_the_paper_settings() -> None:
    cfg = load_config()
    assert cfg.model.arch == "vgg16" and cfg.model.sobel
    assert cfg.data.resolution == 224
    assert cfg.cluster.reassign == 3 and cfg.cluster.niter == 10
    assert cfg.train.lr == 0.1 and cfg.train.weight_decay == 1e-5 and cfg.train.batch_size == 48


@pytest.mark.parametrize(
    ("preset", "rotation", "m", "k", "n_super"),
    [
        ("deepercluster", True, 1, 10_000, 4),
        ("rotnet", True, 1, 1, 4),
        ("deepcluster", False, 1, 10_000, 1),
    ],
)
def test_presets(preset: str, rotation: bool, m: int, k: int, n_super: int) -> None:
    cfg = load_config(preset=preset)
    assert (cfg.cluster.rotation, cfg.cluster.super_clusters, cfg.cluster.k) == (rotation, m, k)
    assert cfg.cluster.n_super_classes == n_super
    assert cfg.cluster.sub_per_super == k // m
    assert cfg.cluster.needs_clustering == (k > 1)


def test_every_preset_is_listed() -> None:
    assert set(PRESETS) == {"deepercluster", "rotnet", "deepcluster", "paper"}


def test_deepercluster_preset_takes_the_studys_heads() -> None:
    c = load_config(preset="deepercluster").cluster
    assert (c.head_init, c.super_carry) == ("centroids", "rotation")
    assert load_config().cluster.head_init == "random"  # the defaults stay the paper's


def test_paper_preset_is_the_reference_behaviour() -> None:
    c = load_config(preset="paper").cluster
    assert (c.k, c.super_clusters, c.rotation, c.reassign) == (320_000, 4, True, 3)
    assert (c.head_init, c.super_carry) == ("random", "none")


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "my.toml"
    path.write_text(
        'preset = "deepcluster"\nout = "runs/x"\n[cluster]\nk = 500\n[train]\nepochs = 7\n'
    )
    cfg = load_config(
        toml_path=path, overrides=["cluster.k=200", "model.sobel=false", "train.lr=0.5"]
    )
    assert cfg.out == "runs/x"
    assert cfg.cluster.k == 200 and not cfg.cluster.rotation  # preset from the file, k from --set
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.5 and cfg.model.sobel is False


def test_override_value_types_are_coerced() -> None:
    cfg = load_config(overrides=["train.lr=1", "data.path=/some/photos", "cluster.rotation=off"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.data.path == "/some/photos"
    assert cfg.cluster.rotation is False
    assert load_config().data.max_file_bytes == 256 * 2**20
    assert load_config(overrides=["data.max_bytes=1000"]).data.max_file_bytes == 1000
    assert load_config(overrides=["data.max_bytes=1.5GB"]).data.max_file_bytes == 1_500_000_000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["cluster.k=10", "cluster.super_clusters=3"],
            r"cluster.k \(10\) must be divisible by cluster.super_clusters \(3\)",
        ),
        (["cluster.kk=3"], "unknown setting cluster.kk"),
        (["clusters.k=3"], "unknown setting 'clusters'"),
        (["model.arch=vgg19"], "model.arch .* must be one of"),
        (["train.epochs=ten"], "train.epochs expects a int"),
        (["data.resolution=100"], "divisible by 32"),
        (["cluster.k"], "section.key=value"),
        (["train.lr=-1"], r"train.lr \(-1.0\) must be > 0"),
        (["train.seed=-1"], r"train.seed \(-1\) must be >= 0"),
        (["data.max_bytes=lots"], r"data.max_bytes \('lots'\) must be a size such as 20GB"),
        (
            ["cluster.rotation=false", "cluster.k=1", "cluster.super_clusters=1"],
            "nothing to predict",
        ),
    ],
)
def test_invalid_settings_name_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(overrides=overrides)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'simclr'"):
        load_config(preset="simclr")


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(preset="rotnet", overrides=["data.path=a b/c", "train.epochs=3"])
    path = tmp_path / "resolved.toml"
    path.write_text(cfg.to_toml())
    assert load_config(toml_path=path) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_removed_settings_of_older_runs_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # config.json and checkpoints of earlier versions hold train.reuse_memory.
    saved = load_config().to_dict()
    saved["train"]["reuse_memory"] = True
    assert config_from_dict(saved) == load_config()
    path = tmp_path / "old.toml"
    path.write_text("[train]\nreuse_memory = false\nepochs = 3\n")
    with caplog.at_level("INFO", logger="deepercluster"):
        assert load_config(toml_path=path).train.epochs == 3
    assert "ignoring train.reuse_memory" in caplog.text


def test_diff_configs_lists_dotted_keys() -> None:
    a = load_config().to_dict()
    b = load_config(overrides=["cluster.k=100", "train.epochs=2"]).to_dict()
    assert diff_configs(a, b) == ["cluster.k", "train.epochs"]


def test_config_is_frozen() -> None:
    cfg = RunConfig()
    with pytest.raises(AttributeError):
        cfg.out = "x"  # type: ignore[misc]


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    paper = load_config(toml_path=root / "paper.toml")
    assert (paper.cluster.k, paper.cluster.super_clusters, paper.cluster.n_super_classes) == (
        320_000,
        4,
        16,
    )
    assert paper.model.arch == "vgg16" and paper.cluster.pca_dim == 4096
    assert (paper.cluster.head_init, paper.cluster.super_carry) == ("random", "none")
    smoke = load_config(toml_path=root / "smoke.toml")
    assert smoke.model.arch == "small" and smoke.cluster.k == 8
