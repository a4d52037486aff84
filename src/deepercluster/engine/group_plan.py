"""Which processes train which super-classes: the choice of the multi-process layout.

Pure data and arithmetic (no process group is touched): :func:`plan_groups` decides between
replicated heads and the paper's grouped layout, and :class:`GroupPlan` lists the ranks of
each training and clustering group, which ``distributed.make_groups`` then creates.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepercluster.config import LAYOUTS

__all__ = ["GROUPED_ABOVE_BYTES", "GroupPlan", "plan_groups"]

# auto switches to the grouped layout when every process holding all sub-heads (weights,
# gradients and momentum: 3 float32 copies) would need more than this.
GROUPED_ABOVE_BYTES = 1 << 30


@dataclass(frozen=True)
class GroupPlan:
    """Which processes train which super-classes (pure data; see :func:`plan_groups`).

    Attributes:
        layout: ``replicated`` (every rank all heads, data parallel) or ``grouped`` (the
            paper's: training group g = super-class g owns sub-head g).
        world_size: number of processes.
        n_super_classes: S.
        reason: one sentence for the log saying why this layout runs.
    """

    layout: str
    world_size: int
    n_super_classes: int
    reason: str
    n_super_clusters: int = 1

    @property
    def group_size(self) -> int:
        """Processes per training group (the whole world when replicated)."""
        return self.world_size // self.n_super_classes if self.grouped else self.world_size

    @property
    def grouped(self) -> bool:
        return self.layout == "grouped"

    def super_class_of(self, rank: int) -> int:
        """The super-class (= training group) of ``rank`` in the grouped layout."""
        if not self.grouped:
            raise ValueError("super_class_of needs the grouped layout")
        return rank // self.group_size

    def clustering_groups(self) -> list[list[int]]:
        """Ranks of the level-2 clustering group of each super-cluster (grouped layout).

        Group s = ranks [s W/m, (s+1) W/m) clusters super-cluster s's images; W is a multiple
        of S = 4m (or m), so of m. Empty when m == 1 (level 2 then uses every rank anyway).
        """
        m = self.n_super_clusters
        if not self.grouped or m < 2:
            return []
        g = self.world_size // m
        return [list(range(s * g, (s + 1) * g)) for s in range(m)]

    def training_groups(self) -> list[list[int]]:
        """Ranks of every training group, group g = super-class g (grouped layout)."""
        if not self.grouped:
            return []
        g = self.group_size
        return [list(range(s * g, (s + 1) * g)) for s in range(self.n_super_classes)]


def plan_groups(
    world_size: int,
    n_super_classes: int,
    *,
    layout: str = "auto",
    head_bytes: int = 0,
    n_super_clusters: int = 1,
) -> GroupPlan:
    """Choose the training layout for ``world_size`` processes and S super-classes.

    Args:
        world_size: number of processes.
        n_super_classes: S.
        layout: ``auto``, ``replicated`` or ``grouped`` (forced).
        head_bytes: memory of all sub-heads' weights (S * k/m * D * 4 bytes), which ``auto``
            weighs against :data:`GROUPED_ABOVE_BYTES`.
        n_super_clusters: m, for the level-2 clustering groups of the grouped layout.

    Raises:
        ValueError: unknown layout, or ``grouped`` forced where S does not divide the world.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"train.layout ({layout!r}) must be one of {', '.join(LAYOUTS)}")
    divides = world_size >= n_super_classes > 1 and world_size % n_super_classes == 0
    if layout == "grouped":
        if not divides:
            raise ValueError(
                f"train.layout=grouped needs the number of processes ({world_size}) to be a "
                f"multiple of the number of super-classes ({n_super_classes}, at least 2); "
                f"launch {max(2, n_super_classes)}*n processes or use train.layout=replicated"
            )
        return GroupPlan(
            "grouped", world_size, n_super_classes, "forced by train.layout", n_super_clusters
        )
    if layout == "replicated" or world_size == 1:
        why = "single process" if world_size == 1 else "forced by train.layout"
        return GroupPlan("replicated", world_size, n_super_classes, why)
    if not divides:
        why = f"{world_size} processes are not a multiple of {n_super_classes} super-classes"
        return GroupPlan("replicated", world_size, n_super_classes, why)
    if 3 * head_bytes <= GROUPED_ABOVE_BYTES:
        why = (
            f"the sub-heads fit on every process ({3 * head_bytes / 2**20:.0f} MiB with "
            "gradients and momentum), and replicated results equal a single process's"
        )
        return GroupPlan("replicated", world_size, n_super_classes, why)
    why = (
        f"the sub-heads would take {3 * head_bytes / 2**30:.1f} GiB per process; each of the "
        f"{n_super_classes} groups of {world_size // n_super_classes} holds only its own"
    )
    return GroupPlan("grouped", world_size, n_super_classes, why, n_super_clusters)
