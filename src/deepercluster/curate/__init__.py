"""Curation: a balanced, de-duplicated subset of a pool of images, chosen by its own clusters.

The algorithms (arrays in, a decision per image out) live here: near-duplicate groups
(:mod:`.duplicates`), water-filling across the hierarchy (:mod:`.sampling`), one whole
selection (:mod:`.select`) and its files (:mod:`.lists`). Reading a run folder and extracting
its embeddings is :mod:`deepercluster.curate.pipeline`, a layer above ``engine``; this
``__init__`` must not import it.
"""

from deepercluster.curate.duplicates import (
    DuplicateGroups,
    Survivors,
    centroid_sweep,
    find_duplicates,
    survivors,
)
from deepercluster.curate.sampling import allocate, pick_members, water_fill
from deepercluster.curate.select import Curation, select
from deepercluster.curate.settings import CurateSettings

__all__ = [
    "CurateSettings",
    "Curation",
    "DuplicateGroups",
    "Survivors",
    "allocate",
    "centroid_sweep",
    "find_duplicates",
    "pick_members",
    "select",
    "survivors",
    "water_fill",
]
