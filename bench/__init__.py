"""Benchmarks of every DeeperCluster stage against the best the hardware or a library does.

Run ``python -m bench all --quick`` (minutes on 2 CPU cores) or ``python -m bench <name>``;
``--device cuda`` runs the same code on a GPU. See ``docs/performance.md``.
"""
