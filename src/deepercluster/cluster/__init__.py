"""Clustering of (N, D) float32 features: PCA whitening, k-means, DeeperCluster's hierarchy.

One k-means loop in torch (:func:`lloyd`) on the device where the features are, and one PCA
fit from moments (:func:`fit_pca`), over :class:`Blocks` of rows: in memory, streamed from a
:class:`~deepercluster.cluster.store.FeatureStore`, or sharded over a process group. Never
imports models or data.
"""

from deepercluster.cluster.balance import balance, balance_super_clusters
from deepercluster.cluster.blocks import Blocks, as_blocks, row_blocks
from deepercluster.cluster.clustering_groups import hierarchical_kmeans_grouped
from deepercluster.cluster.hierarchical import (
    ClusterRun,
    HierarchicalResult,
    cluster_size_stats,
    hierarchical_kmeans,
    subcluster_seed,
)
from deepercluster.cluster.kmeans import (
    INIT_METHODS,
    KMeansResult,
    assign,
    check_features,
    kmeans,
    lloyd,
)
from deepercluster.cluster.preprocess import (
    PCAWhitening,
    feature_moments,
    fit_pca,
    l2_normalize,
    pca_from_moments,
)
from deepercluster.cluster.reseed import fill_empty, reseed_empty, split_members

__all__ = [
    "INIT_METHODS",
    "Blocks",
    "ClusterRun",
    "HierarchicalResult",
    "KMeansResult",
    "PCAWhitening",
    "as_blocks",
    "assign",
    "balance",
    "balance_super_clusters",
    "check_features",
    "cluster_size_stats",
    "feature_moments",
    "fill_empty",
    "fit_pca",
    "hierarchical_kmeans",
    "hierarchical_kmeans_grouped",
    "kmeans",
    "l2_normalize",
    "lloyd",
    "pca_from_moments",
    "reseed_empty",
    "row_blocks",
    "split_members",
    "subcluster_seed",
]
