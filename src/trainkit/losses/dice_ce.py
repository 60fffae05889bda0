"""Dice plus cross-entropy: the usual segmentation loss, ``ce_weight * CE + dice_weight * Dice``.

The cross-entropy term is :func:`torch.nn.functional.cross_entropy` (multiclass) or
:func:`~torch.nn.functional.binary_cross_entropy_with_logits` (binary), averaged over the pixels
that are not ``ignore_index`` (weighted by the class weights when given), exactly as PyTorch's
``reduction="mean"`` — except that a batch whose pixels are all ignored gives 0 instead of ``nan``.
Both terms are computed in float32 under autocast (float64 input stays float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.losses.dice import DiceLoss, _compute_dtype, _kept

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """Weighted sum of cross-entropy and soft Dice loss, from logits.

    Args:
        mode: ``"multiclass"`` (logits ``[N, C, ...]``, int64 target ``[N, ...]``) or ``"binary"``
            (logits ``[N, 1, ...]``, 0/1 target); see :class:`~trainkit.losses.DiceLoss`.
        dice_weight: Factor of the Dice term.
        ce_weight: Factor of the cross-entropy term.
        ignore_index: Target value of pixels left out of both terms (``None``: none).
        weight: Optional float ``[C]`` class weights of the cross-entropy (multiclass only), as in
            ``torch.nn.CrossEntropyLoss(weight=...)``; moves with ``.to(device)``.
        classes: Class ids averaged by the Dice term (``None``: all present in the batch).
        smooth: Smoothing of the Dice term.
        eps: Lower bound of the Dice denominator.

    Example:
        >>> loss_fn = DiceCELoss()
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # [1, 2, 1, 2]
        >>> round(float(loss_fn(logits, torch.tensor([[[0, 1]]]))), 4)
        0.0
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int | None = 255,
        weight: torch.Tensor | None = None,
        classes: Sequence[int] | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(mode, ignore_index=ignore_index, classes=classes, smooth=smooth, eps=eps)
        for name, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0; got {value!r}")
        if dice_weight == 0 and ce_weight == 0:
            raise ValueError("`dice_weight` and `ce_weight` are both 0, so the loss would always be 0; raise one")
        if weight is not None:
            if mode == "binary":
                raise ValueError("`weight` (class weights) applies to mode='multiclass'; binary mode has one logit")
            if not isinstance(weight, torch.Tensor) or weight.ndim != 1 or not weight.is_floating_point():
                raise TypeError(f"`weight` must be a 1-D float tensor of class weights [C]; got {weight!r}")
        self.register_buffer("weight", weight)
        self.mode = mode
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.ignore_index = ignore_index

    @property
    def expects_class_indices(self) -> bool:
        """Whether the target holds class ids (``"multiclass"``); see :attr:`DiceLoss.expects_class_indices`.

        Example:
            >>> DiceCELoss().expects_class_indices, DiceCELoss("binary").expects_class_indices
            (True, False)
        """
        return self.mode == "multiclass"

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
        x = input.to(_compute_dtype(input))
        if self.mode == "multiclass":
            ce = self._cross_entropy(x, target.long())
        else:
            ce = self._binary_cross_entropy(x, target)
        return self.ce_weight * ce + self.dice_weight * dice

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        if self.weight is not None and self.weight.shape != (num_classes,):
            raise ValueError(
                f"`weight` has shape {tuple(self.weight.shape)} but the input has {num_classes} classes; "
                f"give one weight per class [{num_classes}]"
            )
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        ignore = self.ignore_index if self.ignore_index is not None else -100
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore, reduction="sum")
        kept = _kept(target, self.ignore_index)
        if weight is None:
            denominator = kept.sum().to(logits.dtype)
        else:
            denominator = (weight[torch.where(kept, target, 0).clamp(0, num_classes - 1)] * kept).sum()
        # Same value as reduction="mean", but 0 instead of nan when every pixel is ignored.
        return total / denominator.clamp_min(torch.finfo(logits.dtype).tiny)

    def _binary_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.reshape(-1)
        target = target.reshape(-1).to(logits.dtype)
        kept = _kept(target, self.ignore_index) & (target >= 0) & (target <= 1)
        per_pixel = F.binary_cross_entropy_with_logits(logits, torch.where(kept, target, 0), reduction="none")
        return (per_pixel * kept).sum() / kept.sum().clamp_min(1)
