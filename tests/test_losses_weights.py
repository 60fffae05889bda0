"""Tests for class imbalance in trainkit.losses: ``class_weights``, ``weight=`` of Dice and ``pos_weight=``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainkit.losses import DiceCELoss, DiceLoss, class_weights


def _batch(num_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 4, 5, generator=g) * 2
    target = torch.randint(0, num_classes, (2, 4, 5), generator=g)
    target[0, -1] = 255
    return logits, target


# ----------------------------------------------------------------------------- class_weights


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        ("inverse", lambda f: 1 / f),
        ("inverse_sqrt", lambda f: 1 / math.sqrt(f)),
        ("log", lambda f: 1 / math.log(1.02 + f)),  # ENet, Paszke et al. 2016
    ],
)
def test_class_weights_follow_each_formula_scaled_to_mean_one(method: str, raw: object) -> None:
    counts = [7000, 2500, 400, 100]
    frequencies = [n / sum(counts) for n in counts]
    unscaled = [raw(f) for f in frequencies]  # type: ignore[operator]
    expected = [w / np.mean(unscaled) for w in unscaled]
    weights = class_weights(counts, method=method)
    assert weights.dtype == torch.float32 and weights.shape == (4,)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.mean().item() == pytest.approx(1.0) and weights.argsort().tolist() == [0, 1, 2, 3]


def test_class_weights_from_checks_histogram_and_other_containers() -> None:
    expected = class_weights([900, 90, 10]).tolist()
    histogram = {0: 900, 2: 10, 1: 90, 255: 12345}  # what `trainkit.data.check(...).class_histogram` holds
    assert class_weights(histogram).tolist() == pytest.approx(expected)
    assert class_weights({np.int64(0): 900, np.int64(1): 90, np.int64(2): 10}).tolist() == pytest.approx(expected)
    assert class_weights(torch.tensor([900, 90, 10])).tolist() == pytest.approx(expected)
    assert class_weights(np.array([0.9, 0.09, 0.01])).tolist() == pytest.approx(expected)  # frequencies work too
    # A mapping names only the classes it saw: num_classes adds the others, absent (weight 0).
    padded = class_weights({0: 900, 1: 90, 2: 10, 255: 1}, num_classes=5)
    assert padded.tolist() == pytest.approx([*expected, 0.0, 0.0])
    assert class_weights({0: 5, 255: 5}, ignore_index=None, num_classes=256)[255].item() > 0


def test_class_weights_give_absent_classes_zero_and_work_as_loss_weights() -> None:
    weights = class_weights([750, 0, 250], method="inverse")
    assert weights.tolist() == pytest.approx([0.5, 0.0, 1.5])
    logits, target = _batch()
    counts = torch.bincount(target[target != 255], minlength=3)
    weight = class_weights(counts)
    loss = DiceCELoss(dice_weight=0.0, weight=weight)(logits, target)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, weight=weight, ignore_index=255).item())


def test_pos_weight_from_class_weights_is_the_negative_to_positive_ratio() -> None:
    w = class_weights([9000, 1000], method="inverse")
    assert (w[1] / w[0]).item() == pytest.approx(9.0)
    w = class_weights([9000, 1000], method="inverse_sqrt")
    assert (w[1] / w[0]).item() == pytest.approx(3.0)


def test_class_weights_errors_name_the_argument_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"`method` must be one of \('inverse', 'inverse_sqrt', 'log'\); got 'median'"):
        class_weights([1, 2], method="median")
    with pytest.raises(ValueError, match=r"`counts` has no pixel in any class \(\[0.0, 0.0\]\)"):
        class_weights([0, 0])
    with pytest.raises(ValueError, match=r"`counts` must be finite pixel counts >= 0; got \[5.0, -1.0\]"):
        class_weights([5, -1])
    with pytest.raises(ValueError, match=r"`counts` has 256 entries, so it holds the count of `ignore_index=255`.*"):
        class_weights(torch.ones(256))
    with pytest.raises(ValueError, match=r"`counts` has class ids \[3\] >= `num_classes=3`; raise `num_classes`"):
        class_weights({0: 1, 3: 1}, num_classes=3)
    with pytest.raises(ValueError, match=r"`counts` has 2 entries but `num_classes=3`; give one per class"):
        class_weights([1, 2], num_classes=3)
    with pytest.raises(ValueError, match=r"`counts` must be 1-D \(one count per class\); got shape \(2, 2\)"):
        class_weights([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"`counts` keys must be class ids >= 0"):
        class_weights({-1: 3, 0: 1})
    with pytest.raises(TypeError, match=r"`counts` must be a sequence, array or tensor.*got int"):
        class_weights(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`counts` must hold numbers of pixels; got 'a'"):
        class_weights(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"`num_classes` must be an int or None; got 2.0"):
        class_weights([1, 2], num_classes=2.0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- weight= of DiceLoss


def _per_class_dice(logits: torch.Tensor, target: torch.Tensor) -> dict[int, float]:
    """1 - Dice of each class present among the kept pixels, counted pixel by pixel."""
    probs = logits.double().softmax(1)
    out = {}
    for c in range(logits.shape[1]):
        inter = card = 0.0
        for n, h, w in np.ndindex(*target.shape):
            if target[n, h, w] == 255:
                continue
            p, y = probs[n, c, h, w].item(), float(target[n, h, w] == c)
            inter, card = inter + p * y, card + p + y
        if (target == c).any():
            out[c] = 1 - 2 * inter / card
    return out


def test_dice_weight_is_a_weighted_mean_over_present_classes() -> None:
    logits, target = _batch(num_classes=4, seed=1)
    target[target == 3] = 0  # class 3 absent: its weight takes no part
    per_class = _per_class_dice(logits, target)
    weight = [0.5, 2.0, 1.0, 100.0]
    expected = sum(weight[c] * v for c, v in per_class.items()) / sum(weight[c] for c in per_class)
    loss = DiceLoss(weight=torch.tensor(weight))(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Scale-free, equal weights are no weights, and `classes` picks among the weighted classes.
    assert DiceLoss(weight=torch.tensor(weight) * 7)(logits, target).item() == pytest.approx(loss.item(), rel=1e-6)
    assert DiceLoss(weight=torch.full((4,), 3.0))(logits, target).item() == pytest.approx(
        DiceLoss()(logits, target).item(), rel=1e-6
    )
    selected = DiceLoss(weight=torch.tensor(weight), classes=[1, 2])(logits, target)
    assert selected.item() == pytest.approx((2.0 * per_class[1] + per_class[2]) / 3.0, rel=1e-5)


def test_dice_ce_weight_goes_to_the_cross_entropy_only() -> None:
    logits, target = _batch(seed=2)
    weight = torch.tensor([0.2, 1.0, 3.0])
    loss = DiceCELoss(weight=weight)(logits, target)
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert loss.item() == pytest.approx(ce.item() + DiceLoss()(logits, target).item(), rel=1e-6)


# ----------------------------------------------------------------------------- pos_weight= of DiceCELoss


def _bce_reference(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> float:
    """-(pos_weight * y * log(p) + (1 - y) * log(1 - p)), averaged over the kept pixels."""
    losses = []
    for x, y in zip(logits.double().reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True):
        if y == 255:
            continue
        p = 1 / (1 + math.exp(-x))
        losses.append(-(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p)))
    return float(np.mean(losses))


def test_pos_weight_weighs_the_positive_pixels_of_the_bce_term() -> None:
    logits, target = _batch(num_classes=2, seed=3)
    logits = logits[:, :1]
    for pos_weight in (1.0, 4.0, torch.tensor([0.25])):
        loss = DiceCELoss("binary", dice_weight=0.0, pos_weight=pos_weight)(logits, target)
        assert loss.item() == pytest.approx(_bce_reference(logits, target, float(pos_weight)), rel=1e-6)
    kept = target != 255  # as torch's BCEWithLogitsLoss(pos_weight=...) on the kept pixels
    torch_bce = F.binary_cross_entropy_with_logits(
        logits[:, 0][kept], target[kept].float(), pos_weight=torch.tensor(4.0)
    )
    with_dice = DiceCELoss("binary", pos_weight=4.0)(logits, target.float())
    assert with_dice.item() == pytest.approx(torch_bce.item() + DiceLoss("binary")(logits, target).item(), rel=1e-6)


def test_pos_weight_is_a_buffer_and_all_ignored_gives_zero() -> None:
    loss_fn = DiceCELoss("binary", pos_weight=3.0)
    assert "pos_weight" in loss_fn.state_dict() and loss_fn.to(torch.float64).pos_weight.dtype == torch.float64
    x = torch.randn(2, 1, 3, 3, requires_grad=True)
    loss = loss_fn.float()(x, torch.full((2, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)
    weighted = DiceCELoss(weight=torch.tensor([1.0, 5.0]))
    x = torch.randn(2, 2, 3, 3, requires_grad=True)
    loss = weighted(x, torch.full((2, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


def test_weight_and_pos_weight_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"`pos_weight` weighs the positive pixels of mode='binary'.*`weight="):
        DiceCELoss(pos_weight=2.0)
    with pytest.raises(ValueError, match=r"`DiceCELoss`: `weight` \(class weights\).*`pos_weight=`"):
        DiceCELoss("binary", weight=torch.ones(2))
    with pytest.raises(ValueError, match=r"`DiceLoss`: `weight` \(class weights\).*foreground alone.*TverskyLoss"):
        DiceLoss("binary", weight=torch.ones(1))
    with pytest.raises(ValueError, match=r"`pos_weight` must be a finite number > 0.*; got 0.0"):
        DiceCELoss("binary", pos_weight=0.0)
    with pytest.raises(TypeError, match=r"`pos_weight` must be a number or a one-element float tensor"):
        DiceCELoss("binary", pos_weight=torch.ones(2))
    with pytest.raises(TypeError, match=r"`pos_weight` must be a number or a one-element float tensor; got '2'"):
        DiceCELoss("binary", pos_weight="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`weight` must hold finite class weights >= 0.*\[1.0, -1.0\]"):
        DiceLoss(weight=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"`weight` must hold finite class weights >= 0, at least one of them > 0"):
        DiceCELoss(weight=torch.zeros(3))
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"`weight` has shape \(2,\) but the input has 3 classes"):
        DiceLoss(weight=torch.ones(2))(logits, target)
