"""Segmentation losses as ``nn.Module``, from logits, with ``ignore_index``: Dice, Dice + CE, focal, Tversky, Lovász;
``AuxLoss`` for models with auxiliary outputs."""

from trainkit.losses.aux import AuxLoss
from trainkit.losses.dice import DiceLoss
from trainkit.losses.dice_ce import DiceCELoss
from trainkit.losses.focal import FocalLoss
from trainkit.losses.lovasz import LovaszLoss
from trainkit.losses.tversky import TverskyLoss
from trainkit.losses.weights import class_weights

__all__ = ["AuxLoss", "DiceCELoss", "DiceLoss", "FocalLoss", "LovaszLoss", "TverskyLoss", "class_weights"]
