"""ClusterView / TrainView: bad images become (zeros, reason), DataLoader workers, resume."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepercluster.data import (
    ArrayCollection,
    BadImageError,
    ClusterTransform,
    ClusterView,
    Collection,
    EpochPlan,
    SkipLog,
    TrainTransform,
    TrainView,
    open_collection,
    uniform_epoch_plan,
)

Encode = Callable[..., bytes]
WriteTar = Callable[[Path, Mapping[str, bytes]], Path]


def _plan(n: int, *, size: int, epoch: int = 0) -> EpochPlan:
    return uniform_epoch_plan(np.arange(n) % 3, size=size, seed=7, epoch=epoch, rotation=True)


def _folder_with_bad_files(root: Path, encode: Encode, bad: dict[str, tuple[bytes, str]]) -> Path:
    root.mkdir()
    for name in ("good1.png", "good2.jpg"):
        root.joinpath(name).write_bytes(encode((20, 16), "JPEG" if name.endswith("jpg") else "PNG"))
    for name, (data, _) in bad.items():
        root.joinpath(name).write_bytes(data)
    return root


def test_bad_files_are_skipped_with_reasons_and_logged(
    tmp_path: Path, encode: Encode, bad_files: dict[str, tuple[bytes, str]]
) -> None:
    collection = open_collection(_folder_with_bad_files(tmp_path / "imgs", encode, bad_files))
    view = ClusterView(collection, ClusterTransform(16))
    log = SkipLog()
    seen: list[int] = []
    for images, indices, errors in DataLoader(view, batch_size=3, num_workers=0):
        assert images.shape[1:] == (3, 16, 16)
        for image, index, error in zip(images, indices.tolist(), errors, strict=True):
            seen.append(index)
            if error:
                assert not image.any()
                log.record(collection.path(index), error)
    assert sorted(seen) == list(range(len(collection)))
    reasons = {Path(path).name: reason for path, reason in log.entries}
    assert set(reasons) == set(bad_files)
    for name, (_, kind) in bad_files.items():
        assert reasons[name].startswith(kind), (name, reasons[name])
    log.write_csv(tmp_path / "run" / "skipped.csv")
    assert (tmp_path / "run" / "skipped.csv").read_text().count("\n") == len(bad_files) + 1
    assert log.summary().startswith(f"{len(bad_files)} images skipped (")


def test_small_max_pixels_skips_as_bomb(tmp_path: Path, encode: Encode) -> None:
    (tmp_path / "a.png").write_bytes(encode((32, 32)))
    view = ClusterView(open_collection(tmp_path, max_pixels=100), ClusterTransform(8))
    _, _, error = view[0]
    assert error == "decompression bomb: 1024 pixels > limit 100"


def test_cluster_view_subset_and_determinism(class_folder: Path) -> None:
    collection = open_collection(class_folder)
    view = ClusterView(collection, ClusterTransform(16), indices=np.array([5, 2]))
    assert len(view) == 2
    image, index, error = view[0]
    assert index == 5 and error == "" and image.shape == (3, 16, 16)
    assert torch.equal(view[0][0], image)
    with pytest.raises(ValueError, match="indices must lie in"):
        ClusterView(collection, ClusterTransform(16), indices=np.array([7]))


def test_train_view_items_follow_the_plan() -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 20, 30, 3), dtype=np.uint8)
    plan = _plan(6, size=12)
    view = TrainView(ArrayCollection(images), TrainTransform(8), plan, seed=1, epoch=0)
    for j in range(12):
        image, index, rotation, error = view[j]
        assert (index, rotation, error) == (plan.indices[j], plan.rotations[j], "")
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    with pytest.raises(IndexError):
        view[12]


def test_resume_mid_epoch_sees_the_same_samples() -> None:
    images = np.random.default_rng(0).integers(0, 256, (9, 24, 24, 3), dtype=np.uint8)
    collection = ArrayCollection(images)
    plan = _plan(9, size=10, epoch=4)
    full = TrainView(collection, TrainTransform(12), plan, seed=3, epoch=4)
    resumed = TrainView(collection, TrainTransform(12), plan, seed=3, epoch=4, start=6)
    assert len(resumed) == 4
    for j in range(4):
        a, b = full[6 + j], resumed[j]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    other_epoch = TrainView(collection, TrainTransform(12), plan, seed=3, epoch=5)
    assert not torch.equal(other_epoch[0][0], full[0][0])
    with pytest.raises(ValueError, match="start must lie in"):
        TrainView(collection, TrainTransform(12), plan, seed=3, epoch=4, start=11)


def test_rotation_is_applied_after_the_transform() -> None:
    collection = ArrayCollection(
        np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    )
    transform = TrainTransform(8)
    for r in range(4):
        plan = EpochPlan(indices=np.zeros(1, np.int64), rotations=np.array([r], np.int64))
        image = TrainView(collection, transform, plan, seed=0, epoch=0)[0][0]
        upright = transform(collection.read(0), np.random.default_rng([0, 0, 0]))
        assert torch.equal(image, torch.rot90(upright, r, dims=(-2, -1)))


def test_dataloader_workers_over_tar_shards(tar_shards: list[Path]) -> None:
    spec = str(tar_shards[0].parent / "train-{000..002}.tar")
    with open_collection(spec) as collection:
        collection.read(0)  # parent opens a handle before the workers fork
        cluster = ClusterView(collection, ClusterTransform(16))
        expected = torch.stack([cluster[i][0] for i in range(len(cluster))])
        plan = _plan(len(collection), size=12)
        train = TrainView(collection, TrainTransform(16), plan, seed=0, epoch=0)
        train_expected = torch.stack([train[j][0] for j in range(len(train))])
        for workers in (0, 2):
            batches = list(DataLoader(cluster, batch_size=5, num_workers=workers))
            assert torch.equal(torch.cat([b[0] for b in batches]), expected)
            assert torch.cat([b[1] for b in batches]).tolist() == list(range(12))
            assert all(e == "" for b in batches for e in b[2])
            train_batches = list(DataLoader(train, batch_size=4, num_workers=workers))
            assert torch.equal(torch.cat([b[0] for b in train_batches]), train_expected)


def test_each_item_is_its_image_read_and_transformed(
    tmp_path: Path, encode: Encode, bad_files: dict[str, tuple[bytes, str]]
) -> None:
    # Good and unreadable images mixed; items fetched in any order.
    collection = open_collection(_folder_with_bad_files(tmp_path / "imgs", encode, bad_files))
    plan = _plan(len(collection), size=14)
    train = TrainView(collection, TrainTransform(8), plan, seed=3, epoch=1, start=2)
    cluster = ClusterView(collection, ClusterTransform(8), indices=plan.indices)
    n_bad = 0
    for j in reversed(range(len(train))):
        image, index, r, error = train[j]
        p = 2 + j
        assert (index, r) == (plan.indices[p], plan.rotations[p])
        c_image, c_index, c_error = cluster[p]
        assert c_index == index and c_error == error
        try:
            img = collection.read(index)
        except BadImageError as err:
            assert error == err.reason and not image.any() and not c_image.any()
            n_bad += 1
            continue
        assert error == ""
        assert torch.equal(
            image, TrainTransform(8)(img, np.random.default_rng([3, 1, p]), rotation=r)
        )
        assert torch.equal(c_image, ClusterTransform(8)(img))
    assert n_bad > 0
    with pytest.raises(IndexError, match="out of range"):
        train[len(train)]


class _ReadOnlyCollection:
    """A user's collection with only the three methods of the ``Collection`` protocol."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def path(self, index: int) -> str:
        return f"mine[{index}]"


def test_a_users_collection_gives_the_same_items() -> None:
    images = np.random.default_rng(2).integers(0, 256, (6, 20, 24, 3), dtype=np.uint8)
    mine, arrays = _ReadOnlyCollection(images), ArrayCollection(images)
    assert isinstance(mine, Collection)
    plan = _plan(6, size=6)
    ours, theirs = (TrainView(c, TrainTransform(16), plan, seed=3, epoch=0) for c in (mine, arrays))
    clusters = [ClusterView(c, ClusterTransform(16)) for c in (mine, arrays)]
    for j in range(6):
        for a, b in ((ours[j], theirs[j]), (clusters[0][j], clusters[1][j])):
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_a_subclass_overriding_read_is_read_through_its_read() -> None:
    class Dimmed(ArrayCollection):
        def read(self, index: int) -> Image.Image:
            return Image.fromarray(self.images[index] // 2)

    images = np.full((2, 8, 8, 3), 200, dtype=np.uint8)
    item = ClusterView(Dimmed(images), ClusterTransform(8))[1]
    reference = ClusterView(ArrayCollection(images // 2), ClusterTransform(8))[1]
    assert torch.equal(item[0], reference[0])
