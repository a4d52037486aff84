"""Comparing pre-training methods on a labelled sample: ``deepercluster compare``.

Every method (a preset or a variant of one) is pre-trained with the same budget and scored
with the same ``eval`` protocols; :func:`run_compare` writes ``compare.{json,md,png}``.
Modules: ``methods`` (what each row runs), ``runs`` (pre-training, resumable), ``scores``
(probes, kNN, clusters, each kept in its own file), ``summary`` (means over seeds),
``report`` (Markdown and plot), ``progress`` (a line per step with the time left),
``settings`` (the arguments checked and resolved) and ``run`` (the driver).
"""

from deepercluster.evaluation.compare.run import run_compare
from deepercluster.evaluation.compare.settings import DEFAULT_METHODS, CompareSettings

__all__ = ["DEFAULT_METHODS", "CompareSettings", "run_compare"]
