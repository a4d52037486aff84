"""End to end on generated images: train through the CLI, interrupt, resume, bad files."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch

from deepercluster import cli
from deepercluster.config import load_config
from deepercluster.engine import fit as fit_module
from deepercluster.engine.checkpoint import load_backbone, load_checkpoint
from deepercluster.features import native_bf16

SMALL = [
    "--set", "train.device=cpu",  # bitwise resume checks: CPU kernels are deterministic
    "--set", "model.arch=small",
    "--set", "data.resolution=32",
    "--set", "data.workers=0",
    "--set", "data.crop_scale_min=0.3",
    "--set", "cluster.k=8",
    "--set", "cluster.super_clusters=2",
    "--set", "cluster.reassign=1",
    "--set", "cluster.pca_dim=16",
    "--set", "train.epochs=2",
    "--set", "train.batch_size=16",
    "--set", "train.lr=0.05",
    "--set", "train.checkpoint_every=2",
    "--no-progress",
]  # fmt: skip


def _train(data: Path, out: Path, *extra: str) -> int:
    return cli.main(["train", "--data", str(data), "--out", str(out), *SMALL, *extra])


def _weights(out: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = load_checkpoint(out / "checkpoint.pth")["model"]
    return state


def test_train_writes_a_complete_run(
    tiny_image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(tiny_image_dir, out, "--preset", "deepercluster") == 0
    printed = capsys.readouterr().out
    assert "done: epoch 2/2 (this command trained 2 epochs)" in printed
    assert f"deepercluster inspect {out}" in printed  # the next commands, on this run
    ck = load_checkpoint(out / "checkpoint.pth")
    assert ck["state"] == {"epoch": 2, "iteration": 0, "clustered_epoch": 1, "position": 0}
    assert ck["config"]["cluster"]["k"] == 8 and ck["version"]
    labels = ck["clustering"]["labels"]
    assert labels.shape == (64,) and int(labels.min()) >= 0 and int(labels.max()) < 8
    assert len(torch.unique(labels)) == 8  # no empty cluster
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # numbered as the console does
    assert json.loads((out / "summary.json").read_text())["epoch"] == 2
    for key in (
        "train/loss", "train/super_acc", "train/sub_acc", "cluster/objective",
        "cluster/size_min", "cluster/size_median", "cluster/size_max", "cluster/reseeded",
        "speed/extract_images_per_s", "train/images_per_s",
    ):  # fmt: skip
        assert key in records[1], key
    assert "cluster/nmi_previous" in records[1]
    assert (out / "metrics.csv").exists() and list((out / "tb").iterdir())
    backbone = load_checkpoint(out / "backbone.pth")
    assert backbone["arch"] == "small" and backbone["resolution"] == 32
    assert json.loads((out / "config.json").read_text())["cluster"]["super_clusters"] == 2
    # the exported trunk and the full checkpoint rebuild the same network
    x = torch.randn(2, 3, 32, 32)
    a, b = load_backbone(out / "backbone.pth"), load_backbone(out / "checkpoint.pth")
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and a(x).shape == (2, 512)


@pytest.mark.parametrize("preset", ["rotnet", "deepcluster"])
def test_other_presets_run_through_the_same_loop(
    preset: str, tiny_image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / preset
    extra = ["--preset", preset, "--set", "train.epochs=1"]
    if preset == "deepcluster":
        extra += ["--set", "cluster.k=8", "--set", "cluster.super_clusters=1"]
    else:
        extra += ["--set", "cluster.k=1", "--set", "cluster.super_clusters=1"]
    assert _train(tiny_image_dir, out, *extra) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    if preset == "rotnet":
        assert "cluster/objective" not in record  # no clustering at all
        assert record["train/sub_loss"] == 0.0  # one sub-class: the term is identically zero
    else:
        assert record["cluster/objective"] > 0


@pytest.mark.parametrize("arch", ["small", "vgg16"])  # vgg16: dropout draws from the RNG
def test_resume_after_interruption_equals_uninterrupted(
    arch: str, tiny_image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("--set", f"model.arch={arch}")
    straight = tmp_path / "straight"
    assert _train(tiny_image_dir, straight, *extra) == 0

    real = fit_module.train_one_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        on_step = kwargs["on_step"]

        def step(done: int, stats: Any) -> None:
            on_step(done, stats)
            if calls["n"] == 2 and done == 3:  # after the checkpoint at iteration 2
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_step": step})

    monkeypatch.setattr(fit_module, "train_one_epoch", crash_in_second_epoch)
    broken = tmp_path / "broken"
    assert _train(tiny_image_dir, broken, *extra) == 130
    ck = load_checkpoint(broken / "checkpoint.pth")
    assert ck["state"] == {"epoch": 1, "iteration": 2, "clustered_epoch": 1, "position": 32}
    monkeypatch.setattr(fit_module, "train_one_epoch", real)
    assert _train(tiny_image_dir, broken, *extra) == 0

    a, b = load_checkpoint(straight / "checkpoint.pth"), load_checkpoint(broken / "checkpoint.pth")
    for part in ("model", "heads"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for p, q in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    # the resumed epoch reports the whole epoch, as the uninterrupted one does
    last = [
        json.loads((s / "metrics.jsonl").read_text().splitlines()[-1]) for s in (straight, broken)
    ]
    assert last[0]["train/loss"] == pytest.approx(last[1]["train/loss"])


def test_bf16_autocast_channels_last_trains(tiny_image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    settings = ["train.precision=bf16", "train.channels_last=true", "train.epochs=1"]
    assert _train(tiny_image_dir, out, *(a for s in settings for a in ("--set", s))) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train/loss"] > 0 and record["cluster/objective"] > 0
    weights = load_checkpoint(out / "checkpoint.pth")["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())  # fp32 master
    convs = [v for v in weights.values() if v.dim() == 4 and v.shape[-1] == 3]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)
    # the saved trunk loads into an ordinary (NCHW) network and runs
    net = load_backbone(out / "backbone.pth")
    assert net(torch.randn(2, 3, 32, 32)).shape[0] == 2
    # where the CPU has no native bf16 (emulated: ~12x slower) the run says so at start
    warned = "without native bf16" in (out / "train.log").read_text()
    assert warned == (not native_bf16(torch.device("cpu")))


def test_finished_clustering_is_not_redone(
    tiny_image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"

    def killed_before_training(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # right after the post-clustering checkpoint of epoch 0

    monkeypatch.setattr(fit_module, "train_one_epoch", killed_before_training)
    assert _train(tiny_image_dir, out, "--set", "train.epochs=1") == 130
    assert load_checkpoint(out / "checkpoint.pth")["state"]["clustered_epoch"] == 0
    monkeypatch.undo()

    def no_clustering(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("clustering redone")

    monkeypatch.setattr(fit_module, "recluster", no_clustering)
    assert _train(tiny_image_dir, out, "--set", "train.epochs=1") == 0
    # extending the run: epoch 1 needs a new clustering (reassign=1) ...
    with pytest.raises(AssertionError, match="clustering redone"):
        fit_module.fit(
            load_config(overrides=_overrides(tiny_image_dir, out, "train.epochs=2")),
            progress=False,
        )
    # ... and a changed reassign, or a longer cosine schedule, is refused
    assert (
        _train(tiny_image_dir, out, "--set", "train.epochs=2", "--set", "cluster.reassign=2") == 2
    )
    assert _train(tiny_image_dir, out, "--set", "train.schedule=cosine") == 2


def _overrides(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [SMALL[i + 1] for i in range(0, len(SMALL) - 1, 2) if SMALL[i] == "--set"]
    return [f'data.path="{data}"', f'out="{out}"', *sets, *extra]


def test_bad_files_are_skipped_and_reported(
    tiny_image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tiny_image_dir / "empty.png").write_bytes(b"")
    (tiny_image_dir / "text.jpg").write_text("this is not an image")
    good = (tiny_image_dir / "img_000.png").read_bytes()
    (tiny_image_dir / "cut.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    assert _train(tiny_image_dir, out, "--set", "train.epochs=1") == 0
    assert "3 unreadable images skipped" in capsys.readouterr().out
    lines = (out / "skipped.csv").read_text().splitlines()
    assert lines[0] == "path,reason"
    skipped = {Path(line.split(",")[0]).name for line in lines[1:]}
    assert skipped == {"empty.png", "text.jpg", "cut.png"}
    labels = load_checkpoint(out / "checkpoint.pth")["clustering"]["labels"]
    assert int((labels == -1).sum()) == 3  # excluded from clustering and sampling


def test_bad_settings_fail_before_any_work(
    tiny_image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert (
        _train(tiny_image_dir, out, "--set", "cluster.k=100", "--set", "cluster.super_clusters=1")
        == 2
    )
    assert "cluster.k (100) is larger than the number of images (64)" in capsys.readouterr().err
    assert not (out / "checkpoint.pth").exists()
    assert cli.main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--data", str(empty), "--out", str(out)]) == 2
    assert "no image files" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["deepercluster", "rotnet"])
def test_unreadable_collection_is_a_clear_error(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "junk"
    data.mkdir()
    for i in range(10):
        (data / f"{i}.jpg").write_text("not an image")
    k = "1" if preset == "rotnet" else "2"
    sets = ["--set", f"cluster.k={k}", "--set", "cluster.super_clusters=1", "--preset", preset]
    assert _train(data, tmp_path / "run", *sets) == 2
    assert "could be read" in capsys.readouterr().err


def test_config_command_prints_loadable_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "--preset", "rotnet", "--set", "train.epochs=3"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = load_config(toml_path=path)
    assert cfg.cluster.k == 1 and cfg.cluster.super_clusters == 1 and cfg.train.epochs == 3


def test_train_from_tar_shards_with_worker_processes(tiny_image_dir: Path, tmp_path: Path) -> None:
    """Brace-pattern shards, read in place by 2 DataLoader worker processes."""
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted(tiny_image_dir.iterdir())
    for s in range(2):
        with tarfile.open(shards / f"train-{s:03d}.tar", "w") as tar:
            for f in files[s::2]:
                tar.add(f, arcname=f"imgs/{f.name}")
    out = tmp_path / "run"
    pattern = str(shards / "train-{000..001}.tar")
    assert _train(Path(pattern), out, "--set", "train.epochs=1", "--set", "data.workers=2") == 0
    labels = load_checkpoint(out / "checkpoint.pth")["clustering"]["labels"]
    assert labels.shape == (64,) and int(labels.min()) >= 0
    assert not list(shards.glob("**/*.png"))  # nothing was extracted
