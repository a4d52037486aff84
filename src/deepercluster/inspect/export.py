"""``deepercluster export``: the trained trunk for other code, without the DeeperCluster heads.

The trunk comes from :func:`deepercluster.engine.run_folder.load_pretrained` (a run folder or
any file that holds one). Three forms:

- a plain ``state_dict`` (``torch.save`` of a dict of tensors): ``deepercluster.load_backbone``
  rebuilds the network from it (the architecture is read from the keys and shapes), and for
  VGG-16 at 224 px and ResNets with the ImageNet stem, without Sobel, torchvision's matching
  network loads it directly (:func:`deepercluster.models.convert.torchvision_backbone`);
- the same with the Sobel front folded into an exact RGB convolution (``fold_sobel`` first),
  for pipelines that feed plain RGB convs and want to fine-tune the first layer;
- ONNX (``export_onnx``), checked against PyTorch with onnxruntime (``check_onnx``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.jit._trace import TracerWarning

from deepercluster.models import Backbone

__all__ = ["check_onnx", "export_backbone", "export_onnx"]


def export_backbone(model: Backbone, path: str | Path) -> Path:
    """Write ``model``'s weights as a plain ``state_dict`` (atomically) and return ``path``.

    ``model`` is the trunk, never the heads; pass it through
    :func:`deepercluster.models.fold.fold_sobel` first for the RGB-folded form.
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_onnx(model: nn.Module, path: str | Path, *, resolution: int, opset: int = 17) -> Path:
    """Export ``model`` to ONNX: input ``images`` (B, 3, R, R), output ``features`` (B, D).

    The batch dimension is dynamic; the side is fixed at ``resolution`` (VGG-16's fc6 needs it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(1, 3, resolution, resolution)
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript; torch flags it as legacy,
        # and the tracer warns about our input-shape checks, which hold for every traced input.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def check_onnx(
    model: nn.Module, path: str | Path, *, resolution: int, batch: int = 2, seed: int = 0
) -> float:
    """Run the ONNX file with onnxruntime and PyTorch on the same random images.

    Returns:
        The largest absolute difference between the two (B, D) outputs.
    """
    import onnxruntime

    x = torch.from_numpy(
        np.random.default_rng(seed).standard_normal((batch, 3, resolution, resolution))
    ).float()
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["features"], {"images": x.numpy()})
    return float(np.abs(np.asarray(got) - expected).max())
