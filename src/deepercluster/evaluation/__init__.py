"""evaluation subpackage."""

from deepercluster.evaluation.nmi import nmi

__all__ = ["nmi"]
