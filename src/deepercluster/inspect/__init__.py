"""See what the clusters found and take the results away (layer above ``engine``).

``inspect_run`` writes a static HTML report of a run folder; ``write_assignments`` exports
which image went into which cluster (CSV/Parquet); ``materialize`` lays the clusters out as
folders; ``embed_collection`` places new images in a run's clustering space;
``export_backbone`` writes the trained network for other code (state_dict, RGB-folded, ONNX).
"""

from deepercluster.inspect.assignments import Assignments, read_assignments, write_assignments
from deepercluster.inspect.embed import Embedding, embed_collection, nearest_clusters
from deepercluster.inspect.materialize import materialize
from deepercluster.inspect.report import ReportOptions, inspect_run

__all__ = [
    "Assignments",
    "Embedding",
    "ReportOptions",
    "embed_collection",
    "inspect_run",
    "materialize",
    "nearest_clusters",
    "read_assignments",
    "write_assignments",
]
