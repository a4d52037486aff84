"""bench.summary: ranges and met-target counts of figures over several suite results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import summary
from bench.common import Row, at_least, at_most, info


def _write(path: Path, rows: list[Row], cpu: str = "AMD EPYC", family_model: str = "25/1") -> Path:
    """A result file shaped as ``python -m bench`` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "size": "quick",
        "machine_before": {"cpu": cpu, "cpu_family_model": family_model},
        "rows": [r.to_dict() for r in rows],
    }
    path.write_text(json.dumps(record))
    return path


def _heads(value: float) -> Row:
    return at_least("heads", "flat / hierarchical heads, time", value, 8.0, hier_s=0.15)


def _kmeans(value: float) -> Row:
    return at_most("kmeans", "ours / faiss time", value, 1.2)


def test_ranges_counts_and_order_over_folders(tmp_path: Path) -> None:
    note = info("train", "bf16 rows skipped: no native bf16", 0.0, "")
    _write(tmp_path / "r1" / "all-quick-cpu.json", [note, _heads(9.6), _kmeans(0.85)])
    _write(tmp_path / "r2" / "all-quick-cpu.json", [_heads(7.7), _kmeans(1.3)])
    _write(tmp_path / "r2" / "heads-quick-cpu.json", [_heads(8.1)])
    (tmp_path / "r2" / "level1_sample-cifar.json").write_text(json.dumps({"objective": 1.0}))

    readings, skipped = summary.load([tmp_path / "r1", tmp_path / "r2"])

    assert [r.label for r in readings] == [
        "r1/all-quick-cpu",
        "r2/all-quick-cpu",
        "r2/heads-quick-cpu",
    ]
    assert skipped == [tmp_path / "r2" / "level1_sample-cifar.json"]
    figures = {f.bench: f for f in summary.summarise(readings)}
    assert set(figures) == {"heads", "kmeans"}  # the note (no unit) is not a figure
    heads = figures["heads"]
    assert [v for _, v, _ in heads.values] == [9.6, 7.7, 8.1]
    assert (heads.low, heads.high, heads.met, heads.judged) == (7.7, 9.6, 2, 3)
    kmeans = figures["kmeans"]
    assert (kmeans.met, kmeans.judged) == (1, 2)
    text = summary.text_table(list(figures.values()))
    assert "7.70x - 9.60x" in text and "2 of 3" in text and "9.60, 7.70, 8.10" in text


def test_a_changed_target_is_another_figure_and_info_rows_are_never_judged(
    tmp_path: Path,
) -> None:
    a = _write(tmp_path / "a.json", [_heads(9.0), info("cycle", "total", 50.0, "s")])
    b = _write(
        tmp_path / "b.json", [at_least("heads", "flat / hierarchical heads, time", 9.0, 10.0)]
    )
    figures = summary.summarise(summary.load([a, b])[0])
    assert [(f.bench, f.target, f.met, f.judged) for f in figures] == [
        ("heads", ">= 8", 1, 1),
        ("cycle", "", 0, 0),
        ("heads", ">= 10", 0, 1),
    ]
    assert "| cycle | total | 50 s | 50 |  |  |" in summary.markdown_table(figures)


def test_old_cycle_rows_are_read_as_todays_time_and_memory_rows(tmp_path: Path) -> None:
    # Before round 17 the memory was in the time row's name; today each is a row of its own.
    old = _write(
        tmp_path / "r14.json",
        [
            info("cycle", "train: seconds for 5000 images (peak RSS +517 MiB)", 46.2, "s"),
            info("cycle", "cycle total for 5000 images (k=256, m=4, 32px)", 60.9, "s"),
        ],
    )
    new = _write(
        tmp_path / "r17.json",
        [
            info("cycle", "train: seconds for 5000 images", 40.4, "s"),
            info("cycle", "train: peak RSS above the stage's start, 5000 images", 582.4, "MiB"),
        ],
    )
    # A row of another bench that happens to look the same is left alone.
    odd = _write(
        tmp_path / "r18.json", [info("x", "a: seconds for 1 images (peak RSS +1 MiB)", 1, "s")]
    )

    figures = summary.summarise(summary.load([old, new, odd])[0])

    assert [(f.bench, f.name, f.unit, [v for _, v, _ in f.values]) for f in figures] == [
        ("cycle", "train: seconds for 5000 images", "s", [46.2, 40.4]),
        ("cycle", "train: peak RSS above the stage's start, 5000 images", "MiB", [517.0, 582.4]),
        ("cycle", "cycle total for 5000 images (k=256, m=4, 32px)", "s", [60.9]),
        ("x", "a: seconds for 1 images (peak RSS +1 MiB)", "s", [1.0]),
    ]


def test_a_file_named_twice_counts_once(tmp_path: Path) -> None:
    a = _write(tmp_path / "run" / "a.json", [_heads(9.0)])
    readings, _ = summary.load([a, tmp_path / "run", a])
    assert [r.label for r in readings] == ["a"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: _empty(d), "no results of python -m bench"),
        (lambda d: _text(d / "x.json", '{"objective": 1}'), "is not a result of python -m bench"),
        (lambda d: _text(d / "x.json", '{"rows": [ '), "could not be read as JSON"),
        (
            lambda d: _text(
                d / "x.json", '{"rows": [{"bench": "heads", "unit": "x", "value": "?"}]}'
            ),
            "a row without a bench, a name or a numeric value",
        ),
    ],
)
def test_bad_inputs_are_refused_with_the_fix(
    tmp_path: Path,
    make: object,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        summary.summarise(summary.load([path])[0])
    assert summary.main([str(path)]) == 2
    assert message in capsys.readouterr().err


def _empty(d: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_main_flags_mixed_machines_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "zen3" / "r.json", [_heads(7.7)])
    _write(tmp_path / "xeon" / "r.json", [_heads(9.1)], cpu="Intel Xeon", family_model="6/143")
    out = tmp_path / "s" / "summary.json"
    assert summary.main([str(tmp_path), "--markdown", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: the readings come from 2 CPUs" in printed
    assert (
        "| heads | flat / hierarchical heads, time | 7.70x - 9.10x | 9.10, 7.70 | >= 8 | 1 of 2 |"
        in printed
    )
    record = json.loads(out.read_text())
    assert [r["label"] for r in record["readings"]] == ["xeon/r", "zen3/r"]
    (figure,) = record["figures"]
    assert (figure["low"], figure["high"], figure["met"]) == (7.7, 9.1, 1)
    assert [v[1] for v in figure["values"]] == [9.1, 7.7]
