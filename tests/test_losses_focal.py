"""Tests for trainkit.losses.FocalLoss against Lin et al. 2017's formula, written out per pixel in NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainkit.losses import FocalLoss


def _batch(
    num_classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, num_classes, 4, 5, generator=g) * 2).to(dtype)
    target = torch.randint(0, num_classes, (2, 4, 5), generator=g)
    target[0, 0, :3] = 255  # padding, as the presets write it
    return logits, target


def _reference_multiclass(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: list[float] | None = None
) -> float:
    """FL = -alpha_t (1 - p_t)^gamma log(p_t), summed over kept pixels and divided by the sum of alpha_t."""
    x, t = logits.double().numpy(), target.numpy()
    total = norm = 0.0
    for n, h, w in np.ndindex(*t.shape):
        c = int(t[n, h, w])
        if c == 255:
            continue
        z = x[n, :, h, w]
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        alpha = 1.0 if weight is None else weight[c]
        total += -alpha * (1 - p[c]) ** gamma * math.log(p[c])
        norm += alpha
    return total / norm if norm else 0.0


def _reference_binary(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None) -> float:
    """p_t = p if y = 1 else 1 - p; alpha_t = alpha if y = 1 else 1 - alpha; mean over kept pixels."""
    x, t = logits.double().reshape(-1).numpy(), target.reshape(-1).numpy()
    losses = []
    for xi, yi in zip(x, t, strict=True):
        if yi == 255:
            continue
        p = 1 / (1 + math.exp(-xi))
        pt = p if yi == 1 else 1 - p
        at = 1.0 if alpha is None else (alpha if yi == 1 else 1 - alpha)
        losses.append(-at * (1 - pt) ** gamma * math.log(pt))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_multiclass_matches_the_papers_formula(gamma: float) -> None:
    logits, target = _batch()
    assert FocalLoss(gamma=gamma)(logits, target).item() == pytest.approx(
        _reference_multiclass(logits, target, gamma), rel=1e-5
    )
    weight = [0.2, 1.0, 3.0]
    weighted = FocalLoss(gamma=gamma, weight=torch.tensor(weight))(logits, target)
    assert weighted.item() == pytest.approx(_reference_multiclass(logits, target, gamma, weight), rel=1e-5)


@pytest.mark.parametrize(("gamma", "alpha"), [(0.0, None), (2.0, None), (2.0, 0.25), (1.5, 0.9)])
def test_binary_matches_the_papers_formula(gamma: float, alpha: float | None) -> None:
    logits, target = _batch(num_classes=2, seed=1)
    logits = logits[:, :1]
    expected = _reference_binary(logits, target, gamma, alpha)
    for t in (target, target.float(), target.unsqueeze(1)):  # any 0/1 dtype, with or without the channel dim
        assert FocalLoss("binary", gamma=gamma, alpha=alpha)(logits, t).item() == pytest.approx(expected, rel=1e-5)


def test_gamma_zero_is_pytorchs_cross_entropy_and_bce() -> None:
    logits, target = _batch(seed=2, dtype=torch.float64)
    weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert FocalLoss(gamma=0.0, weight=weight)(logits, target).item() == pytest.approx(expected.item(), abs=1e-12)
    binary_target = (target == 1).double()
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], binary_target)
    assert FocalLoss("binary", gamma=0.0)(logits[:, :1], binary_target).item() == pytest.approx(expected.item())


def test_binary_agrees_with_torchvision_sigmoid_focal_loss() -> None:
    ops = pytest.importorskip("torchvision.ops")
    logits, target = _batch(num_classes=2, seed=3)
    target = target.clamp(0, 1).float()  # torchvision has no ignore_index
    expected = ops.sigmoid_focal_loss(logits[:, 0], target, alpha=0.25, gamma=2.0, reduction="mean")
    assert FocalLoss("binary", alpha=0.25)(logits[:, :1], target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_easy_pixels_fade_and_confident_ones_stay_finite() -> None:
    target = torch.tensor([[0, 0]])
    easy = FocalLoss()(torch.tensor([[[3.0, 3.0], [0.0, 0.0]]]), target)  # p_t = 0.95
    hard = FocalLoss()(torch.tensor([[[0.0, 0.0], [3.0, 3.0]]]), target)  # p_t = 0.05
    ce_ratio = math.log(1 + math.exp(-3)) / math.log(1 + math.exp(3))
    assert easy.item() / hard.item() < ce_ratio / 100  # (1 - p_t)^2 widens the gap by > 100x
    x = torch.tensor([[[200.0, -200.0], [-200.0, 200.0]]], requires_grad=True)
    for gamma in (0.0, 0.5, 2.0):  # p_t == 1 exactly: (1 - p_t)^0.5 has an infinite slope there
        loss = FocalLoss(gamma=gamma)(x, torch.tensor([[0, 1]]))
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.isfinite(grad).all()


def test_ignored_pixels_change_nothing_and_get_no_gradient() -> None:
    logits, target = _batch(seed=4)
    altered = logits.clone()
    altered[0, :, 0, :3] = 50.0
    for loss_fn in (FocalLoss(), FocalLoss(weight=torch.tensor([1.0, 2.0, 3.0]))):
        assert loss_fn(altered, target).item() == pytest.approx(loss_fn(logits, target).item(), rel=1e-6)
    x = logits[:, :1].clone().requires_grad_(True)
    FocalLoss("binary", alpha=0.75)(x, target.clamp(max=1).where(target != 255, 255)).backward()
    assert torch.all(x.grad[0, :, 0, :3] == 0) and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_all_ignored_batch_gives_zero_and_a_zero_gradient(mode: str) -> None:
    logits, target = _batch()
    if mode == "binary":
        logits = logits[:, :1]
    x = logits.clone().requires_grad_(True)
    weight = torch.ones(3) if mode == "multiclass" else None
    loss = FocalLoss(mode, weight=weight)(x, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_gradcheck_in_float64(mode: str) -> None:
    logits, target = _batch(seed=5, dtype=torch.float64)
    if mode == "binary":
        logits, target = logits[:, :1], torch.where(target == 255, 255, target % 2)
    loss_fn = FocalLoss(mode, gamma=1.5, alpha=0.6 if mode == "binary" else None)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits.requires_grad_(True),))


def test_bf16_autocast_computes_in_float32() -> None:
    logits, target = _batch(seed=6)
    reference = FocalLoss()(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = FocalLoss()(logits.bfloat16(), target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=0.05)


def test_errors_name_the_argument_and_the_fix() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"`FocalLoss`: `alpha` weighs the positive pixels of mode='binary'.*`weight="):
        FocalLoss(alpha=0.25)
    with pytest.raises(
        ValueError, match=r"`FocalLoss`: `weight` \(class weights\) applies to mode='multiclass'.*`alpha="
    ):
        FocalLoss("binary", weight=torch.ones(2))
    with pytest.raises(ValueError, match=r"`alpha` must be a number in \[0, 1\]; got 1.5"):
        FocalLoss("binary", alpha=1.5)
    with pytest.raises(ValueError, match=r"`gamma` must be a number >= 0; got -1"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match=r"`weight` has shape \(2,\) but the input has 3 classes"):
        FocalLoss(weight=torch.ones(2))(logits, target)
    with pytest.raises(TypeError, match=r"`FocalLoss\(mode='multiclass'\)` needs int64 class ids.*`target.long\(\)`"):
        FocalLoss()(logits, target.float())
    with pytest.raises(ValueError, match=r"`FocalLoss\(mode='binary'\)`: target holds values \[2\] outside \[0, 1\]"):
        FocalLoss("binary")(logits[:, :1], target)
    with pytest.raises(ValueError, match=r"`mode` must be one of \('multiclass', 'binary'\); got 'multilabel'"):
        FocalLoss("multilabel")
    assert FocalLoss().expects_class_indices and not FocalLoss("binary").expects_class_indices
