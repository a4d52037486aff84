"""The same figures across several suite runs: each figure's range and how often it met its target.

One run of ``python -m bench`` is one reading of every figure, and on a shared machine a
figure moves from one run to the next (docs/performance.md, "How it measures"). The tables
of the README and of docs/performance.md report ranges over several runs; this module makes
them from the JSON results instead of by hand::

    python -m bench.summary results/bench/round15/run2 results/bench/round16   # folders or files
    python -m bench.summary results/bench/round16 --markdown                   # a Markdown table
    python -m bench.summary results/bench/round16 --out /tmp/summary.json      # and a JSON copy

A folder stands for every suite result under it (``all-quick-cpu.json``, ``heads-quick-cpu.json``,
...), in name order; other JSON files there (e.g. ``bench.level1_sample``'s) are skipped and
listed. Readings taken on different CPUs are summarised together but flagged: a range across
machines says little.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import format_value
from bench.cycle import stage_memory_name, stage_time_name


@dataclass(frozen=True)
class Reading:
    """One suite result file.

    Attributes:
        label: the file's path relative to the common folder of all readings, without
            ``.json`` (e.g. ``round16/run1/all-quick-cpu``).
        machine: the CPU it ran on (model name and family/model), from ``machine_before``.
        rows: its rows, as ``python -m bench`` wrote them.
    """

    label: str
    machine: str
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Figure:
    """One figure over the readings that have it.

    Attributes:
        bench, name, unit, target: as in the result rows (``target`` empty: no target).
        values: (reading label, value, whether the target was met or None) in reading order.
    """

    bench: str
    name: str
    unit: str
    target: str
    values: tuple[tuple[str, float, bool | None], ...]

    @property
    def low(self) -> float:
        return min(v for _, v, _ in self.values)

    @property
    def high(self) -> float:
        return max(v for _, v, _ in self.values)

    @property
    def met(self) -> int:
        """Readings that met the target."""
        return sum(1 for _, _, ok in self.values if ok)

    @property
    def judged(self) -> int:
        """Readings with a target to meet."""
        return sum(1 for _, _, ok in self.values if ok is not None)


def _result_files(path: Path) -> tuple[dict[Path, dict[str, Any]], list[Path]]:
    """({file: record} of the suite results, other JSON files) at ``path``, a file or a folder
    searched recursively."""
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass result files or folders of them")
    candidates = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    results: dict[Path, dict[str, Any]] = {}
    others: list[Path] = []
    for file in candidates:
        record = _read_json(file)
        if _is_result(record):
            results[file.resolve()] = record
        else:
            others.append(file)
    if not path.is_dir() and others:
        raise ValueError(
            f"{path} is not a result of python -m bench (it has no list of 'rows'); pass the "
            "JSON that `python -m bench NAME --out FOLDER` wrote, or its folder"
        )
    return results, others


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} could not be read as JSON ({e}); remove it or fix it") from e


def _is_result(record: Any) -> bool:
    return isinstance(record, dict) and isinstance(record.get("rows"), list)


def load(paths: list[Path]) -> tuple[list[Reading], list[Path]]:
    """The suite results at ``paths`` (files, or folders searched recursively), in order.

    Returns:
        The readings, and the other JSON files found in the folders (skipped).

    Raises:
        ValueError: a path that does not exist, a named file that is not a suite result, a
            file that is not JSON, or no result at all.
    """
    records: dict[Path, dict[str, Any]] = {}  # in order; a file named twice counts once
    skipped: list[Path] = []
    for path in paths:
        found, others = _result_files(path)
        records.update((f, r) for f, r in found.items() if f not in records)
        skipped += others
    if not records:
        where = ", ".join(str(p) for p in paths)
        raise ValueError(f"no results of python -m bench under {where}; run the suite first")
    base = Path(os.path.commonpath([f.parent for f in records]))
    readings = []
    for file, record in records.items():
        machine = record.get("machine_before") or {}
        cpu = f"{machine.get('cpu', '?')} ({machine.get('cpu_family_model', '?')})"
        label = str(file.relative_to(base).with_suffix(""))
        readings.append(Reading(label, cpu, tuple(record["rows"])))
    return readings, skipped


# Before round 17, bench/cycle.py carried a stage's peak memory in its time row's name,
# e.g. "train: seconds for 5000 images (peak RSS +517 MiB)", so no two runs shared the name.
_OLD_CYCLE_ROW = re.compile(
    r"^(?P<stage>\w+): seconds for (?P<n>\d+) images \(peak RSS \+(?P<mib>\d+) MiB\)$"
)


def current_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """``row`` as today's suite writes it: an old cycle stage row becomes the time row and the
    peak-memory row that bench/cycle.py now writes (the memory, rounded to whole MiB in the
    old name, becomes the second row's value); any other row is returned as it is."""
    match = _OLD_CYCLE_ROW.match(str(row.get("name", ""))) if row.get("bench") == "cycle" else None
    if match is None:
        return [row]
    stage, n = match["stage"], match["n"]
    memory = {
        **row,
        "name": stage_memory_name(stage, n),
        "value": float(match["mib"]),
        "unit": "MiB",
        "detail": {},
    }
    return [{**row, "name": stage_time_name(stage, n)}, memory]


def summarise(readings: list[Reading]) -> list[Figure]:
    """Every figure with a unit (notes such as "bf16 rows skipped" have none), in the order
    of first appearance, with its value in each reading that has it. Rows of older suites
    are read as today's (:func:`current_rows`).

    Raises:
        ValueError: a row without a bench, a name or a numeric value.
    """
    values: dict[tuple[str, str, str, str], list[tuple[str, float, bool | None]]] = {}
    for reading in readings:
        for row in (r for old in reading.rows for r in current_rows(old)):
            if not row.get("unit"):
                continue
            try:
                key = (str(row["bench"]), str(row["name"]), str(row["unit"]), row.get("target", ""))
                value = float(row["value"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{reading.label}: a row without a bench, a name or a numeric value "
                    f"({str(row)[:80]}); pass only files that python -m bench wrote"
                ) from e
            values.setdefault(key, []).append((reading.label, value, row.get("ok")))
    return [Figure(*key, values=tuple(v)) for key, v in values.items()]


def _range(f: Figure) -> str:
    low, high = format_value(f.low, f.unit), format_value(f.high, f.unit)
    return low if low == high else f"{low} - {high}"


def _met(f: Figure) -> str:
    return f"{f.met} of {f.judged}" if f.judged else ""


def _each(f: Figure) -> str:
    return ", ".join(f"{v:.2f}" if f.unit == "x" else f"{v:.3g}" for _, v, _ in f.values)


def text_table(figures: list[Figure]) -> str:
    """A plain-text table: figure, range, target, readings that met it, every value."""
    lines = [f"{'bench':8} {'figure':78} {'range':>22}  {'target':9} {'met':8} values"]
    for f in figures:
        lines.append(
            f"{f.bench:8} {f.name[:78]:78} {_range(f):>22}  {f.target:9} {_met(f):8} {_each(f)}"
        )
    return "\n".join(lines)


def markdown_table(figures: list[Figure]) -> str:
    """The same as a Markdown table."""
    lines = ["| bench | figure | range | values | target | met |", "|---|---|---|---|---|---|"]
    for f in figures:
        name = f.name.replace("|", "\\|")
        lines.append(f"| {f.bench} | {name} | {_range(f)} | {_each(f)} | {f.target} | {_met(f)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="result files or folders of them")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--out", type=Path, help="also write the summary to this JSON file")
    args = p.parse_args(argv)
    try:
        readings, skipped = load(args.paths)
        figures = summarise(readings)
    except ValueError as e:
        print(f"bench.summary: {e}", file=sys.stderr)
        return 2
    for i, reading in enumerate(readings, 1):
        print(f"reading {i}: {reading.label} on {reading.machine}")
    for file in skipped:
        print(f"skipped (not a suite result): {file}")
    machines = sorted({r.machine for r in readings})
    if len(machines) > 1:
        print(
            f"WARNING: the readings come from {len(machines)} CPUs ({'; '.join(machines)}): "
            "each range mixes them"
        )
    print()
    print(markdown_table(figures) if args.markdown else text_table(figures))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "readings": [{"label": r.label, "machine": r.machine} for r in readings],
            "figures": [asdict(f) | {"low": f.low, "high": f.high, "met": f.met} for f in figures],
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
