"""Data: image collections with stable ids, robust decoding, transforms, epoch plans, views.

Typical use::

    collection = open_collection("shards/train-{000..099}.tar")
    features_view = ClusterView(collection, ClusterTransform(224))
    plan = uniform_epoch_plan(pseudo_labels, size=len(collection), seed=0, epoch=3, rotation=True)
    train_view = TrainView(collection, TrainTransform(224), plan, seed=0, epoch=3)

Unreadable images come out of the views as zero tensors with a reason string; record them
in a ``SkipLog`` and write it next to the run's outputs.

Constants live in their modules (``transforms.IMAGENET_MEAN``/``IMAGENET_STD``,
``decode.IMAGE_EXTENSIONS``/``DEFAULT_MAX_PIXELS``, ``files.DEFAULT_MAX_BYTES``).
"""

from .collection import (
    ArrayCollection,
    Collection,
    ImageCollection,
    open_collection,
)
from .decode import BadImageError, decode_image, to_rgb
from .samplers import EpochPlan, storage_order, super_class_epoch_plan, uniform_epoch_plan
from .skiplog import SkipLog
from .sources import expand_braces
from .transforms import ClusterTransform, TrainTransform, normalize, rotate
from .views import ClusterView, TrainView

__all__ = [
    "ArrayCollection",
    "BadImageError",
    "ClusterTransform",
    "ClusterView",
    "Collection",
    "EpochPlan",
    "ImageCollection",
    "SkipLog",
    "TrainTransform",
    "TrainView",
    "decode_image",
    "expand_braces",
    "normalize",
    "open_collection",
    "rotate",
    "storage_order",
    "super_class_epoch_plan",
    "to_rgb",
    "uniform_epoch_plan",
]
