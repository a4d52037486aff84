"""The sections of a run's configuration: frozen dataclasses validated in ``__post_init__``.

Derived quantities (number of super-classes, sub-clusters per super-cluster) are pure
properties, never written back into the config. Field names such as ``cluster.k`` and
``data.resolution`` are a public contract: scripts and documentation outside this repository
use them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

ARCHS = ("vgg16", "resnet18", "resnet50", "small")
SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("auto", "replicated", "grouped")
FEATURE_STORES = ("memory", "disk")
HEAD_INITS = ("random", "centroids")
SUPER_CARRIES = ("none", "rotation", "matched")
# Settings of earlier versions that no longer exist. Config files, config.json and checkpoints
# written by those versions still hold them: they are ignored with a notice, not refused.
REMOVED_SETTINGS = frozenset({"train.reuse_memory"})
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, name: str = "size") -> int:
    """Bytes in a size such as ``20GB``, ``512MiB`` or ``1.5TB`` (decimal units, or KiB...).

    Raises:
        ValueError: not a positive number followed by B, KB, MB, GB, TB, KiB, MiB, GiB or TiB.
    """
    body = text.strip().upper().replace(" ", "")
    digits = body.rstrip("KMGTIB")
    unit = body[len(digits) :]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or value <= 0:
        raise ValueError(f"{name} ({text!r}) must be a size such as 20GB, 512MB or 1.5TiB")
    return int(value * _SIZE_UNITS[unit])


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the images are and how they are turned into tensors."""

    path: str = ""
    """Folder tree, list file (.txt/.csv) or tar shards (glob or ``{000..099}`` braces)."""
    resolution: int = 224
    """Side of the square crops fed to the network (paper: 224; 32 or 64 for small images)."""
    resize: int = 0
    """Clustering-time resize of the shorter side before the centre crop; 0 = resolution*256/224."""
    crop_scale_min: float = 0.08
    """Lower bound of the random-resized-crop area fraction (torchvision default 0.08)."""
    hflip: bool = True
    """Random horizontal flips in training (paper: on); off for chiral data (digits, text)."""
    workers: int = 2
    """DataLoader worker processes (one is enough on CPU: decoding is ~2% of the work)."""
    max_pixels: int = 89_478_485
    """Images with more pixels are skipped as decompression bombs (Pillow's default limit)."""
    max_bytes: str = "256MiB"
    """Image files (and tar members) larger than this are skipped unread, e.g. "1GB" or a
    number of bytes: a huge or endless file (a symlink to /dev/zero) cannot fill the RAM."""
    path_column: str = "path"
    """Column holding the image path when ``path`` is a CSV file."""
    shard_buffer: int = 0
    """0: train in a fully random order; > 0: read each epoch shard by shard (tar shards in
    random order, members front to back) through a shuffle window of this many images, for
    storage that reads sequentially much faster than at random (network disks, HDDs)."""

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f"data.resolution ({self.resolution}) must be >= 16")
        if self.resize and self.resize < self.resolution:
            raise ValueError(
                f"data.resize ({self.resize}) must be 0 or >= data.resolution ({self.resolution})"
            )
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"data.crop_scale_min ({self.crop_scale_min}) must be in (0, 1]")
        if self.workers < 0:
            raise ValueError(f"data.workers ({self.workers}) must be >= 0")
        if self.max_pixels < 1:
            raise ValueError(f"data.max_pixels ({self.max_pixels}) must be positive")
        if self.shard_buffer < 0:
            raise ValueError(f"data.shard_buffer ({self.shard_buffer}) must be >= 0")
        parse_size(self.max_bytes, "data.max_bytes")

    @property
    def max_file_bytes(self) -> int:
        """``max_bytes`` as a number of bytes."""
        return parse_size(self.max_bytes, "data.max_bytes")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The convnet trunk."""

    arch: str = "vgg16"
    """One of vgg16 (the paper's VGG-16-BN), resnet18, resnet50, small (CPU-sized)."""
    sobel: bool = True
    """Fixed grayscale+Sobel front; the paper calls it crucial against colour clusters."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch ({self.arch!r}) must be one of {', '.join(ARCHS)}")


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Targets: hierarchical k-means on PCA-whitened features (ALGORITHM.md section 2)."""

    k: int = 10_000
    """Total number of sub-clusters (paper: 320,000 on 96M images)."""
    super_clusters: int = 4
    """m, the level-1 clusters; super-classes = 4m with rotation, m without."""
    rotation: bool = True
    """Predict (rotation, cluster) pairs; off gives plain DeepCluster."""
    reassign: int = 3
    """Re-cluster every this many epochs (paper: 3)."""
    pca_dim: int = 256
    """Dimension after PCA whitening (reference: 4096, DeepCluster: 256)."""
    whiten_power: float = 0.5
    """Eigenvalue power of the whitening (0 disables whitening, 0.5 = full)."""
    pca_sample: int = 0
    """Fit PCA on at most this many images (0 = all); the reference fits on a sample."""
    niter: int = 10
    """Lloyd iterations at each level (reference: 10)."""
    level1_sample: int = 0
    """Fit the level-1 k-means (the super-clusters) on at most this many random images, then
    assign every image to its nearest super-centroid (0 = all images, as the reference).
    A few centroids are well estimated from a sample; faiss.Kmeans' default would be 256
    images per super-cluster."""
    init: str = "random"
    """How each k-means picks its starting centroids: random (k distinct images, the paper's)
    or kmeans++ (spread-out seeds; recovers well-separated groups that random may merge)."""
    warm_start: bool = False
    """Start k-means from the previous centroids (reference flag warm_restart)."""
    head_init: str = "random"
    """How the heads start after each clustering: random (N(0, 0.01), the paper's) or
    centroids (each sub-head, and the super-cluster part of the super head, starts as a
    linear classifier of the new clusters fitted on the features the heads read, so training
    starts from heads that already agree with the targets on upright images). Costs one more
    pass over the features and k x D floats per process."""
    head_temperature: float = 2.0
    """With head_init=centroids: the starting logits vary by 1 / T over the images. Training
    sees crops, rotations and batch statistics that the clustering did not: at T = 1 the
    first steps' loss was above the random start's, at T = 2 below it."""
    super_carry: str = "none"
    """What the super-class head keeps across clusterings when m > 1 (with m = 1 it is always
    kept): none (the paper: reset), rotation (each row starts from the mean of the old rows
    of its rotation, plus the new super-cluster part), or matched (each new super-cluster
    takes the old rows of the old super-cluster it shares most images with)."""
    feature_store: str = "memory"
    """memory: PCA and k-means hold the features in RAM (fastest); disk: they stream them from
    the run folder in blocks, so RAM stays bounded whatever the collection size."""
    feature_dtype: str = "float32"
    """Features on disk as float32 or float16 (half the disk; k-means always sees float32)."""
    chunk_images: int = 16384
    """Images per extraction chunk, saved as it finishes: the most a crash can lose."""
    memory_limit: str = ""
    """RAM budget per process for the clustering data, e.g. "20GB" ("" = none): the disk
    store sizes its blocks from it; the memory store refuses to start a round beyond it."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"cluster.k ({self.k}) must be >= 1")
        if self.super_clusters < 1:
            raise ValueError(f"cluster.super_clusters ({self.super_clusters}) must be >= 1")
        if self.k % self.super_clusters:
            raise ValueError(
                f"cluster.k ({self.k}) must be divisible by cluster.super_clusters "
                f"({self.super_clusters}); try cluster.k="
                f"{max(1, round(self.k / self.super_clusters)) * self.super_clusters}"
            )
        if self.reassign < 1:
            raise ValueError(f"cluster.reassign ({self.reassign}) must be >= 1")
        if self.pca_dim < 1:
            raise ValueError(f"cluster.pca_dim ({self.pca_dim}) must be >= 1")
        if not 0.0 <= self.whiten_power <= 1.0:
            raise ValueError(f"cluster.whiten_power ({self.whiten_power}) must be in [0, 1]")
        if self.niter < 1:
            raise ValueError(f"cluster.niter ({self.niter}) must be >= 1")
        if self.pca_sample < 0:
            raise ValueError(f"cluster.pca_sample ({self.pca_sample}) must be >= 0")
        if self.level1_sample and self.level1_sample < self.super_clusters:
            raise ValueError(
                f"cluster.level1_sample ({self.level1_sample}) must be 0 (every image) or at "
                f"least cluster.super_clusters ({self.super_clusters}); faiss' rule of thumb "
                f"is 256 per super-cluster: {256 * self.super_clusters}"
            )
        if self.init not in ("random", "kmeans++"):
            raise ValueError(
                f"cluster.init ({self.init!r}) must be random or kmeans++; "
                "set cluster.init=random (the paper's) or cluster.init=kmeans++"
            )
        if self.head_init not in HEAD_INITS:
            raise ValueError(
                f"cluster.head_init ({self.head_init!r}) must be one of {', '.join(HEAD_INITS)}"
            )
        if self.head_temperature <= 0:
            raise ValueError(f"cluster.head_temperature ({self.head_temperature}) must be > 0")
        if self.super_carry not in SUPER_CARRIES:
            raise ValueError(
                f"cluster.super_carry ({self.super_carry!r}) must be one of "
                f"{', '.join(SUPER_CARRIES)}"
            )
        if self.feature_store not in FEATURE_STORES:
            raise ValueError(
                f"cluster.feature_store ({self.feature_store!r}) must be one of {FEATURE_STORES}"
            )
        if self.feature_dtype not in ("float32", "float16"):
            raise ValueError(
                f"cluster.feature_dtype ({self.feature_dtype!r}) must be float32 or float16"
            )
        if self.chunk_images < 1:
            raise ValueError(f"cluster.chunk_images ({self.chunk_images}) must be >= 1")
        if self.memory_limit:
            parse_size(self.memory_limit, "cluster.memory_limit")

    @property
    def memory_limit_bytes(self) -> int | None:
        """``memory_limit`` in bytes, None when unlimited."""
        return parse_size(self.memory_limit, "cluster.memory_limit") if self.memory_limit else None

    @property
    def n_super_classes(self) -> int:
        """S: rotation x super-cluster pairs (4m), or m without rotation."""
        return 4 * self.super_clusters if self.rotation else self.super_clusters

    @property
    def sub_per_super(self) -> int:
        """k/m: sub-clusters inside each super-cluster (size of every sub-class head)."""
        return self.k // self.super_clusters

    @property
    def needs_clustering(self) -> bool:
        """False for RotNet (k = m = 1): every image has the same cluster, nothing to fit."""
        return self.k > 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 100
    batch_size: int = 48
    """Images per step (paper: 48 per GPU)."""
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-5
    schedule: str = "constant"
    """Learning-rate schedule: constant (reference), cosine, or step."""
    warmup_epochs: int = 0
    step_epochs: int = 30
    """With schedule=step, multiply lr by 0.1 every this many epochs."""
    epoch_size: int = 0
    """Images drawn per epoch by the uniform sampler; 0 = as many as the collection holds."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    precision: str = "fp32"
    """fp32 or bf16 (autocast). bf16 pays on GPUs of compute capability 8+ and on CPUs with
    native bf16 (AMX, AVX-512 bf16); elsewhere autocast emulates it, many times slower than
    fp32, and a warning says so at start."""
    channels_last: bool = False
    """Keep conv weights and activations in NHWC order, the layout oneDNN and cuDNN prefer for
    convolutions (needed for the full bf16 gain); measure with ``python -m bench train``."""
    seed: int = 0
    checkpoint_every: int = 0
    """Also checkpoint every this many training iterations (0 = only at epoch ends)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default; the command line takes the usable cores)."""
    layout: str = "auto"
    """Multi-process layout: replicated heads, the paper's grouped layout (a multiple of S
    processes; each group holds one sub-head), or auto (grouped when the heads are big)."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs ({self.epochs}) must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"train.lr ({self.lr}) must be > 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"train.momentum ({self.momentum}) must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay ({self.weight_decay}) must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule ({self.schedule!r}) must be one of {SCHEDULES}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.warmup_epochs}) must be in [0, train.epochs)"
            )
        if self.step_epochs < 1:
            raise ValueError(f"train.step_epochs ({self.step_epochs}) must be >= 1")
        if self.epoch_size < 0:
            raise ValueError(f"train.epoch_size ({self.epoch_size}) must be >= 0")
        if self.device not in DEVICES:
            raise ValueError(f"train.device ({self.device!r}) must be one of {DEVICES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision ({self.precision!r}) must be one of {PRECISIONS}")
        if self.checkpoint_every < 0:
            raise ValueError(f"train.checkpoint_every ({self.checkpoint_every}) must be >= 0")
        if self.layout not in LAYOUTS:
            raise ValueError(f"train.layout ({self.layout!r}) must be one of {LAYOUTS}")
        if self.seed < 0:
            raise ValueError(f"train.seed ({self.seed}) must be >= 0")
        if self.threads < 0:
            raise ValueError(f"train.threads ({self.threads}) must be >= 0")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a run needs; written to ``out/config.json`` and into every checkpoint."""

    out: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.cluster.rotation and self.cluster.k == 1:
            raise ValueError(
                "cluster.rotation=false with cluster.k=1 leaves nothing to predict; "
                "set cluster.k > 1 (DeepCluster) or cluster.rotation=true (RotNet)"
            )
        if self.model.arch == "vgg16" and self.data.resolution % 32:
            raise ValueError(
                f"model.arch=vgg16 needs data.resolution divisible by 32 (five 2x poolings); "
                f"got {self.data.resolution}, try {max(32, 32 * round(self.data.resolution / 32))}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable nested dict (for config.json and checkpoints)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_toml(self) -> str:
        """The resolved configuration as TOML, loadable with :func:`load_config`."""
        lines = [f"out = {_toml_value(self.out)}"]
        for section in ("data", "model", "cluster", "train"):
            lines.append(f"\n[{section}]")
            for f in fields(getattr(self, section)):
                lines.append(f"{f.name} = {_toml_value(getattr(getattr(self, section), f.name))}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))
