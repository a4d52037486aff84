"""deepercluster: DeeperCluster (Caron et al., ICCV 2019, arXiv 1905.01278)."""

__version__ = "0.1.0"
