"""Ground truth of an instance-retrieval benchmark: which database images answer each query.

Two formats, told apart by their content:

- The revisited Oxford and Paris files (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``, or the
  same dict as JSON): ``imlist`` (database image names), ``qimlist`` (query image names) and
  ``gnd``, one dict per query with ``bbx`` (the query's box, x1 y1 x2 y2) and ``easy``,
  ``hard``, ``junk`` (indices into ``imlist``). Scored under the Easy, Medium and Hard
  protocols. Names may lack the extension (``.jpg`` is assumed).
- A user's own queries, CSV or JSON. CSV: a header row with ``query`` and ``positives``
  columns, optional ``junk`` and ``bbox``; several paths in one cell are separated by ``;``,
  a bbox is ``x1 y1 x2 y2`` in pixels. JSON: ``{"queries": [{"query": path, "positives":
  [paths], "junk": [paths], "bbox": [x1, y1, x2, y2]}, ...]}``. Scored as one protocol,
  "all". Paths name images the way a labels CSV does (:mod:`deepercluster.data.pathmatch`):
  full, relative or bare file names.
"""

from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepercluster.data.pathmatch import match_paths
from deepercluster.evaluation.average_precision import REVISITED_SETUPS

__all__ = ["GroundTruth", "locate", "read_ground_truth"]

USER_SETUPS = {"all": (("positives",), ("junk",))}


@dataclass(frozen=True)
class GroundTruth:
    """Queries and their answers.

    Attributes:
        database: the D database image names.
        queries: the Q query image names.
        boxes: Q query boxes ``(x1, y1, x2, y2)`` or None (the whole image).
        lists: Q dicts ``{list name: (k,) int64 indices into database}``.
        setups: protocol name -> (list names that are positives, list names that are junk).
        whole_database: the database is every image of the searched collection, not only
            ``database`` (the names the lists mention): a user's file names only the answers.
    """

    database: list[str]
    queries: list[str]
    boxes: list[tuple[float, float, float, float] | None]
    lists: list[dict[str, np.ndarray]]
    setups: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    whole_database: bool = False

    def on_collection(self, positions: np.ndarray, paths: list[str]) -> GroundTruth:
        """The same truth over a whole collection whose ``paths`` hold ``database[k]`` at
        ``positions[k]``: the lists re-indexed into ``paths``."""
        lists = [{k: positions[v] for k, v in q.items()} for q in self.lists]
        return GroundTruth(list(paths), self.queries, self.boxes, lists, self.setups, False)

    def answers(self, setup: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Positive and junk database indices of every query under ``setup``."""
        pos_lists, junk_lists = self.setups[setup]
        empty = np.zeros(0, dtype=np.int64)
        pos = [np.concatenate([q.get(n, empty) for n in pos_lists]) for q in self.lists]
        junk = [np.concatenate([q.get(n, empty) for n in junk_lists]) for q in self.lists]
        return pos, junk


# numpy arrays are rebuilt from these (as torch's weights_only loader allows): data, no code
_NUMPY_GLOBALS = {
    (package, name)
    for package in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only containers, numbers, strings and numpy arrays: a ground-truth file runs
    no code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to the Python object {module}.{name}")


def _box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split() if isinstance(value, str) else list(value)
    if len(items) != 4:
        raise ValueError(f"{where}: a query box needs 4 numbers x1 y1 x2 y2, got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in items)
    return x1, y1, x2, y2


def _revisited(data: dict[str, Any], where: str) -> GroundTruth:
    database, queries = [str(n) for n in data["imlist"]], [str(n) for n in data["qimlist"]]
    if len(data["gnd"]) != len(queries):
        raise ValueError(
            f"{where}: {len(queries)} qimlist names but {len(data['gnd'])} gnd entries"
        )
    lists, boxes = [], []
    for q, entry in enumerate(data["gnd"]):
        lists.append({k: np.asarray(entry.get(k, []), dtype=np.int64).reshape(-1)
                      for k in ("easy", "hard", "junk")})  # fmt: skip
        if any(v.size and (v.min() < 0 or v.max() >= len(database)) for v in lists[-1].values()):
            raise ValueError(f"{where}: gnd[{q}] holds an index outside imlist")
        boxes.append(_box(entry.get("bbx"), f"{where} gnd[{q}]"))
    return GroundTruth(database, queries, boxes, lists, dict(REVISITED_SETUPS))


def _user(rows: list[dict[str, Any]], where: str) -> GroundTruth:
    database: list[str] = []
    index: dict[str, int] = {}

    def ids(value: Any) -> np.ndarray:
        names = [v.strip() for v in value.split(";")] if isinstance(value, str) else value or []
        for name in names:
            if name and name not in index:
                index[name] = len(database)
                database.append(name)
        return np.array([index[n] for n in names if n], dtype=np.int64)

    queries, boxes, lists = [], [], []
    for r, row in enumerate(rows):
        if not row.get("query") or row.get("positives") is None:
            raise ValueError(f"{where}: query {r + 1} needs a 'query' path and 'positives'")
        queries.append(str(row["query"]).strip())
        boxes.append(_box(row.get("bbox"), f"{where} query {r + 1}"))
        lists.append({"positives": ids(row["positives"]), "junk": ids(row.get("junk"))})
    if not queries:
        raise ValueError(f"{where} lists no queries")
    return GroundTruth(database, queries, boxes, lists, dict(USER_SETUPS), whole_database=True)


def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read a revisited ``.pkl``/``.json`` or a user ``.csv``/``.json`` (see the module doc).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is neither format, or is inconsistent (the message says how).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ground-truth file {path} does not exist; pass a revisited gnd_*.pkl or a "
            "CSV/JSON of queries (see `deepercluster eval retrieval --help`)"
        )
    where = str(path)
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                return _user(list(csv.DictReader(fh)), where)
        if path.suffix.lower() == ".pkl":
            with path.open("rb") as fh:
                data = _PlainUnpickler(fh).load()
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and {"imlist", "qimlist", "gnd"} <= set(data):
            return _revisited(data, where)
        if isinstance(data, dict) and isinstance(data.get("queries"), list):
            return _user(data["queries"], where)
    except (pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, EOFError,
            KeyError, TypeError, AttributeError) as exc:  # fmt: skip
        raise ValueError(
            f"{where} is not a readable ground-truth file ({type(exc).__name__}: {exc}); "
            "pass a revisited gnd_*.pkl/.json or a CSV/JSON of queries"
        ) from None
    raise ValueError(
        f"{where} holds neither the revisited keys imlist/qimlist/gnd nor a 'queries' list; "
        "see `deepercluster eval retrieval --help` for the formats"
    )


def locate(images: list[str], names: list[str], where: str) -> np.ndarray:
    """Position in ``images`` (display paths of a collection) of every name of ``names``.

    A name without an extension gets ``.jpg`` (the revisited files' convention).

    Raises:
        ValueError: a name matches no image, or two images (the message names one).
    """
    wanted = [n if Path(n).suffix else n + ".jpg" for n in names]
    try:
        row_of_image = match_paths(images, wanted)
    except ValueError as exc:
        if not str(exc).startswith("no row"):  # two names for one image: its message says
            raise
        row_of_image = np.full(len(images), -1, dtype=np.int64)  # reported just below
    out = np.full(len(names), -1, dtype=np.int64)
    for image, row in enumerate(row_of_image):
        if row < 0:
            continue
        if out[row] >= 0:
            raise ValueError(
                f"{names[row]!r} of the ground truth names two images of {where} "
                f"({images[out[row]]} and {images[image]}); write longer paths"
            )
        out[row] = image
    missing = np.flatnonzero(out < 0)
    if missing.size:
        raise ValueError(
            f"{missing.size} of {len(names)} names of the ground truth match no image of "
            f"{where} (first: {names[missing[0]]!r}); point the option at the folder holding them"
        )
    return out
