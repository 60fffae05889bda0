"""Every loss through ``trainkit.Trainer``: targets padded with 255 by the training preset, one epoch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import trainkit
from trainkit.losses import DiceCELoss, DiceLoss, FocalLoss, LovaszLoss, TverskyLoss


@pytest.fixture(scope="module")
def padded_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of 2 images 3x16x16 whose masks (3 classes) the preset padded with 255."""
    from torchvision import tv_tensors

    from trainkit.data import collate
    from trainkit.data.transforms import train_preset

    torch.manual_seed(0)
    preset = train_preset(16, scale=(0.5, 0.5), color_jitter=0.0)  # half the crop: the rest is padding
    samples = []
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        image = tv_tensors.Image(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=g))
        mask = tv_tensors.Mask((torch.arange(20).view(1, 20) // 7).expand(20, 20).clone())  # stripes 0, 1, 2
        samples.append(preset(image, mask))
    batches = [collate(samples[:2]), collate(samples[2:])]
    assert all(b[1].dtype == torch.int64 and (b[1] == 255).any() and (b[1] != 255).any() for b in batches)
    return batches


LOSSES = [
    FocalLoss(),
    FocalLoss(weight=torch.tensor([0.5, 1.0, 2.0])),
    FocalLoss("binary", alpha=0.75),
    TverskyLoss(),
    TverskyLoss("binary"),
    LovaszLoss(),
    LovaszLoss(per_image=True),
    LovaszLoss("binary"),
    DiceLoss(weight=torch.tensor([0.5, 1.0, 2.0])),
    DiceCELoss(weight=torch.tensor([0.5, 1.0, 2.0])),
    DiceCELoss("binary", pos_weight=2.0),
]


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: f"{type(f).__name__}({f.extra_repr()})")
def test_one_epoch_on_padded_masks(loss_fn: nn.Module, padded_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    binary = getattr(loss_fn, "mode", "") == "binary"
    batches = [(x, torch.where(y == 255, 255, (y == 1).long()) if binary else y) for x, y in padded_batches]
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1 if binary else 3, 3, padding=1)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, device="cpu", amp=False, progress=False
    )  # fp32: the expected value below is computed in fp32
    history = trainer.fit(batches, batches[:1], epochs=1)
    assert math.isfinite(history[0]["train/loss"]) and history[0]["train/loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():  # the validation loss is the loss of the trained model on the batch
        expected = loss_fn(model(batches[0][0]), batches[0][1]).item()
    assert history[0]["val/loss"] == pytest.approx(expected, rel=1e-5)
