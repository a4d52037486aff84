"""Clustering of (N, D) float32 features: PCA whitening, k-means, DeeperCluster's hierarchy.

Works on numpy arrays only (numpy, scipy, faiss); never imports torch, models or data.
"""

from deepercluster.cluster.clustering_groups import hierarchical_kmeans_grouped
from deepercluster.cluster.distributed_kmeans import (
    fit_pca_distributed,
    hierarchical_kmeans_distributed,
    kmeans_distributed,
)
from deepercluster.cluster.hierarchical import (
    HierarchicalResult,
    balance_super_clusters,
    cluster_size_stats,
    hierarchical_kmeans,
    subcluster_seed,
)
from deepercluster.cluster.kmeans import (
    KMeansResult,
    accumulate,
    assign,
    check_features,
    faiss_threads,
    kmeans,
    lloyd,
    squared_distances,
    update_centroids,
)
from deepercluster.cluster.preprocess import (
    PCAWhitening,
    feature_moments,
    fit_pca,
    l2_normalize,
    pca_from_moments,
)
from deepercluster.cluster.reseed import (
    fill_empty,
    halve_one_sided,
    reseed_empty,
    split_members,
    split_sides,
)

__all__ = [
    "HierarchicalResult",
    "KMeansResult",
    "PCAWhitening",
    "accumulate",
    "assign",
    "balance_super_clusters",
    "check_features",
    "cluster_size_stats",
    "faiss_threads",
    "feature_moments",
    "fill_empty",
    "fit_pca",
    "fit_pca_distributed",
    "halve_one_sided",
    "hierarchical_kmeans",
    "hierarchical_kmeans_distributed",
    "hierarchical_kmeans_grouped",
    "kmeans",
    "kmeans_distributed",
    "l2_normalize",
    "lloyd",
    "pca_from_moments",
    "reseed_empty",
    "split_members",
    "split_sides",
    "squared_distances",
    "subcluster_seed",
    "update_centroids",
]
