"""The benchmark suite runs end to end on toy shapes (no thresholds: CI machines vary)."""

from __future__ import annotations

import io
import json
import math
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bench import common, level1_sample
from bench.__main__ import BENCHES, main
from bench.extract import _children_cpu
from PIL import Image

from deepercluster.features import native_bf16


def _jpeg_tar(path: Path, sizes: list[tuple[int, int]], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w") as tar:
        for i, (w, h) in enumerate(sizes):
            buf = io.BytesIO()
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"train/class{i % 3}/{i:04d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return path


@pytest.mark.slow
def test_all_benchmarks_run_on_tiny_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cifar = _jpeg_tar(tmp_path / "cifar.tar", [(32, 32)] * 160, seed=0)
    food = _jpeg_tar(tmp_path / "food.tar", [(300, 200), (250, 260)] * 8, seed=1)
    monkeypatch.setenv("BENCH_CIFAR", str(cifar))
    monkeypatch.setenv("BENCH_FOOD", str(food))
    out = tmp_path / "results"
    assert main(["all", "--tiny", "--threads", "1", "--out", str(out)]) == 0
    record = json.loads((out / "all-tiny-cpu.json").read_text())
    rows = record["rows"]
    assert {r["bench"] for r in rows} == set(BENCHES)
    for r in rows:
        # A stage's peak memory above its start may be 0 MiB at toy shapes; nothing else is 0.
        assert math.isfinite(r["value"]) and (r["value"] > 0 or r["unit"] == "MiB"), r
        assert (r["ok"] is None) == (r["target"] == ""), r
    # Every timed ratio with a target keeps its per-repetition ratios, whose median it is.
    timed = [
        r for r in rows if r["target"] and not {"memory", "objective"} & set(r["name"].split())
    ]
    assert len(timed) >= 8
    for r in timed:
        reps = r["detail"]["per_rep"]
        assert len(reps) >= 2 and statistics.median(reps) == pytest.approx(r["value"], rel=1e-3), r
    # The k-means hierarchy is also timed with faiss.Kmeans for every run, as a reference.
    reference = [r for r in rows if r["name"].startswith("reference: flat / hierarchy of faiss")]
    assert reference and all(r["detail"]["ours_over_faiss"] > 0 for r in reference)
    # ... and with level 1 fitted on a sample (smaller than the tiny shape's 2,000 points).
    sampled = [r for r in rows if "level 1 on 256 m images" in r["name"]]
    assert [r["detail"].get("level1_sample") for r in sampled] == [512, None]
    assert record["machine_before"]["torch_threads"] == 1
    # Extraction with a DataLoader worker records the worker's CPU time (a forked process'
    # decoding and start-up, counted once the loader has joined it), and its share of a bare
    # call as a row; without a worker there is none.
    extract = {r["name"]: r for r in rows if r["bench"] == "extract"}
    with_worker = extract[
        "extract_features over ArrayCollection / bare inference (fp32, 1 worker(s))"
    ]
    assert with_worker["detail"]["worker_cpu_s"] > 0
    share = extract[
        "workers' CPU time / bare inference time, over ArrayCollection (fp32, 1 worker(s))"
    ]
    assert share["value"] > 0 and share["unit"] == "x"
    without = extract["extract_features over ArrayCollection / bare inference (fp32, 0 worker(s))"]
    assert "worker_cpu_s" not in without["detail"]
    assert not any(n.startswith("workers' CPU") and "0 worker" in n for n in extract)
    # Each cycle stage reports its time and its peak memory as rows of their own.
    cycle: dict[str, list[str]] = {}
    for r in rows:
        if r["bench"] == "cycle" and ":" in r["name"]:
            cycle.setdefault(r["name"].split(":")[0], []).append(r["unit"])
    assert cycle == {stage: ["s", "MiB"] for stage in ("extract", "pca", "kmeans", "train")}
    printed = capsys.readouterr().out
    assert "target" in printed and "repetitions" in printed and "written to" in printed


def test_level1_sample_script_runs_on_a_tiny_tar(tmp_path: Path) -> None:
    cifar = _jpeg_tar(tmp_path / "cifar.tar", [(32, 32)] * 160, seed=2)
    args = ["--tar", str(cifar), "--n", "150", "--k", "32", "--dim", "8", "--per-super", "8"]
    assert level1_sample.main([*args, "--reps", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "level1_sample-cifar.json").read_text())["rows"]
    assert len(rows) == 8 and all(math.isfinite(r["value"]) and r["value"] > 0 for r in rows)
    # Level 1 saw 32 and 128 of the 150 images: the sampled runs differ from the full ones.
    objectives = [r["detail"]["objectives"] for r in rows if "objectives" in r["detail"]]
    assert all(o["sampled"] != o["all"] for o in objectives)


def test_bf16_rows_are_left_out_only_where_bf16_is_emulated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    quick = common.Context(cpu, size="quick")
    settings = [("fp32", False), ("bf16", True)]

    def skipped(ctx: common.Context) -> list[common.Row]:
        kept, rows = common.without_emulated_bf16(ctx, "train", settings)
        assert kept == (settings[:1] if rows else settings)
        return rows

    monkeypatch.delenv("BENCH_BF16", raising=False)
    assert bool(skipped(quick)) == (not native_bf16(cpu))
    monkeypatch.setattr(common, "native_bf16", lambda device: False)
    (row,) = skipped(quick)
    assert row.bench == "train" and "BENCH_BF16=1" in row.name and row.ok is None
    assert skipped(common.Context(cpu, size="tiny")) == []
    monkeypatch.setenv("BENCH_BF16", "1")
    assert skipped(quick) == []
    monkeypatch.setattr(common, "native_bf16", lambda device: True)
    monkeypatch.delenv("BENCH_BF16")
    assert skipped(quick) == []


def test_children_cpu_counts_a_finished_child_not_this_process() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    before = _children_cpu()
    t = time.process_time()
    while time.process_time() - t < 0.3:  # this process' own CPU time is not counted
        pass
    mid = _children_cpu()
    subprocess.run([sys.executable, "-c", burn], check=True)
    after = _children_cpu()
    assert mid - before < 0.05
    assert after - mid >= 0.25
