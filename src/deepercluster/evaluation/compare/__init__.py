"""Comparing pre-training methods on a labelled sample: ``deepercluster compare``.

Every method (a preset or a variant of one) is pre-trained with the same budget and scored
with the same ``eval`` protocols; :func:`run_compare` writes ``compare.{json,md,png}``.
Modules: ``methods`` (what each row runs), ``runs`` (pre-training, resumable), ``scores``
(probes, kNN, clusters, each kept in its own file), ``summary`` (means over seeds),
``report`` (Markdown and plot), ``progress`` (a line per step with the time left) and ``run``
(the driver).
"""

from deepercluster.evaluation.compare.run import DEFAULT_METHODS, CompareSettings, run_compare

__all__ = ["DEFAULT_METHODS", "CompareSettings", "run_compare"]
