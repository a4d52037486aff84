"""Checkpoints as plain data, written atomically, loaded with ``weights_only=True``.

A checkpoint holds everything needed to continue a run bit-for-bit: model and head weights,
optimizer state, the position in the run (epoch, iteration inside the epoch), RNG states, and
the current targets (PCA, centroids, assignments, which images are readable), plus the resolved
config as a nested dict and the package version. Numpy arrays are stored as tensors so the
file loads with ``torch.load(..., weights_only=True)`` (no pickled objects).
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepercluster.config import REMOVED_SETTINGS, diff_configs
from deepercluster.engine.failures import CheckpointError, io_error_of
from deepercluster.version import __version__

CHECKPOINT_NAME = "checkpoint.pth"
PREVIOUS_NAME = "checkpoint.prev.pth"
"""The checkpoint before the last one, kept by each save: a damaged latest one falls back to
it (see :func:`deepercluster.engine.resume.load_latest`)."""

# Settings that may change between an interrupted run and its resumption without making the
# saved state wrong: where/how it runs, and extending the number of epochs.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "data.path",
        "data.workers",
        "train.device",
        "train.threads",
        "train.checkpoint_every",
        "train.epochs",
        "train.precision",
        "train.channels_last",
        "train.layout",
        "cluster.memory_limit",
    }
)


class IncompatibleCheckpointError(ValueError):
    """The run folder holds a checkpoint made with settings that change the results."""


@dataclass(frozen=True)
class TrainingState:
    """Position of a run, saved with every checkpoint.

    Attributes:
        epoch: epoch in progress (0-based).
        iteration: next training iteration inside ``epoch`` (0 = the epoch has not trained).
        clustered_epoch: the epoch whose clustering produced the current targets (-1: none).
        position: images of the epoch's sampling plan already consumed; a resume on another
            world size (another global batch, so another iteration count) starts from here.
    """

    epoch: int
    iteration: int
    clustered_epoch: int
    position: int = 0


def arrays_to_tensors(tree: Any) -> Any:
    """Recursively turn numpy arrays (and numpy scalars) into tensors / Python numbers."""
    if isinstance(tree, np.ndarray):
        # np.ascontiguousarray would turn 0-d arrays into 1-d ones; copy keeps the shape.
        return torch.from_numpy(tree.copy(order="C"))
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {k: arrays_to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(arrays_to_tensors(v) for v in tree)
    return tree


def tensors_to_arrays(tree: Any) -> Any:
    """Inverse of :func:`arrays_to_tensors` (tensors become numpy arrays)."""
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    if isinstance(tree, dict):
        return {k: tensors_to_arrays(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tensors_to_arrays(v) for v in tree)
    return tree


def save_checkpoint(path: Path, payload: dict[str, Any], *, keep_previous: bool = False) -> None:
    """Write ``payload`` (plus the package version) to ``path`` atomically.

    Written to a temporary file in the same folder, flushed to disk, then renamed over the old
    checkpoint: a run killed mid-write leaves the previous checkpoint intact. On any error
    (a full disk, say) the temporary file is removed and the old checkpoint stays.

    Args:
        path: the file to write.
        payload: tensors and plain data.
        keep_previous: first keep the old ``path`` as :data:`PREVIOUS_NAME` beside it. A hard
            link, then two renames: at every moment ``path`` exists, whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            torch.save({**payload, "version": __version__}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _keep_previous(path: Path) -> None:
    previous = path.with_name(PREVIOUS_NAME)
    link = path.with_name(f".{PREVIOUS_NAME}.tmp-{os.getpid()}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a file system without hard links: a copy, then the same rename
        link.write_bytes(path.read_bytes())
    os.replace(link, previous)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is cut short, overwritten, not a checkpoint, or holds
            pickled Python objects (never unpickled); the message says which, not how to
            unpickle it.
        OSError: the storage failed (full disk, EIO), as the original error.
    """
    try:
        with warnings.catch_warnings():
            # Random bytes read as an old-format pickle make torch warn about "protocol 73".
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:
        io = io_error_of(exc)
        if io is exc:
            raise
        if io is not None:
            raise io from exc
        # Torch's message advises unpickling the file anyway: never pass it on.
        raise CheckpointError(path, _problem(path, exc)) from None
    if not isinstance(payload, dict):
        raise CheckpointError(path, f"is not a checkpoint (it holds a {type(payload).__name__})")
    return payload


def _problem(path: Path, exc: Exception) -> str:
    """What is wrong with a file torch could not load, in words that do not mislead.

    Anything may come out of reading random bytes (IndexError, KeyError, UnicodeDecodeError:
    the weights-only unpickler takes them for an old-format checkpoint); a zip file cut short
    fails in torch's reader, whose first sentence says where.
    """
    if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
        return (
            "holds pickled Python objects besides tensors, which are never loaded "
            "(a file from another program, or a tampered one)"
        )
    if path.stat().st_size == 0:
        return "is damaged (empty)"
    with path.open("rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"  # every checkpoint torch writes is a zip
    if not zipped:
        return "is damaged (its contents are not a checkpoint)"
    first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RuntimeError) and first.startswith("PytorchStreamReader"):
        return f"is damaged (cut short or overwritten: {first})"
    return "is damaged (cut short or overwritten)"


def check_compatible(saved_config: dict[str, Any], config: dict[str, Any], path: Path) -> list[str]:
    """Refuse to resume with settings that would make the saved state wrong.

    Returns:
        The tolerated differences (see :data:`RESUMABLE_CHANGES`), for the log.

    Raises:
        IncompatibleCheckpointError: naming every setting that differs and the two ways out.
    """
    changed = diff_configs(saved_config, config)
    # A removed setting is in the saved config only; it changed nothing the state depends on.
    changed = [key for key in changed if key not in REMOVED_SETTINGS]
    blocking = [key for key in changed if key not in RESUMABLE_CHANGES]
    if blocking:
        details = ", ".join(
            f"{key}: {_lookup(saved_config, key)!r} in the checkpoint "
            f"vs {_lookup(config, key)!r} now"
            for key in blocking
        )
        raise IncompatibleCheckpointError(
            f"{path} was written with different settings ({details}). Resume with the original "
            f"settings, or choose a new output folder to start a fresh run."
        )
    return changed


def check_resumable(payload: dict[str, Any], cfg: Any, *, n_images: int, path: Path) -> list[str]:
    """All the reasons a checkpoint cannot continue this run, as errors naming the fix.

    Args:
        payload: the loaded checkpoint.
        cfg: the current :class:`~deepercluster.config.RunConfig`.
        n_images: size of the collection now.
        path: the checkpoint file (for messages).

    Returns:
        The tolerated setting changes, for the log.
    """
    tolerated = check_compatible(payload["config"], cfg.to_dict(), path)
    if "train.epochs" in tolerated and cfg.train.schedule != "constant":
        raise IncompatibleCheckpointError(
            f"{path}: train.epochs changed ({payload['config']['train']['epochs']} -> "
            f"{cfg.train.epochs}) but the {cfg.train.schedule} learning-rate schedule is "
            "computed from it, so the rate would jump; keep train.epochs, or start a new run"
        )
    if payload["n_images"] != n_images:
        raise IncompatibleCheckpointError(
            f"{path} was trained on {payload['n_images']} images but the data now has "
            f"{n_images}; point data.path at the original images or use a new output folder"
        )
    return tolerated


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def rng_state() -> dict[str, Any]:
    """Torch RNG states (CPU and, when present, CUDA); dropout is the only global-RNG user."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_backbone(path: Path, backbone: torch.nn.Module, cfg: Any) -> None:
    """Write the trained trunk alone, with what is needed to rebuild it (for users and probes).

    The file holds ``arch``, ``sobel``, ``resolution``, ``state_dict`` and the run config; the
    network expects RGB input normalised with ImageNet mean/std (the Sobel front is inside).
    """
    save_checkpoint(
        path,
        {
            "arch": cfg.model.arch,
            "sobel": cfg.model.sobel,
            "resolution": cfg.data.resolution,
            "state_dict": backbone.state_dict(),
            "config": cfg.to_dict(),
        },
    )


def load_backbone(path: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a trained trunk from any of the files that hold one.

    Accepted: a run's ``backbone.pth`` or full ``checkpoint.pth``; a plain ``state_dict``
    written by ``deepercluster export`` (RGB-folded or not: the architecture is read from the
    keys and shapes); a ``{"state_dict": ...}`` file in the authors' released layout
    (``module.body.features.*``), converted on the fly. Always loaded with
    ``weights_only=True``.

    Returns:
        The backbone in eval mode; (B, 3, H, W) ImageNet-normalised RGB -> (B, feature_dim).

    Raises:
        ValueError: the file holds no backbone we can rebuild (the message says why).
    """
    from deepercluster.models import build_backbone
    from deepercluster.models.convert import (
        backbone_from_state_dict,
        convert_reference_state_dict,
    )

    try:
        payload = load_checkpoint(Path(path))
    except CheckpointError as exc:
        if not exc.problem.startswith("holds pickled"):
            raise
        # e.g. a training script's checkpoint that also pickled its argparse Namespace
        raise exc.with_fix(
            "if you trust the file, save its weights alone (a dict of tensors) with torch "
            "and pass that file"
        ) from None
    model: torch.nn.Module
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        model = backbone_from_state_dict(payload)  # an exported plain state_dict
    elif "state_dict" in payload and "arch" not in payload:
        model = backbone_from_state_dict(convert_reference_state_dict(payload["state_dict"]))
    elif "state_dict" in payload:
        model = build_backbone(
            payload["arch"], sobel=payload["sobel"], resolution=payload["resolution"]
        )
        model.load_state_dict(payload["state_dict"])
    elif "model" in payload and "config" in payload:
        cfg = payload["config"]
        model = build_backbone(
            cfg["model"]["arch"], sobel=cfg["model"]["sobel"], resolution=cfg["data"]["resolution"]
        )
        model.load_state_dict(payload["model"])
    else:
        raise ValueError(
            f"{path} holds no backbone (keys {sorted(payload)[:6]}); pass a run's backbone.pth "
            "or checkpoint.pth, or a file written by `deepercluster export`"
        )
    return model.to(device).eval()
