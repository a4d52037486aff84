"""``deepercluster plan``: sizes counted from the arrays, validation before launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepercluster import cli
from deepercluster.cli.plan import format_plan
from deepercluster.cluster.store import FeatureStore
from deepercluster.config import load_config
from deepercluster.engine.plan import Assumptions, make_plan, model_stats
from deepercluster.models import build_backbone

PAPER = ["--images", "96000000", "--k", "320000", "--super-clusters", "4", "--dim-pca", "256"]


def test_paper_setting_plans_the_grouped_layout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", *PAPER, "--world-size", "64", "--arch", "vgg16"]) == 0
    text = capsys.readouterr().out
    assert "grouped layout" in text and "configuration OK" in text
    cfg = load_config(overrides=["cluster.k=320000", "model.arch=vgg16"])
    plan = make_plan(cfg, n_images=96_000_000, world_size=64)
    stages = {s.stage: s for s in plan.stages}
    # 1.5 M images per rank, 4096 float32 features each
    assert stages["extraction"].disk == 1_500_000 * 4096 * 4
    # one sub-head of 80,000 x 4096 per process (weights, gradients, momentum)
    assert "heads 1.31 GB per process (grouped)" in stages["training (one epoch)"].note
    # the paper's 32 GB GPUs cannot hold all the heads without the grouped layout
    replicated = make_plan(
        load_config(overrides=["cluster.k=320000", "train.layout=replicated"]),
        n_images=96_000_000,
        world_size=64,
        assume=Assumptions(gpu_memory_gb=32),
    )
    assert any("train.layout=grouped" in p for p in replicated.problems)


def test_level1_sample_shrinks_the_level1_prediction() -> None:
    def level1(*overrides: str) -> tuple[float, str]:
        cfg = load_config(overrides=["cluster.k=320000", "model.arch=vgg16", *overrides])
        stage = next(
            s for s in make_plan(cfg, n_images=96_000_000, world_size=64).stages
            if s.stage == "k-means level 1"
        )  # fmt: skip
        return stage.seconds, stage.note

    full, note = level1()
    sampled, sampled_note = level1("cluster.level1_sample=1024000")
    # 10 iterations and the final assignment over 1.5 M rows per rank, against the same over
    # 16,000 sampled rows plus one pass assigning all 1.5 M.
    assert sampled / full == pytest.approx((11 * 16_000 + 1_500_000) / (11 * 1_500_000))
    assert "on 1,024,000 images" in sampled_note and "images" not in note


def test_model_measurements_match_the_real_network() -> None:
    stats = model_stats("small", True, 32)
    real = build_backbone("small", sobel=True, resolution=32)
    assert stats.feature_dim == real.feature_dim
    assert stats.params == sum(p.numel() for p in real.parameters())
    assert model_stats("vgg16", True, 224).flops == pytest.approx(30.9e9, rel=0.01)


def test_disk_prediction_equals_the_store_written(tmp_path: Path) -> None:
    cfg = load_config(
        overrides=["model.arch=small", "data.resolution=32", "cluster.k=8",
                   "cluster.feature_store=disk", "cluster.feature_dtype=float16"]
    )  # fmt: skip
    plan = make_plan(cfg, n_images=1001, world_size=2)
    store = FeatureStore(tmp_path, rows=501, dim=512, dtype="float16", chunk_rows=64)
    assert plan.stages[1].disk == store.nbytes == (tmp_path / "data.bin").stat().st_size


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "100", "--k", "400"], "larger than the number of images"),
        (["--images", "10**6", "--k", "10"], "must be divisible"),
        (["--images", "1000000", "--k", "1000", "--memory-limit", "2GB"], "--feature-store disk"),
        (["--images", "1000", "--world-size", "6", "--set", "train.layout=grouped"], "multiple"),
        (["--images", "1000", "--k", "9", "--super-clusters", "2"], "divisible"),
    ],
)
def test_impossible_settings_exit_2_with_the_fix(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [e.replace("10**6", "1000000") for e in extra]
    assert cli.main(["plan", "--arch", "small", "--resolution", "32", *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.out + captured.err


def test_plan_counts_the_images_of_a_data_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import write_pattern_images

    data = write_pattern_images(tmp_path / "images", n=12)
    args = ["plan", "--data", str(data), "--k", "4", "--arch", "small", "--resolution", "32"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("12 images, k = 4")


def test_calibration_runs_the_stages_on_the_users_images(tmp_path: Path) -> None:
    import torch
    from tests.conftest import write_pattern_images

    from deepercluster.data import open_collection
    from deepercluster.engine.calibrate import calibrate

    data = write_pattern_images(tmp_path / "images", n=24)
    cfg = load_config(
        overrides=[
            "model.arch=small", "data.resolution=32", "data.workers=0", "train.batch_size=4",
            "cluster.k=8", "cluster.super_clusters=2", "cluster.pca_dim=16",
        ]
    )  # fmt: skip
    measured = calibrate(cfg, device=torch.device("cpu"), collection=open_collection(str(data)))
    assert measured.extract_images_per_s > 0 and measured.train_images_per_s > 0
    assert measured.extract_fixed_s >= 0 and measured.train_fixed_s >= 0
    assert measured.kmeans_level1_s_per_row > 0 and measured.kmeans_level2_s_per_row > 0
    # the plan's times are the measured rates: fixed cost + images / rate
    plan = make_plan(cfg, n_images=1000, world_size=1, assume=measured)
    stages = {s.stage: s.seconds for s in plan.stages}
    expected = measured.train_fixed_s + 1000 / measured.train_images_per_s
    assert stages["training (one epoch)"] == pytest.approx(expected)
    expected = measured.extract_fixed_s + 1000 / measured.extract_images_per_s
    assert stages["extraction"] == pytest.approx(expected)
    assert "measured here" in format_plan(plan, cfg)


def test_a_cpu_run_counts_the_network_in_ram() -> None:
    cfg = load_config(overrides=["model.arch=vgg16", "train.batch_size=4096"])
    gpu = make_plan(cfg, n_images=100_000, world_size=1)
    cpu = make_plan(cfg, n_images=100_000, world_size=1, on_cpu=True)
    for g, c in zip(gpu.stages, cpu.stages, strict=True):
        assert c.gpu == 0 and c.ram == g.ram + g.gpu
    # an accelerator's memory limit means nothing on the CPU
    assert any("per accelerator" in p for p in gpu.problems)
    assert not any("per accelerator" in p for p in cpu.problems)


def test_plan_says_where_clustering_runs_and_what_the_head_start_costs() -> None:
    cfg = load_config(overrides=["cluster.k=1000", "model.arch=small", "data.resolution=32"])
    stages = {s.stage: s for s in make_plan(cfg, n_images=50_000, world_size=1).stages}
    assert "on the GPU if" in stages["PCA + whitening"].note
    assert "head start" not in stages
    centroids = load_config(
        overrides=[
            "cluster.k=1000",
            "model.arch=small",
            "data.resolution=32",
            "cluster.head_init=centroids",
        ]
    )
    plan = make_plan(centroids, n_images=50_000, world_size=1, on_cpu=True)
    stages = {s.stage: s for s in plan.stages}
    assert "PCA and k-means on the CPU" in stages["PCA + whitening"].note
    # 1,000 + 4 class means of 512 float64 sums, twice (sums and means), at least
    assert stages["head start"].ram >= 2 * 1004 * 512 * 8
