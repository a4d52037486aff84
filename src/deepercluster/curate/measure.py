"""Numbers that judge a curation: class balance, and planted duplicates found or merged wrongly."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["class_balance", "planted_duplicates"]


def class_balance(counts: np.ndarray) -> dict[str, float]:
    """Entropy and KL divergence to the uniform distribution of class (or tag) counts.

    Args:
        counts: (C,) images per class; classes with no image count (they are missing).

    Returns:
        ``entropy`` (nats), ``kl_to_uniform`` (``log C - entropy``, 0 when balanced),
        ``classes`` C and ``images``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    p = counts[counts > 0] / total if total else np.zeros(0)
    entropy = float(-(p * np.log(p)).sum())
    c = len(counts)
    return {
        "entropy": entropy,
        "kl_to_uniform": (math.log(c) - entropy) if c else 0.0,
        "classes": float(c),
        "images": total,
    }


def planted_duplicates(
    group: np.ndarray, original: np.ndarray, *, same_as: np.ndarray | None = None
) -> dict[str, float]:
    """How many planted copies a grouping found, and how many groups merged distinct images.

    Args:
        group: (N,) near-duplicate group per image (-1: in no group).
        original: (N,) the image each planted copy was made from, -1 for the others.
        same_as: (N,) for false merges only, the image each image counts as (-1: itself):
            duplicates the source data already held (found by inspection) are one origin.

    Returns:
        ``planted`` copies, ``found`` (in the same group as their original), ``recall``,
        ``false_merges`` (images grouped with an image of another origin: a group holding r
        distinct origins counts r - 1), ``removed`` (grouped images that are not their
        group's survivor) and the false merges per grouped image (``false_merge_rate``) and
        per removed image (``false_merges_per_removed``).
    """
    n = len(group)
    planted = np.flatnonzero(original >= 0)
    found = (group[planted] >= 0) & (group[planted] == group[original[planted]])
    origin = np.where(original >= 0, original, np.arange(n))
    if same_as is not None:
        alias = np.where(same_as >= 0, same_as, np.arange(n))
        while not np.array_equal(alias[alias], alias):  # chains c -> b -> a end at a
            alias = alias[alias]
        origin = alias[origin]
    grouped = np.flatnonzero(group >= 0)
    pairs = np.unique(np.stack([group[grouped], origin[grouped]]), axis=1)
    false_merges = int(pairs.shape[1] - np.unique(pairs[0]).size)
    removed = len(grouped) - int(np.unique(group[grouped]).size)
    return {
        "planted": float(len(planted)),
        "found": float(found.sum()),
        "recall": float(found.mean()) if len(planted) else 1.0,
        "false_merges": float(false_merges),
        "removed": float(removed),
        "false_merge_rate": false_merges / max(len(grouped), 1),
        "false_merges_per_removed": false_merges / max(removed, 1),
    }
