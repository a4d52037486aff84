"""Evaluation algorithms: arrays or tensors in, numbers out (no data loading, no models).

Cluster agreement (NMI, AMI, ARI, purity), clusters against multi-label tags, linear probes
trained by SGD on frozen features, and weighted kNN. The protocols that load checkpoints and
images and write reports live in :mod:`deepercluster.evaluation.protocols`.
"""

from deepercluster.evaluation.agreement import ami, ari, contingency, purity
from deepercluster.evaluation.knn import knn_predict
from deepercluster.evaluation.linear import LinearProbe, SGDSettings, bottou_lr, train_linear_probes
from deepercluster.evaluation.nmi import nmi
from deepercluster.evaluation.tags import TagPairs

__all__ = [
    "LinearProbe",
    "SGDSettings",
    "TagPairs",
    "ami",
    "ari",
    "bottou_lr",
    "contingency",
    "knn_predict",
    "nmi",
    "purity",
    "train_linear_probes",
]
