"""Evaluation protocols of the paper on any labelled image collection (layer above engine).

They read run folders and checkpoints through :mod:`deepercluster.engine.run_folder`, open
image collections, extract and cache per-layer features, run the algorithms of
:mod:`deepercluster.evaluation` (the parent package), and write JSON, Markdown and PNG results:
linear probes per layer, weighted kNN, cluster analysis against labels or tags, and transfer by
fine-tuning.
"""
