"""Sobel front: responds to edges in the right channel, is frozen, and is saved with the model."""

from __future__ import annotations

import torch

from deepercluster.models import Sobel, build_backbone


def _vertical_step(h: int = 8, w: int = 8) -> torch.Tensor:
    img = torch.full((1, 3, h, w), -1.0)
    img[..., w // 2 :] = 1.0  # left half dark, right half bright: a vertical edge
    return img


def test_output_shape_keeps_resolution() -> None:
    out = Sobel()(torch.randn(4, 3, 10, 12))
    assert out.shape == (4, 2, 10, 12)


def test_vertical_edge_excites_x_channel_only() -> None:
    out = Sobel()(_vertical_step())
    # Zero padding makes the border see an artificial edge; judge the interior only.
    gx, gy = out[0, 0, 1:-1, 1:-1], out[0, 1, 1:-1, 1:-1]
    assert torch.equal(gy, torch.zeros_like(gy))
    # Interior columns 3 and 4 of the image straddle the step (columns 2 and 3 after cropping).
    assert (gx[:, 2:4].abs() > 1.0).all()
    assert torch.equal(gx[:, :2], torch.zeros_like(gx[:, :2]))
    assert torch.equal(gx[:, 4:], torch.zeros_like(gx[:, 4:]))


def test_horizontal_edge_excites_y_channel_only() -> None:
    out = Sobel()(_vertical_step().transpose(2, 3))
    gx, gy = out[0, 0, 1:-1, 1:-1], out[0, 1, 1:-1, 1:-1]
    assert torch.equal(gx, torch.zeros_like(gx))
    assert gy.abs().max() > 1.0


def test_grayscale_is_channel_mean() -> None:
    # A colour change with constant channel mean is invisible: the front sees no colour.
    img = torch.zeros(1, 3, 6, 6)
    img[:, 0, :, 3:] = 1.0
    img[:, 1, :, 3:] = -1.0
    assert torch.allclose(Sobel()(img), torch.zeros(1, 2, 6, 6))


def test_filters_are_frozen_buffers_saved_in_state_dict() -> None:
    sobel = Sobel()
    assert list(sobel.parameters()) == []
    assert set(sobel.state_dict()) == {"gray_weight", "sobel_weight"}
    assert all(not b.requires_grad for b in sobel.buffers())


def test_backbone_optimizer_never_sees_sobel_but_gradients_reach_the_input() -> None:
    model = build_backbone("small", sobel=True, resolution=16)
    assert isinstance(next(iter(model.children())), Sobel)
    assert not any(name.startswith("sobel") for name, _ in model.named_parameters())
    assert "sobel.sobel_weight" in model.state_dict()
    before = model.state_dict()["sobel.sobel_weight"].clone()

    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, weight_decay=0.1)
    model(x).square().sum().backward()
    optimizer.step()

    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.sobel is not None
    assert model.sobel.sobel_weight.grad is None
    assert torch.equal(model.state_dict()["sobel.sobel_weight"], before)


def test_follows_dtype() -> None:
    out = Sobel().double()(_vertical_step().double())
    assert out.dtype == torch.float64
