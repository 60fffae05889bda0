"""Tests for trainkit.losses: the notes' CrossEntropy reference, Dice values by hand, ignore_index, AMP, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainkit
from trainkit.errors import TrainingError
from trainkit.losses import DiceCELoss, DiceLoss, FocalLoss, LovaszLoss, TverskyLoss


def _batch(num_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 6, 6, generator=g)
    target = torch.randint(0, num_classes, (2, 6, 6), generator=g)
    return logits, target


def _confident(target: torch.Tensor, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """Logits of +scale on the given class and -scale elsewhere, [N, C, H, W]."""
    return (F.one_hot(target, num_classes).movedim(-1, 1).float() * 2 - 1) * scale


# ----------------------------------------------------------------------------- cross-entropy reference


def test_notes_cross_entropy_example_in_float64() -> None:
    """The notes' hand computation: log(sum(exp(x))) - x[target], averaged over two samples."""
    logits = torch.tensor(
        [
            [0.8982, 0.805, 0.6393, 0.9983, 0.5731, 0.0469, 0.556, 0.1476, 0.8404, 0.5544],
            [0.9457, 0.0195, 0.9846, 0.3231, 0.1605, 0.3143, 0.9508, 0.2762, 0.7276, 0.4332],
        ],
        dtype=torch.float64,
    )
    target = torch.tensor([1, 5])
    by_hand = np.mean(
        [np.log(np.exp(row).sum()) - row[t] for row, t in zip(logits.numpy(), target.tolist(), strict=True)]
    )
    assert by_hand == pytest.approx(2.351937720511233, abs=1e-12)
    reference = torch.nn.CrossEntropyLoss()(logits, target)
    assert reference.dtype == torch.float64
    assert reference.item() == pytest.approx(2.351937720511233, abs=1e-12)
    # DiceCELoss's CE term is this same cross-entropy, in float64 for float64 input.
    ce_only = DiceCELoss(dice_weight=0.0)(logits, target)
    assert ce_only.dtype == torch.float64
    assert ce_only.item() == pytest.approx(2.351937720511233, abs=1e-12)


# ----------------------------------------------------------------------------- Dice values


def test_perfect_prediction_gives_zero_and_completely_wrong_gives_one() -> None:
    _, target = _batch()
    assert DiceLoss()(_confident(target, 3), target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = _confident((target + 1) % 3, 3)
    assert DiceLoss()(wrong, target).item() == pytest.approx(1.0, abs=1e-6)
    binary_target = (target > 0).long()
    logits = (binary_target.float() * 2 - 1).unsqueeze(1) * 30
    assert DiceLoss("binary")(logits, binary_target).item() == pytest.approx(0.0, abs=1e-6)
    assert DiceLoss("binary")(-logits, binary_target).item() == pytest.approx(1.0, abs=1e-6)


def test_hand_computed_two_by_two_example() -> None:
    # Class-1 probabilities [[0.75, 0.5], [0.25, 0.75]] from logit differences log(p / (1 - p)).
    p1 = torch.tensor([[0.75, 0.5], [0.25, 0.75]])
    logits = torch.stack([torch.zeros(2, 2), torch.log(p1 / (1 - p1))]).unsqueeze(0)  # [1, 2, 2, 2]
    target = torch.tensor([[[1, 1], [0, 0]]])
    # class 1: intersection 0.75 + 0.5, cardinality 2.25 + 2; class 0: intersection 0.75 + 0.25, cardinality 1.75 + 2
    expected = 1 - (2 * 1.25 / 4.25 + 2 * 1.0 / 3.75) / 2
    assert DiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # Binary mode on the class-1 logits alone: only the foreground Dice.
    binary = DiceLoss("binary")(torch.log(p1 / (1 - p1)).view(1, 1, 2, 2), target)
    assert binary.item() == pytest.approx(1 - 2 * 1.25 / 4.25, abs=1e-6)
    # from_logits=False takes the probabilities themselves.
    probs = torch.stack([1 - p1, p1]).unsqueeze(0)
    assert DiceLoss(from_logits=False)(probs, target).item() == pytest.approx(expected, abs=1e-6)


def test_classes_absent_from_the_batch_are_left_out_of_the_mean() -> None:
    logits, target = _batch(num_classes=4, seed=2)
    target = target % 2  # classes 2 and 3 never in the target
    all_present = DiceLoss()(logits, target)
    only_01 = DiceLoss(classes=[0, 1])(logits, target)
    assert all_present.item() == pytest.approx(only_01.item(), abs=1e-7)
    probs = logits.softmax(1)
    per_class = [
        1 - 2 * (probs[:, c] * (target == c)).sum() / (probs[:, c].sum() + (target == c).sum()) for c in (0, 1)
    ]
    assert all_present.item() == pytest.approx(float(sum(per_class)) / 2, abs=1e-6)
    background_excluded = DiceLoss(classes=[1])(logits, target)
    assert background_excluded.item() == pytest.approx(per_class[1].item(), abs=1e-6)


def test_ignored_pixels_do_not_change_the_loss_and_get_no_gradient() -> None:
    logits, target = _batch(seed=4)
    target[:, :2] = 255
    altered = logits.clone()
    altered[:, :, :2] = torch.randn(2, 3, 2, 6) * 10  # anything at ignored pixels
    for loss_fn in (DiceLoss(), DiceCELoss()):
        cropped = loss_fn(logits[:, :, 2:], target[:, 2:])
        assert loss_fn(logits, target).item() == pytest.approx(cropped.item(), abs=1e-6)
        assert loss_fn(altered, target).item() == pytest.approx(cropped.item(), abs=1e-6)
    x = logits.clone().requires_grad_(True)
    DiceCELoss()(x, target).backward()
    assert torch.all(x.grad[:, :, :2] == 0)
    assert x.grad[:, :, 2:].abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_all_ignored_batch_gives_zero_not_nan() -> None:
    logits, target = _batch()
    target.fill_(255)
    x = logits.clone().requires_grad_(True)
    loss = DiceCELoss()(x, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(x.grad == 0)


def test_dice_ce_is_ce_plus_dice() -> None:
    logits, target = _batch(seed=6)
    target[0, 0] = 255
    weight = torch.tensor([0.2, 1.0, 3.0])
    combined = DiceCELoss(dice_weight=0.7, ce_weight=1.3, weight=weight)(logits, target)
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert combined.item() == pytest.approx(1.3 * ce.item() + 0.7 * DiceLoss()(logits, target).item(), abs=1e-6)
    binary_logits, binary_target = logits[:, :1], (target[:, None] == 1).float()
    bce = F.binary_cross_entropy_with_logits(binary_logits, binary_target)
    dice = DiceLoss("binary")(binary_logits, binary_target)
    assert DiceCELoss("binary")(binary_logits, binary_target).item() == pytest.approx((bce + dice).item(), abs=1e-6)


def test_gradient_flows_to_the_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    images, target = _batch(seed=8)
    DiceLoss()(model(images), target).backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_bf16_autocast_on_cpu_computes_in_float32() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    images, target = _batch(seed=9)
    reference = DiceCELoss()(model(images), target).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
        loss = DiceCELoss()(logits, target)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference, abs=0.05)
    loss.backward()
    assert torch.isfinite(model.weight.grad).all() and model.weight.grad.abs().sum() > 0


def test_binary_accepts_channel_or_flat_target_of_any_0_1_dtype() -> None:
    logits = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.5
    values = {DiceLoss("binary")(logits, t).item() for t in (mask, mask.long(), mask.float(), mask.long().unsqueeze(1))}
    assert len(values) == 1 and 0.0 < values.pop() < 1.0
    assert DiceLoss("binary")(logits[:, 0], mask).item() == pytest.approx(DiceLoss("binary")(logits, mask).item())


def test_weight_is_a_buffer() -> None:
    loss_fn = DiceCELoss(weight=torch.tensor([1.0, 2.0]))
    assert "weight" in loss_fn.state_dict()
    assert loss_fn.to(torch.float64).weight.dtype == torch.float64
    assert math.isclose(loss_fn.weight[1].item(), 2.0)


# ----------------------------------------------------------------------------- targets through the Trainer


def _fit(loss_fn: nn.Module, target: torch.Tensor, channels: int = 3) -> tuple[nn.Module, list[str]]:
    """Two epochs of a 1x1 conv on two batches whose targets are ``target``; the model and the warnings."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, channels, 1)
    images = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    data = [(images, target), (images.flip(-1), target.flip(-1))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = trainkit.Trainer(model, opt, loss_fn, device="cpu", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(data, data, epochs=2)
    return model, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "loss_fn",
    [nn.CrossEntropyLoss(ignore_index=255), DiceLoss(), DiceCELoss(), FocalLoss(), TverskyLoss(), LovaszLoss()],
    ids=lambda f: type(f).__name__,
)
def test_every_class_id_loss_takes_integral_float_targets_with_one_warning(loss_fn: nn.Module) -> None:
    """The notes' contract, one rule for every class-id loss: whole-number float targets become int64."""
    _, target = _batch()
    target[0, 0] = 255  # ignore_index survives the conversion
    as_ids, no_warnings = _fit(loss_fn, target)
    as_floats, messages = _fit(loss_fn, target.float())
    assert no_warnings == []
    assert len(set(messages)) == 1 and messages[0].startswith(
        f"targets are float32 but {type(loss_fn).__name__} needs int64 class ids; converting them with `.long()`"
    )
    assert all(torch.equal(a, b) for a, b in zip(as_ids.parameters(), as_floats.parameters(), strict=True))


@pytest.mark.parametrize(
    "loss_fn", [DiceLoss(), DiceCELoss(), FocalLoss(), TverskyLoss(), LovaszLoss()], ids=lambda f: type(f).__name__
)
def test_non_integral_float_targets_raise_like_cross_entropy(loss_fn: nn.Module) -> None:
    _, target = _batch()
    with pytest.raises(TrainingError, match=rf"float32 with non-integer values, but {type(loss_fn).__name__} needs"):
        _fit(loss_fn, target.float() + 0.5)


@pytest.mark.parametrize("loss_cls", [DiceLoss, DiceCELoss, FocalLoss, TverskyLoss, LovaszLoss])
def test_binary_float_targets_stay_float_without_a_warning(loss_cls: type[nn.Module]) -> None:
    loss_fn = loss_cls("binary")
    _, target = _batch(num_classes=2)
    seen: list[torch.dtype] = []
    loss_fn.register_forward_pre_hook(lambda module, args: seen.append(args[1].dtype))
    _, messages = _fit(loss_fn, target.float(), channels=1)
    assert messages == [] and set(seen) == {torch.float32}
    assert not loss_fn.expects_class_indices and DiceCELoss().expects_class_indices


# ----------------------------------------------------------------------------- errors


def test_target_errors_say_the_fix() -> None:
    logits, target = _batch()
    with pytest.raises(TypeError, match=r"needs int64 class ids as target; got torch.float32.*`target.long\(\)`"):
        DiceLoss()(logits, target.float())
    with pytest.raises(TypeError, match=r"needs int64 class ids as target; got torch.float32"):
        DiceCELoss()(logits, target.float())
    with pytest.raises(ValueError, match=r"target holds class ids \[3, 7\] outside \[0, 3\).*`ignore_index=255`"):
        DiceLoss()(logits, torch.where(target == 0, 7, torch.where(target == 1, 3, target)))
    with pytest.raises(ValueError, match=r"target holds values \[2\] outside \[0, 1\].*`\(mask > 0\).long\(\)`"):
        DiceLoss("binary")(logits[:, :1], target)
    with pytest.raises(
        ValueError, match=r"input \(2, 3, 6, 6\) does not fit target \(2, 1, 6, 6\).*`target.squeeze\(1\)`"
    ):
        DiceLoss()(logits, target.unsqueeze(1))
    with pytest.raises(ValueError, match=r"input \(2, 3, 6, 6\) does not fit target \(2, 5, 5\)"):
        DiceLoss()(logits, target[:, :5, :5])
    with pytest.raises(ValueError, match=r"input \(2, 3, 6, 6\) does not fit target \(2, 6, 6\).*mode='multiclass'"):
        DiceLoss("binary")(logits, target)


def test_input_errors() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"needs C >= 2 logit channels; got input \(2, 1, 6, 6\).*mode='binary'"):
        DiceLoss()(logits[:, :1], target)
    with pytest.raises(TypeError, match=r"input must be float logits; got torch.int64"):
        DiceLoss()(target.unsqueeze(1).repeat(1, 3, 1, 1), target)
    with pytest.raises(TypeError, match=r"takes two tensors; got Tensor and list"):
        DiceLoss()(logits, [0, 1])
    with pytest.raises(ValueError, match=r"input is on meta but target is on cpu.*`target.to\(input.device\)`"):
        DiceLoss()(logits.to("meta"), target)
    with pytest.raises(ValueError, match=r"`classes=\[0, 5\]` names ids >= the input's 3 channels"):
        DiceLoss(classes=[0, 5])(logits, target)
    with pytest.raises(ValueError, match=r"`weight` has shape \(2,\) but the input has 3 classes"):
        DiceCELoss(weight=torch.ones(2))(logits, target)


def test_option_errors() -> None:
    with pytest.raises(ValueError, match=r"`mode` must be one of \('multiclass', 'binary'\); got 'multilabel'"):
        DiceLoss("multilabel")
    with pytest.raises(ValueError, match=r"`classes` selects classes of mode='multiclass'"):
        DiceLoss("binary", classes=[1])
    with pytest.raises(ValueError, match=r"`classes` must be a non-empty list of class ids >= 0; got \[-1\]"):
        DiceLoss(classes=[-1])
    with pytest.raises(ValueError, match=r"`smooth` must be a number >= 0; got -1.0"):
        DiceLoss(smooth=-1.0)
    with pytest.raises(TypeError, match=r"`ignore_index` must be an int or None; got 'x'"):
        DiceLoss(ignore_index="x")
    with pytest.raises(ValueError, match=r"`dice_weight` and `ce_weight` are both 0"):
        DiceCELoss(dice_weight=0, ce_weight=0)
    with pytest.raises(ValueError, match=r"`ce_weight` must be a number >= 0; got -1"):
        DiceCELoss(ce_weight=-1)
    with pytest.raises(ValueError, match=r"`weight` \(class weights\) applies to mode='multiclass'"):
        DiceCELoss("binary", weight=torch.ones(2))
    with pytest.raises(TypeError, match=r"`weight` must be a 1-D float tensor of class weights"):
        DiceCELoss(weight=torch.ones(2, dtype=torch.long))
