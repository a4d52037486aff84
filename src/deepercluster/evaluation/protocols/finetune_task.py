"""What ``deepercluster eval finetune`` does: pre-trained vs random start, same schedule."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from deepercluster.data import ClusterTransform, TrainTransform
from deepercluster.evaluation.protocols.finetune import (
    FinetuneSettings,
    LabelledImages,
    classifier,
    finetune,
    reinitialise,
)
from deepercluster.evaluation.protocols.report import markdown_table, plot_curves, write_result
from deepercluster.evaluation.protocols.tasks import Inputs, balanced_subset, open_inputs

__all__ = ["run_finetune_task"]


def run_finetune_task(
    inputs: Inputs, settings: FinetuneSettings, *, from_scratch: bool
) -> tuple[str, dict[str, Any]]:
    """Fine-tune the pre-trained trunk (and, with ``from_scratch``, the same net from random
    weights); writes ``finetune.{json,md,png}``.

    Returns:
        ``(markdown table, JSON payload)``.
    """
    pre, train, test, out = open_inputs(inputs)
    device = torch.device(inputs.device)
    res = pre.resolution
    train_idx = balanced_subset(train.labels, inputs.max_train)
    test_idx = balanced_subset(test.labels, inputs.max_test)
    augment = TrainTransform(res, scale=(settings.crop_scale_min, 1.0))
    train_view = LabelledImages(train.collection, train_idx, train.labels, augment, settings.seed)
    test_view = LabelledImages(
        test.collection, test_idx, test.labels, ClusterTransform(res, pre.resize)
    )
    torch.manual_seed(settings.seed)
    pretrained = classifier(pre.backbone, len(train.class_names), fold=settings.fold_sobel)
    starts = {"pre-trained": pretrained}
    if from_scratch:
        starts["random init"] = reinitialise(pretrained)
    results = {}
    for name, model in starts.items():
        print(f"fine-tuning from {name}:", flush=True)
        results[name] = finetune(
            model,
            train_view,
            test_view,
            settings,
            device=device,
            workers=inputs.workers,
            progress=inputs.progress,
            label=name,
        )
    rows = [
        [name, f"{r.test_top1[-1]:.2f}", f"{max(r.test_top1):.2f}", f"{r.seconds / 60:.1f}"]
        for name, r in results.items()
    ]
    header = (
        f"Fine-tuning `{pre.source}` on {len(train_idx)} images, tested on {len(test_idx)} "
        f"({len(train.class_names)} classes): all layers, {settings.epochs} epochs, SGD lr "
        f"{settings.lr:g} (cosine), batch {settings.batch_size}, seed {settings.seed}"
        f"{', Sobel folded into RGB' if settings.fold_sobel else ''}.\n\n"
    )
    table = markdown_table(["start", "final test top-1 %", "best epoch %", "minutes"], rows)
    payload = {
        "checkpoint": str(pre.source),
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "settings": asdict(settings),
        "runs": {k: asdict(v) for k, v in results.items()},
    }
    write_result(out, "finetune", payload, header + table)
    plot_curves(
        out / "finetune.png",
        {
            k: (list(range(1, len(v.test_top1) + 1)), list(v.test_top1), None)
            for k, v in results.items()
        },
        title="Fine-tuning: test accuracy per epoch",
        xlabel="epoch",
        ylabel="test top-1 (%)",
    )
    return header + table, payload
