"""Dice plus cross-entropy: the usual segmentation loss, ``ce_weight * CE + dice_weight * Dice``.

The cross-entropy term is :func:`torch.nn.functional.cross_entropy` (multiclass) or
:func:`~torch.nn.functional.binary_cross_entropy_with_logits` (binary), averaged over the pixels
that are not ``ignore_index`` exactly as PyTorch's ``reduction="mean"`` — weighted by the class
``weight`` when given (the sum over kept pixels divided by the sum of their classes' weights), with
``pos_weight`` multiplying the positive term in binary mode (divided by the number of kept pixels) —
except that a batch whose pixels are all ignored gives 0 instead of ``nan``. Both terms are computed in
float32 under autocast (float64 input stays float64).

Class weights act on the cross-entropy term only: it averages over pixels, so a frequent class
dominates it, while Dice already gives every class the same say whatever its pixel count (weighing
Dice by inverse frequency as well would count the imbalance twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from trainkit.losses._base import (
    SegmentationLoss,
    check_class_weight,
    check_number,
    check_weight_fits,
    compute_dtype,
    kept,
)
from trainkit.losses.dice import DiceLoss

__all__ = ["DiceCELoss"]


class DiceCELoss(SegmentationLoss):
    """Weighted sum of cross-entropy and soft Dice loss, from logits.

    Args:
        mode: ``"multiclass"`` (logits ``[N, C, ...]``, int64 target ``[N, ...]``) or ``"binary"``
            (logits ``[N, 1, ...]``, 0/1 target); see :class:`~trainkit.losses.DiceLoss`.
        dice_weight: Factor of the Dice term.
        ce_weight: Factor of the cross-entropy term.
        ignore_index: Target value of pixels left out of both terms (``None``: none).
        weight: Optional float ``[C]`` class weights of the cross-entropy (multiclass only), as in
            ``torch.nn.CrossEntropyLoss(weight=...)``; moves with ``.to(device)``. See
            :func:`~trainkit.losses.class_weights` to derive them from pixel counts.
        pos_weight: Weight of the positive pixels in the binary cross-entropy (binary only), as in
            ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``: ``n_negative / n_positive`` balances them.
        classes: Class ids averaged by the Dice term (``None``: all present in the batch).
        smooth: Smoothing of the Dice term.
        eps: Lower bound of the Dice denominator.

    Example:
        >>> loss_fn = DiceCELoss()
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # [1, 2, 1, 2]
        >>> round(float(loss_fn(logits, torch.tensor([[[0, 1]]]))), 4)
        0.0
        >>> bce = DiceCELoss("binary", dice_weight=0.0, pos_weight=3.0)
        >>> round(float(bce(torch.zeros(1, 1, 2), torch.tensor([[1, 0]]))), 4)  # (3 + 1) * log(2) / 2
        1.3863
    """

    weight: torch.Tensor | None
    pos_weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int | None = 255,
        weight: torch.Tensor | None = None,
        pos_weight: float | torch.Tensor | None = None,
        classes: Sequence[int] | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(mode, ignore_index=ignore_index)
        self.dice = DiceLoss(mode, ignore_index=ignore_index, classes=classes, smooth=smooth, eps=eps)
        self.dice_weight = check_number("dice_weight", dice_weight)
        self.ce_weight = check_number("ce_weight", ce_weight)
        if dice_weight == 0 and ce_weight == 0:
            raise ValueError("`dice_weight` and `ce_weight` are both 0, so the loss would always be 0; raise one")
        hint = "in binary mode weigh the positive pixels with `pos_weight=` (e.g. n_negative / n_positive)"
        self.register_buffer("weight", check_class_weight(weight, mode=mode, owner="DiceCELoss", binary_hint=hint))
        self.register_buffer("pos_weight", _check_pos_weight(pos_weight, mode))

    def extra_repr(self) -> str:
        """Settings shown by ``repr``.

        Example:
            >>> DiceCELoss(dice_weight=0.5).extra_repr()
            'dice_weight=0.5, ce_weight=1.0'
        """
        return f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar ``ce_weight * CE + dice_weight * Dice`` of a batch.

        Args:
            input: Logits, ``[N, C, ...]`` (multiclass) or ``[N, 1, ...]`` (binary).
            target: Class ids ``[N, ...]`` (multiclass) or 0/1 masks (binary).

        Raises:
            TypeError: the input is not float, or a multiclass target is not integer.
            ValueError: shapes do not fit the mode or ``weight``, or (CPU tensors) target values are
                out of range.

        Example:
            >>> loss_fn = DiceCELoss(dice_weight=0.0)
            >>> logits = torch.tensor([[0.0, 0.0]])
            >>> round(float(loss_fn(logits, torch.tensor([1]))), 4)  # log(2)
            0.6931
        """
        dice = self.dice(input, target)  # validates shapes, dtypes and (on CPU) values first
        x = input.to(compute_dtype(input))
        if self.mode == "multiclass":
            ce = self._cross_entropy(x, target.long())
        else:
            ce = self._binary_cross_entropy(x, target)
        return self.ce_weight * ce + self.dice_weight * dice

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        check_weight_fits(self.weight, num_classes)
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        ignore = self.ignore_index if self.ignore_index is not None else -100
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction="sum")
        mask = kept(target, self.ignore_index)
        if weight is None:
            denominator = mask.sum().to(logits.dtype)
        else:
            denominator = (weight[torch.where(mask, target, 0).clamp(0, num_classes - 1)] * mask).sum()
        # Same value as reduction="mean", but 0 instead of nan when every pixel is ignored.
        return total / denominator.clamp_min(torch.finfo(logits.dtype).tiny)

    def _binary_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1)
        target = target.reshape(-1).to(logits.dtype)
        mask = kept(target, self.ignore_index) & (target >= 0) & (target <= 1)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(
            logits, torch.where(mask, target, 0), pos_weight=pos_weight, reduction="none"
        )
        return (per_pixel * mask).sum() / mask.sum().clamp_min(1)


def _check_pos_weight(pos_weight: Any, mode: str) -> torch.Tensor | None:
    """Check ``pos_weight`` (a number > 0, or a one-element float tensor) and return it as a 0-d tensor."""
    if pos_weight is None:
        return None
    if mode == "multiclass":
        raise ValueError(
            "`pos_weight` weighs the positive pixels of mode='binary'; for mode='multiclass' give one weight per "
            "class with `weight=torch.tensor([...])`"
        )
    if isinstance(pos_weight, torch.Tensor):
        if pos_weight.numel() != 1 or not pos_weight.is_floating_point():
            raise TypeError(
                f"`pos_weight` must be a number or a one-element float tensor; got {pos_weight!r}. "
                "Binary mode has one logit channel, so it takes one weight"
            )
        value = float(pos_weight.detach().cpu())
        tensor = pos_weight.detach().reshape(())
    elif isinstance(pos_weight, (int, float)) and not isinstance(pos_weight, bool):
        value = float(pos_weight)
        tensor = torch.tensor(value)
    else:
        raise TypeError(f"`pos_weight` must be a number or a one-element float tensor; got {pos_weight!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`pos_weight` must be a finite number > 0 (e.g. n_negative / n_positive); got {value!r}")
    return tensor
