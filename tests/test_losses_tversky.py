"""Tests for trainkit.losses.TverskyLoss against Salehi et al. 2017's index, counted pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainkit.losses import DiceLoss, TverskyLoss


def _batch(
    num_classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, num_classes, 4, 5, generator=g) * 2).to(dtype)
    target = torch.randint(0, num_classes, (2, 4, 5), generator=g)
    target[1, -1] = 255
    return logits, target


def _reference(
    probs: np.ndarray, target: np.ndarray, alpha: float, beta: float, weight: list[float] | None = None
) -> float:
    """1 - TP / (TP + alpha FP + beta FN) per class over the kept pixels, averaged over the present classes."""
    num_classes = probs.shape[1]
    losses, weights = [], []
    for c in range(num_classes):
        tp = fp = fn = 0.0
        present = False
        for n, h, w in np.ndindex(*target.shape):
            if target[n, h, w] == 255:
                continue
            p, y = probs[n, c, h, w], float(target[n, h, w] == c)
            tp, fp, fn = tp + p * y, fp + p * (1 - y), fn + (1 - p) * y
            present = present or y == 1
        if present:
            losses.append(1 - tp / (tp + alpha * fp + beta * fn))
            weights.append(1.0 if weight is None else weight[c])
    return float(np.dot(losses, weights) / np.sum(weights)) if losses else 0.0


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.5, 0.5), (1.0, 1.0), (0.9, 0.1), (0.0, 1.0)])
def test_multiclass_matches_the_index_counted_by_hand(alpha: float, beta: float) -> None:
    logits, target = _batch()
    probs = logits.double().softmax(1).numpy()
    loss = TverskyLoss(alpha=alpha, beta=beta)(logits, target)
    assert loss.item() == pytest.approx(_reference(probs, target.numpy(), alpha, beta), rel=1e-5)
    weight = [3.0, 1.0, 0.5]
    weighted = TverskyLoss(alpha=alpha, beta=beta, weight=torch.tensor(weight))(logits, target)
    assert weighted.item() == pytest.approx(_reference(probs, target.numpy(), alpha, beta, weight), rel=1e-5)


def test_binary_matches_the_index_and_beta_above_alpha_punishes_misses() -> None:
    logits, target = _batch(num_classes=2, seed=1)
    p1 = logits[:, :1].double().sigmoid()
    probs = torch.cat([1 - p1, p1], 1).numpy()
    # Binary mode is the foreground class alone: the reference's class 1 with class 0 left out.
    expected = _reference(probs, target.numpy(), 0.3, 0.7, weight=[0.0, 1.0])
    assert TverskyLoss("binary")(logits[:, :1], target).item() == pytest.approx(expected, rel=1e-5)
    # Predicts 1 of 2 positives (1 miss) vs. both positives plus 1 false alarm.
    target = torch.tensor([[[1, 1, 0, 0]]])
    misses = torch.tensor([[[[20.0, -20.0, -20.0, -20.0]]]])
    alarms = torch.tensor([[[[20.0, 20.0, 20.0, -20.0]]]])
    loss_fn = TverskyLoss("binary", alpha=0.3, beta=0.7)
    assert loss_fn(misses, target).item() == pytest.approx(1 - 1 / 1.7, abs=1e-6)
    assert loss_fn(alarms, target).item() == pytest.approx(1 - 2 / 2.3, abs=1e-6)


def test_half_and_half_is_dice() -> None:
    logits, target = _batch(seed=2)
    for mode, x, t in (
        ("multiclass", logits, target),
        ("binary", logits[:, :1], torch.where(target == 255, 255, target % 2)),
    ):
        tversky = TverskyLoss(mode, alpha=0.5, beta=0.5)(x, t)
        assert tversky.item() == pytest.approx(DiceLoss(mode)(x, t).item(), abs=1e-6)
    assert TverskyLoss(alpha=0.5, beta=0.5, classes=[1, 2])(logits, target).item() == pytest.approx(
        DiceLoss(classes=[1, 2])(logits, target).item(), abs=1e-6
    )


def test_probabilities_and_smoothing() -> None:
    probs = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[0, 1]]])
    # class 0: TP 0.8, FP 0.4, FN 0.2; class 1: TP 0.6, FP 0.2, FN 0.4; smooth 1 on top and bottom.
    expected = 1 - ((1.8 / (1.8 + 0.3 * 0.4 + 0.7 * 0.2)) + (1.6 / (1.6 + 0.3 * 0.2 + 0.7 * 0.4))) / 2
    assert TverskyLoss(from_logits=False, smooth=1.0)(probs, target).item() == pytest.approx(expected, abs=1e-6)


def test_ignored_pixels_change_nothing_and_get_no_gradient() -> None:
    logits, target = _batch(seed=3)
    kept = target != 255
    only_kept = TverskyLoss()(logits.movedim(1, -1)[kept].T.unsqueeze(0), target[kept].unsqueeze(0))  # [1, C, P]
    x = logits.clone().requires_grad_(True)
    loss = TverskyLoss()(x, target)
    assert loss.item() == pytest.approx(only_kept.item(), abs=1e-6)
    loss.backward()
    assert torch.all(x.grad[1, :, -1] == 0) and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_all_ignored_batch_gives_zero_and_a_zero_gradient(mode: str) -> None:
    logits, target = _batch()
    x = (logits if mode == "multiclass" else logits[:, :1]).clone().requires_grad_(True)
    loss = TverskyLoss(mode)(x, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_gradcheck_in_float64(mode: str) -> None:
    logits, target = _batch(seed=4, dtype=torch.float64)
    if mode == "binary":
        logits, target = logits[:, :1], torch.where(target == 255, 255, target % 2)
    loss_fn = TverskyLoss(mode, smooth=0.5)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits.requires_grad_(True),))


def test_errors_name_the_argument_and_the_fix() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"`alpha` and `beta` are both 0.*alpha weighs false positives"):
        TverskyLoss(alpha=0, beta=0)
    with pytest.raises(ValueError, match=r"`beta` must be a number >= 0; got -0.5"):
        TverskyLoss(beta=-0.5)
    with pytest.raises(
        ValueError, match=r"`TverskyLoss`: `weight` \(class weights\) applies to mode='multiclass'.*beta"
    ):
        TverskyLoss("binary", weight=torch.ones(1))
    with pytest.raises(ValueError, match=r"`classes=\[0, 3\]` names ids >= the input's 3 channels"):
        TverskyLoss(classes=[0, 3])(logits, target)
    with pytest.raises(
        ValueError, match=r"`TverskyLoss\(mode='multiclass'\)`: input \(2, 3, 4, 5\) does not fit target"
    ):
        TverskyLoss()(logits, target[:, :3])
