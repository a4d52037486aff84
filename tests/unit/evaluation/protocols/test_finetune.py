"""Fine-tuning set-up: the folded RGB classifier equals the Sobel one; scratch shares nothing."""

from __future__ import annotations

import torch
from torch import nn

from deepercluster.evaluation.protocols.finetune import classifier, reinitialise
from deepercluster.models import build_backbone


def test_folded_classifier_has_a_trainable_rgb_first_conv_and_the_same_outputs() -> None:
    trunk = build_backbone("small", sobel=True, resolution=16).eval()
    folded = classifier(trunk, 3, fold=True).eval()
    kept = classifier(trunk, 3, fold=False).eval()
    kept[2].load_state_dict(folded[2].state_dict())  # same new head on both
    first = folded[0].sobel
    assert isinstance(first, nn.Conv2d) and first.weight.requires_grad
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), kept(x), atol=1e-4, rtol=1e-4)
    # the pre-trained trunk itself is left untouched
    assert not isinstance(trunk.sobel, nn.Conv2d)


def test_from_scratch_baseline_is_the_same_architecture_with_new_weights() -> None:
    model = classifier(build_backbone("small", sobel=True, resolution=16), 3, fold=True)
    fresh = reinitialise(model)
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in model.named_parameters()]
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        if name.endswith("weight") and a.dim() > 1:  # every conv/linear weight is re-drawn
            assert not torch.equal(a, b), name
