"""Curation: a balanced, de-duplicated subset of a pool of images, chosen by its own clusters.

The algorithms (arrays in, a decision per image out) live here: near-duplicate groups
(:mod:`.duplicates`) and who stays of each (:mod:`.survivors`), water-filling across the
hierarchy (:mod:`.sampling`), one whole selection (:mod:`.select`) and its files
(:mod:`.lists`). Reading a run folder and extracting
its embeddings is :mod:`deepercluster.curate.pipeline`, a layer above ``engine``; this
``__init__`` must not import it.
"""

from deepercluster.curate.duplicates import (
    DuplicateGroups,
    centroid_sweep,
    find_duplicates,
    neighbour_density,
)
from deepercluster.curate.sampling import allocate, pick_members, water_fill
from deepercluster.curate.select import Curation, select
from deepercluster.curate.settings import CurateSettings
from deepercluster.curate.survivors import Survivors, survivors

__all__ = [
    "CurateSettings",
    "Curation",
    "DuplicateGroups",
    "Survivors",
    "allocate",
    "centroid_sweep",
    "find_duplicates",
    "neighbour_density",
    "pick_members",
    "select",
    "survivors",
    "water_fill",
]
