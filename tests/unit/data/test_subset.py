"""A subset of a collection is a collection of its own: renumbered images, paths, labels."""

from __future__ import annotations

import numpy as np
import pytest

from deepercluster.data import ArrayCollection
from deepercluster.data.subset import CollectionSubset


def test_subset_renumbers_images_paths_and_labels() -> None:
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    base = ArrayCollection(images, labels=np.array([0, 1, 0, 1, 2]), class_names=["a", "b", "c"])
    sub = CollectionSubset(base, [4, 1])
    assert len(sub) == 2 and sub.paths == (base.path(4), base.path(1))
    assert np.array_equal(np.asarray(sub.read(0)), images[4])
    assert sub.labels is not None and sub.labels.tolist() == [2, 1]
    assert sub.class_names == ["a", "b", "c"] and sub.describe().startswith("2 of 5 ")
    assert sub.storage_groups().tolist() == [0, 0]
    with pytest.raises(ValueError, match="must not repeat"):
        CollectionSubset(base, [1, 1])
    with pytest.raises(ValueError, match=r"lie in 0\.\.4"):
        CollectionSubset(base, [5])
