"""Console logging and per-epoch metric files (JSONL, CSV, TensorBoard).

The console gets human-readable lines; the run folder gets ``metrics.jsonl`` (one JSON object
per record, the source of truth), ``metrics.csv`` (the same, flattened, for spreadsheets) and
TensorBoard event files under ``tb/``. Writers append, so a resumed run continues its files;
:meth:`MetricsWriter.keep_epochs` first cuts them back to the checkpoint's epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

LOGGER_NAME = "deepercluster"

FILE_ONLY = {"file_only": True}
"""``log.error(..., extra=FILE_ONLY)``: for ``train.log`` only, not the console (tracebacks:
the console gets one line with the fix)."""


def get_logger(name: str = "") -> logging.Logger:
    """A child of the package logger, e.g. ``get_logger("fit")``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def setup_logging(out_dir: Path | None = None, *, level: int = logging.INFO) -> None:
    """Log to stderr and, when ``out_dir`` is given, to ``out_dir/train.log``.

    Idempotent: calling it again replaces the handlers it installed before (tests and the
    Python API call it once per run).
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_deepercluster", False):
            logger.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    console._deepercluster = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
        file_handler.setFormatter(fmt)
        file_handler._deepercluster = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)


def close_log_file() -> None:
    """Stop writing ``train.log`` (at the end of a run; the console handler stays)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_deepercluster", False) and isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


class MetricsWriter:
    """Appends metric records to JSONL, CSV and TensorBoard files in a run folder.

    Args:
        out_dir: run folder; files are created on first write.
        tensorboard: also write TensorBoard event files under ``out_dir/tb``.
        enabled: False makes every call a no-op (ranks other than 0 of a distributed run).
    """

    def __init__(self, out_dir: Path, *, tensorboard: bool = True, enabled: bool = True) -> None:
        self.out_dir = out_dir
        self.enabled = enabled
        self._tb: Any = None
        if tensorboard and enabled:
            # Imported lazily: tensorboard pulls in protobuf, which is slow to import.
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out_dir / "tb"))

    def write(self, record: dict[str, Any], *, step: int) -> None:
        """Append one record (flat dict of str -> number/str) at global ``step`` (the epoch,
        from 1)."""
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        clean = {k: _jsonable(v) for k, v in record.items()}
        with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean, sort_keys=True) + "\n")
        self._append_csv(clean)
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key.replace(".", "/"), value, step)
            self._tb.flush()

    def keep_epochs(self, n_epochs: int) -> int:
        """Cut ``metrics.jsonl`` and ``metrics.csv`` back to the rows of the first ``n_epochs``
        epochs (a resumed run: rows written after its checkpoint would come twice). Rows number
        epochs from 1; a file written by a version that numbered them from 0 is renumbered.
        TensorBoard's events stay: it shows a repeated step as one more point.

        Returns:
            The number of rows removed from ``metrics.jsonl``.
        """
        if not self.enabled:
            return 0
        jsonl = self.out_dir / "metrics.jsonl"
        removed = 0
        if jsonl.exists():
            lines = [line for line in jsonl.read_text(encoding="utf-8").splitlines() if line]
            shift = _legacy_shift([_epoch_of(line) for line in lines])
            # A line cut short by a kill has no epoch (nan): it goes too.
            kept = [
                _renumbered(line, shift) for line in lines if _epoch_of(line) + shift <= n_epochs
            ]
            removed = len(lines) - len(kept)
            if removed or shift:
                _write_atomic(jsonl, "".join(line + "\n" for line in kept))
            if removed:
                get_logger("metrics").info(
                    "metrics.jsonl: %d row(s) past the checkpoint removed (they come again)",
                    removed,
                )
        table = self.out_dir / "metrics.csv"
        if table.exists():
            with table.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                rows = list(reader)
            shift = _legacy_shift([_epoch_of(r.get("epoch")) for r in rows])
            kept_rows = [
                {**r, "epoch": f"{_epoch_of(r.get('epoch')) + shift:g}"}
                for r in rows
                if _epoch_of(r.get("epoch")) + shift <= n_epochs
            ]
            if len(kept_rows) < len(rows) or shift:
                self._write_csv(header, kept_rows)
        return removed

    def _write_csv(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        path = self.out_dir / "metrics.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def _append_csv(self, record: dict[str, Any]) -> None:
        # The CSV is rewritten when a new column appears (e.g. clustering metrics only exist on
        # re-clustering epochs); the JSONL file stays the append-only source of truth.
        path = self.out_dir / "metrics.csv"
        rows: list[dict[str, Any]] = []
        header: list[str] = []
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                rows = list(reader)
        new_keys = [k for k in record if k not in header]
        if new_keys:
            header = header + new_keys
            rows.append({k: record.get(k, "") for k in header})
            self._write_csv(header, rows)
        else:
            with path.open("a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=header).writerow(
                    {k: record.get(k, "") for k in header}
                )

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _epoch_of(row: str | None) -> float:
    """The ``epoch`` of a JSONL line or of a CSV cell; nan (never kept) when unreadable."""
    try:
        value: Any = json.loads(row).get("epoch") if row and row[:1] == "{" else row
        return float(value)
    except (ValueError, TypeError, AttributeError):
        return math.nan


def _legacy_shift(epochs: list[float]) -> int:
    """1 for the rows of a version that numbered epochs from 0 (they hold an epoch 0), else 0."""
    return 1 if 0 in epochs else 0


def _renumbered(line: str, shift: int) -> str:
    if not shift:
        return line
    row = json.loads(line)
    row["epoch"] += shift
    return json.dumps(row, sort_keys=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return value


def format_record(record: dict[str, Any], keys: list[str]) -> str:
    """``key=value`` pairs for the console, floats shortened."""
    parts = []
    for key in keys:
        if key in record:
            value = record[key]
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
