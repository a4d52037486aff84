"""Evaluation protocols of the paper on any labelled image collection (layer above engine).

They load run folders and checkpoints, open image collections, extract and cache per-layer
features, run the algorithms of :mod:`deepercluster.evaluation` (the parent package), and
write JSON, Markdown and PNG results: linear probes per layer, weighted kNN, cluster analysis
against labels or tags, and transfer by fine-tuning.
"""

from deepercluster.evaluation.protocols.clusters import label_agreement, tag_analysis
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
from deepercluster.evaluation.protocols.runs import (
    Pretrained,
    RunClusters,
    load_pretrained,
    load_run_clusters,
)

__all__ = [
    "FINAL",
    "LabelledCollection",
    "LayerFeatures",
    "LayerResult",
    "LinearProtocol",
    "Pretrained",
    "RunClusters",
    "class_labels",
    "extract_layers",
    "label_agreement",
    "load_pretrained",
    "load_run_clusters",
    "open_labelled",
    "pooled_side",
    "run_linear_probes",
    "tag_analysis",
]
