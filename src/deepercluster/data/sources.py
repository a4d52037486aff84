"""Turning a user's data spec into an ordered list of images: folders, list files, CSV
files, and shard patterns (globs and ``{000..099}`` / ``{a,b}`` brace expansion).

Every function here returns paths in a deterministic order, because an image's position in
that order is its id for the whole run (cluster assignments and checkpoints refer to it).
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from .decode import IMAGE_EXTENSIONS
from .pathtable import PathTable, common_folder
from .tarshards import is_image_name

__all__ = [
    "PATH_COLUMNS",
    "FolderScan",
    "TableScan",
    "expand_braces",
    "has_pattern",
    "no_images_message",
    "read_csv_file",
    "read_list_file",
    "resolve_pattern",
    "scan_folder",
]

_GLOB_CHARS = re.compile(r"[*?\[]")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
#: CSV columns taken as the image paths, in this order, when the path column is not named.
PATH_COLUMNS = ("path", "file", "filepath", "image")


@dataclass(frozen=True)
class FolderScan:
    """Images found under a folder, sorted by relative path."""

    paths: Sequence[str]
    labels: np.ndarray | None  # (N,) int64 index into class_names, or None
    class_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TableScan:
    """Images named by a CSV file, with its other columns."""

    paths: Sequence[str]
    metadata: dict[str, list[str]]


def no_images_message(where: str) -> str:
    """The error text for a source that holds no images, with the fix."""
    shown = ", ".join(IMAGE_EXTENSIONS[:4])
    return (
        f"no image files ({shown}, ...) found under {where}; point --data at a folder, "
        f"list file, CSV or tar shards"
    )


def scan_folder(root: str) -> FolderScan:
    """Every image under ``root`` (recursively, following symlinks, skipping hidden entries).

    Paths are sorted by their relative path components, so ids do not depend on the file
    system's listing order. When every image sits inside a first-level sub-folder, the
    sorted sub-folder names become ``class_names`` and ``labels`` index them (ImageNet-style
    ``train/<class>/<image>`` layouts); otherwise ``labels`` is None.

    Raises:
        ValueError: No image files under ``root``.
    """
    root = os.path.abspath(root)
    found: list[tuple[str, ...]] = []
    seen_dirs: set[str] = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        # Symlinked folders can form cycles; visit each real folder once.
        real = os.path.realpath(folder)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        prefix = () if rel == "." else tuple(rel.split(os.sep))
        found.extend((*prefix, name) for name in filenames if is_image_name(name))
    if not found:
        raise ValueError(no_images_message(root))
    found.sort()
    paths = PathTable(
        (os.path.join(root, *parts) for parts in found), prefix=os.path.join(root, "")
    )
    if all(len(parts) >= 2 for parts in found):
        class_names = sorted({parts[0] for parts in found})
        lookup = {name: i for i, name in enumerate(class_names)}
        labels = np.array([lookup[parts[0]] for parts in found], dtype=np.int64)
        return FolderScan(paths, labels, class_names)
    return FolderScan(paths, None, [])


def read_list_file(list_file: str) -> PathTable:
    """Paths listed one per line; relative ones are resolved against the list's folder.

    Blank lines and lines starting with ``#`` are skipped. Files are not checked here (that
    would stat millions of files up front); a missing one is reported when it is read. The
    file is read twice (shared folder, then the table), never held as a list of strings.

    Raises:
        ValueError: The list names no path.
    """
    base = os.path.dirname(os.path.abspath(list_file))

    def entries() -> Iterator[str]:
        with open(list_file, encoding="utf-8") as f:
            for line in f:
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    yield os.path.join(base, os.path.expanduser(entry))

    paths = PathTable(entries(), prefix=common_folder(entries()))
    if not paths:
        raise ValueError(
            f"list file {list_file} names no images; write one image path per line "
            f"(relative paths are resolved against the list's folder)"
        )
    return paths


def read_csv_file(csv_file: str, path_column: str = "path") -> TableScan:
    """Paths from a CSV file with a header row; the other columns become metadata.

    The path column is ``path_column``; when that is the default "path" and absent, the
    first of "file", "filepath", "image" present is used. Relative paths are resolved against
    the CSV's folder; rows with an empty path are skipped.

    Raises:
        ValueError: No header, no usable path column, or no rows.
    """
    base = os.path.dirname(os.path.abspath(csv_file))
    # utf-8-sig: spreadsheets often save a byte-order mark that would glue onto the first
    # column's name and hide the "path" column.
    with open(csv_file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        if not columns:
            raise ValueError(f"CSV file {csv_file} is empty; it needs a header row with a path")
        column = _pick_path_column(columns, path_column, csv_file)
        others = [c for c in columns if c != column]
        paths: list[str] = []
        metadata: dict[str, list[str]] = {c: [] for c in others}
        for row in reader:
            entry = (row.get(column) or "").strip()
            if not entry:
                continue
            paths.append(os.path.join(base, os.path.expanduser(entry)))
            for c in others:
                value = row.get(c)
                metadata[c].append(value if isinstance(value, str) else "")
    if not paths:
        raise ValueError(f"CSV file {csv_file} has a {column!r} column but no image rows")
    return TableScan(PathTable(paths), metadata)


def has_pattern(spec: str) -> bool:
    """True when ``spec`` contains glob characters or an expandable brace group."""
    return bool(_GLOB_CHARS.search(spec)) or len(expand_braces(spec)) > 1


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, in order.

    ``{a,b}`` lists and numeric ranges ``{000..099}`` (zero-padded ends keep their width;
    an optional step ``{0..10..2}``; descending ranges allowed). Groups nest and combine:
    ``s{0..1}-{a,b}.tar`` → ``s0-a.tar, s0-b.tar, s1-a.tar, s1-b.tar``. A brace group with no
    comma and no range (``{x}``) stays literal, as in bash.

    Args:
        pattern: Text that may contain brace groups.

    Returns:
        The expansions; ``[pattern]`` when there is nothing to expand.
    """
    start = 0
    while True:
        group = _next_group(pattern, start)
        if group is None:
            return [pattern]
        open_at, close_at, alternatives = group
        if alternatives is not None:
            break
        start = open_at + 1
    head, tail = pattern[:open_at], pattern[close_at + 1 :]
    tails = expand_braces(tail)
    return [
        head + alt + t for option in alternatives for alt in expand_braces(option) for t in tails
    ]


def resolve_pattern(spec: str) -> list[str]:
    """Files named by a glob and/or brace pattern, in pattern order (each glob sorted).

    Raises:
        FileNotFoundError: Nothing matches, or some brace-expanded names do not exist.
    """
    matched: list[str] = []
    missing: list[str] = []
    expansions = expand_braces(os.path.expanduser(spec))
    for candidate in expansions:
        if _GLOB_CHARS.search(candidate):
            hits = sorted(glob.glob(candidate))
            if not hits:
                missing.append(candidate)
            matched.extend(hits)
        elif os.path.exists(candidate):
            matched.append(candidate)
        else:
            missing.append(candidate)
    if not matched:
        raise FileNotFoundError(
            f"pattern {spec!r} matched no files; check the folder and the pattern, e.g. "
            f"'shards/train-{{000..099}}.tar' or 'shards/train-*.tar'"
        )
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{len(missing)} of {len(expansions)} names from pattern {spec!r} do not exist "
            f"({shown}); fix the range in the pattern or copy the missing shards"
        )
    return list(dict.fromkeys(matched))  # a file matched twice keeps its first position


def _pick_path_column(columns: list[str], wanted: str, csv_file: str) -> str:
    if wanted in columns:
        return wanted
    if wanted == "path":
        for name in PATH_COLUMNS:
            if name in columns:
                return name
    raise ValueError(
        f"CSV file {csv_file} has no {wanted!r} column (columns: {', '.join(columns)}); name "
        f"the column holding image paths 'path', or pass path_column=<its name>"
    )


def _next_group(pattern: str, start: int) -> tuple[int, int, list[str] | None] | None:
    """The first balanced ``{...}`` at or after ``start``: (open, close, alternatives or None)."""
    open_at = pattern.find("{", start)
    while open_at != -1:
        depth = 0
        commas: list[int] = []
        for i in range(open_at, len(pattern)):
            char = pattern[i]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    body = pattern[open_at + 1 : i]
                    if commas:
                        cuts = [open_at, *commas, i]
                        parts = [pattern[a + 1 : b] for a, b in pairwise(cuts)]
                        return open_at, i, parts
                    return open_at, i, _numeric_range(body)
            elif char == "," and depth == 1:
                commas.append(i)
        open_at = pattern.find("{", open_at + 1)  # unbalanced: try a later brace
    return None


def _numeric_range(body: str) -> list[str] | None:
    found = _RANGE.match(body)
    if found is None:
        return None
    first, last = int(found.group(1)), int(found.group(2))
    step = abs(int(found.group(3) or 1)) or 1
    ends = (found.group(1).lstrip("-"), found.group(2).lstrip("-"))
    padded = any(len(e) > 1 and e.startswith("0") for e in ends)
    width = max(len(found.group(1)), len(found.group(2))) if padded else 0
    values = range(first, last + 1, step) if first <= last else range(first, last - 1, -step)
    return [f"{v:0{width}d}" for v in values]
