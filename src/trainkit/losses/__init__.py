"""Segmentation losses as ``nn.Module``: ``DiceLoss`` (multiclass/binary, from logits) and ``DiceCELoss``."""

from trainkit.losses.dice import DiceLoss
from trainkit.losses.dice_ce import DiceCELoss

__all__ = ["DiceCELoss", "DiceLoss"]
