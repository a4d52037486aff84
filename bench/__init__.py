"""Benchmarks of every DeeperCluster stage against the best the hardware or a library does.

Run ``python -m bench all --quick`` (minutes on 2 CPU cores) or ``python -m bench <name>``;
``--device cuda`` runs the same code on a GPU. See ``docs/performance.md``.
"""

# Before anything imports torch: the suite runs with torch's huge pages as a training run does
# (deepercluster.allocator.request_huge_pages; THP_MEM_ALLOC_ENABLE=0 in the environment turns
# them off for a comparison).
import deepercluster  # noqa: F401
