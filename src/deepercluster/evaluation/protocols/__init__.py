"""Evaluation protocols of the paper on any labelled image collection (layer above engine).

They read run folders and checkpoints through :mod:`deepercluster.engine.run_folder`, open
image collections, extract and cache per-layer features, run the algorithms of
:mod:`deepercluster.evaluation` (the parent package), and write JSON, Markdown and PNG results:
linear probes per layer, weighted kNN, cluster analysis against labels or tags, and transfer by
fine-tuning.
"""

from deepercluster.evaluation.protocols.cluster_task import label_agreement, tag_analysis
from deepercluster.evaluation.protocols.features import (
    FINAL,
    LayerFeatures,
    extract_layers,
    pooled_side,
)
from deepercluster.evaluation.protocols.labels import (
    LabelledCollection,
    class_labels,
    open_labelled,
)
from deepercluster.evaluation.protocols.linear import LayerResult, LinearProtocol, run_linear_probes

__all__ = [
    "FINAL",
    "LabelledCollection",
    "LayerFeatures",
    "LayerResult",
    "LinearProtocol",
    "class_labels",
    "extract_layers",
    "label_agreement",
    "open_labelled",
    "pooled_side",
    "run_linear_probes",
    "tag_analysis",
]
