"""Tests for trainkit.losses.LovaszLoss against the Lovász extension of the Jaccard loss, by brute force.

The reference follows Berman et al. 2018 from its definitions, with none of the implementation's tricks:
the Jaccard loss of class c as a set function of the mispredicted pixels M, Δ(M) = |M| / |{y = c} ∪ M|,
evaluated on each prefix of the pixels sorted by decreasing error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainkit.losses import LovaszLoss


def _batch(
    num_classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, num_classes, 4, 5, generator=g) * 2).to(dtype)
    target = torch.randint(0, num_classes, (2, 4, 5), generator=g)
    target[0, :, -2:] = 255
    return logits, target


def _jaccard_loss(foreground: set[int], mispredicted: set[int]) -> float:
    union = foreground | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def _lovasz_extension(errors: list[float], foreground: set[int]) -> float:
    """sum_i m_π(i) * (Δ(S_i) - Δ(S_{i-1})), π sorting the errors in decreasing order, S_i its first i pixels."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, previous, prefix = 0.0, 0.0, set()
    for i in order:
        prefix.add(i)
        current = _jaccard_loss(foreground, prefix)
        total += errors[i] * (current - previous)
        previous = current
    return total


def _softmax_reference(probs: np.ndarray, labels: np.ndarray, classes: list[int], weight: list[float]) -> float | None:
    """Lovász-softmax of kept pixels ``probs [P, C]``, ``labels [P]``: mean over the present classes."""
    losses, weights = [], []
    for c in classes:
        foreground = {i for i, y in enumerate(labels) if y == c}
        if foreground:
            errors = [abs(float(y == c) - p[c]) for p, y in zip(probs, labels, strict=True)]
            losses.append(_lovasz_extension(errors, foreground))
            weights.append(weight[c])
    return float(np.dot(losses, weights) / np.sum(weights)) if losses else None


def _hinge_reference(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Lovász hinge of kept pixels: errors max(0, 1 - s x) with s = ±1, foreground = {y = 1}."""
    if len(labels) == 0:
        return None
    errors = [max(0.0, 1 - (2 * y - 1) * x) for x, y in zip(logits, labels, strict=True)]
    return _lovasz_extension(errors, {i for i, y in enumerate(labels) if y == 1})


def _groups(x: np.ndarray, target: np.ndarray, per_image: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Kept pixels ``([P, C], [P])`` of each image, or of the whole batch as one group."""
    groups = [(x[n], target[n]) for n in range(len(target))] if per_image else [(x, target)]
    out = []
    for values, labels in groups:
        values = np.moveaxis(values, -3, -1).reshape(-1, x.shape[-3])
        labels = labels.reshape(-1)
        out.append((values[labels != 255], labels[labels != 255]))
    return out


def _mean_over_groups(values: list[float | None]) -> float:
    counted = [v for v in values if v is not None]
    return float(np.mean(counted)) if counted else 0.0


@pytest.mark.parametrize("per_image", [False, True])
def test_multiclass_matches_the_brute_force_extension(per_image: bool) -> None:
    logits, target = _batch()
    probs = logits.double().softmax(1).numpy()
    groups = _groups(probs, target.numpy(), per_image)
    for classes, weight in (([0, 1, 2], None), ([1, 2], None), ([0, 1, 2], [0.5, 1.0, 4.0])):
        expected = _mean_over_groups([_softmax_reference(p, y, classes, weight or [1.0] * 3) for p, y in groups])
        loss_fn = LovaszLoss(
            per_image=per_image,
            classes=None if len(classes) == 3 else classes,
            weight=None if weight is None else torch.tensor(weight),
        )
        assert loss_fn(logits, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_binary_hinge_matches_the_brute_force_extension(per_image: bool) -> None:
    logits, target = _batch(num_classes=2, seed=1)
    logits = logits[:, :1]
    expected = _mean_over_groups(
        [_hinge_reference(x[:, 0], y) for x, y in _groups(logits.double().numpy(), target.numpy(), per_image)]
    )
    for t in (target, target.float(), target.unsqueeze(1)):
        assert LovaszLoss("binary", per_image=per_image)(logits, t).item() == pytest.approx(expected, rel=1e-5)


def test_a_hard_prediction_gives_one_minus_iou() -> None:
    """The extension is tight: for 0/1 errors it equals the Jaccard loss itself."""
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    predicted = torch.where(torch.rand(2, 5, 5, generator=g) < 0.3, (target + 1) % 3, target)
    target[1, 0] = 255
    kept = target != 255
    ious = []
    for c in range(3):
        inter = ((predicted == c) & (target == c) & kept).sum().item()
        union = (((predicted == c) | (target == c)) & kept).sum().item()
        ious.append(inter / union)
    probs = torch.nn.functional.one_hot(predicted, 3).movedim(-1, 1).float()
    assert LovaszLoss(from_logits=False)(probs, target).item() == pytest.approx(1 - np.mean(ious), abs=1e-6)


def test_binary_hinge_penalises_false_positives_without_foreground() -> None:
    target = torch.zeros(1, 1, 4)
    assert LovaszLoss("binary")(torch.tensor([[[-3.0, -3.0, -3.0, -3.0]]]), target).item() == 0.0
    # Largest error 1 + 2 = 3: any false alarm makes the IoU of an empty foreground 0.
    assert LovaszLoss("binary")(torch.tensor([[[2.0, -3.0, 0.5, -3.0]]]), target).item() == pytest.approx(3.0)


def test_ignored_pixels_change_nothing_and_get_no_gradient() -> None:
    logits, target = _batch(seed=3)
    altered = logits.clone()
    altered[0, :, :, -2:] = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(9)) * 20
    binary_target = torch.where(target == 255, 255, target % 2)
    for mode, x, t in (("multiclass", logits, target), ("binary", logits[:, :1], binary_target)):
        for per_image in (False, True):
            loss_fn = LovaszLoss(mode, per_image=per_image)
            y = altered if mode == "multiclass" else altered[:, :1]
            assert loss_fn(y, t).item() == pytest.approx(loss_fn(x, t).item(), abs=1e-6)
            leaf = x.clone().requires_grad_(True)
            loss_fn(leaf, t).backward()
            assert torch.all(leaf.grad[0, :, :, -2:] == 0) and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
@pytest.mark.parametrize("per_image", [False, True])
def test_all_ignored_batch_gives_zero_and_a_zero_gradient(mode: str, per_image: bool) -> None:
    logits, target = _batch()
    x = (logits if mode == "multiclass" else logits[:, :1]).clone().requires_grad_(True)
    loss = LovaszLoss(mode, per_image=per_image)(x, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_gradcheck_in_float64(mode: str) -> None:
    logits, target = _batch(seed=4, dtype=torch.float64)
    if mode == "binary":
        logits, target = logits[:, :1], torch.where(target == 255, 255, target % 2)
    loss_fn = LovaszLoss(mode, per_image=True)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits.requires_grad_(True),))


def test_bf16_autocast_computes_in_float32() -> None:
    logits, target = _batch(seed=5)
    reference = LovaszLoss()(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LovaszLoss()(logits.bfloat16(), target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=0.05)


def test_errors_name_the_argument_and_the_fix() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"`LovaszLoss\(mode='binary'\)` is the Lovász hinge.*raw output"):
        LovaszLoss("binary", from_logits=False)
    with pytest.raises(ValueError, match=r"needs hard 0/1 labels.*`target.round\(\)`"):
        LovaszLoss("binary")(logits[:, :1], torch.full((2, 4, 5), 0.5))
    with pytest.raises(ValueError, match=r"`LovaszLoss`: `weight` \(class weights\) applies to mode='multiclass'"):
        LovaszLoss("binary", weight=torch.ones(1))
    with pytest.raises(ValueError, match=r"`classes` selects classes of mode='multiclass'"):
        LovaszLoss("binary", classes=[1])
    with pytest.raises(ValueError, match=r"`LovaszLoss`: target holds class ids \[7\] outside \[0, 3\)"):
        LovaszLoss()(logits, torch.where(target == 0, 7, target))
    with pytest.raises(TypeError, match=r"`weight` must be a 1-D float tensor of class weights.*class_weights"):
        LovaszLoss(weight=torch.ones(3, dtype=torch.long))
