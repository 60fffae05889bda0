"""Soft Dice loss for multiclass and binary segmentation, computed from logits.

The input/target contract of each mode is the one every trainkit loss shares (``trainkit.losses._base``):
logits ``[N, C, ...]`` with int64 class ids ``[N, ...]`` (multiclass), or logits ``[N, 1, ...]`` with 0/1
targets (binary); ``ignore_index`` pixels (255 by default) are left out.

The Dice of each class is computed over the whole batch (sums over N and every spatial position):
``dice_c = (2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)``, with ``p`` the softmax (or
sigmoid) probability, computed in float32 even under autocast, and ``y`` the one-hot target. Pixels
whose target is ``ignore_index`` are removed from both ``p`` and ``y``. The loss is
``1 - mean(dice_c)`` over the classes that have at least one target pixel in the batch: a class absent
from the batch's target has no Dice to learn from (its false positives still lower the present
classes' Dice through the softmax, and a CE term penalises them directly), so it is left out rather
than counted as 0 or 1. A batch with no target pixel at all gives a loss of 0. With ``weight``, the mean
over the present classes is weighted (``sum(w_c * (1 - dice_c)) / sum(w_c)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainkit.losses._base import (
    SegmentationLoss,
    check_class_weight,
    check_classes,
    check_classes_fit,
    check_number,
    check_weight_fits,
    class_mean,
    probabilities_and_onehot,
)

__all__ = ["DiceLoss"]

_BINARY_WEIGHT_HINT = (
    "binary Dice is computed on the foreground alone, so the number of background pixels does not change it. "
    "To favour recall use `TverskyLoss('binary', beta=...)` with beta > alpha; to weigh the positive pixels of a "
    "cross-entropy term use `DiceCELoss('binary', pos_weight=...)` or `FocalLoss('binary', alpha=...)`"
)


class DiceLoss(SegmentationLoss):
    """Soft Dice loss (``1 - Dice``) from logits, for ``"multiclass"`` or ``"binary"`` segmentation.

    Args:
        mode: ``"multiclass"`` (softmax over C >= 2 channels, int64 class-id target) or ``"binary"``
            (sigmoid over one channel, 0/1 target).
        from_logits: Apply softmax/sigmoid to the input. Set ``False`` if the input already holds
            probabilities.
        ignore_index: Target value of pixels to leave out (``None``: none are left out).
        classes: Class ids whose Dice is averaged (e.g. ``[1, 2]`` to leave out the background);
            ``None`` averages all classes present in the batch. Multiclass only.
        weight: Optional float ``[C]`` weights of the classes in the mean (multiclass only); moves with
            ``.to(device)``. Dice already gives every class the same say whatever its pixel count, so
            weights here express how much each class matters, not how rare it is.
        smooth: Added to numerator and denominator (Laplace smoothing); 0.0 keeps the exact Dice.
        eps: Lower bound of the denominator, against division by zero.

    Example:
        >>> loss_fn = DiceLoss("multiclass")
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # [1, 2, 1, 2]
        >>> round(float(loss_fn(logits, torch.tensor([[[0, 1]]]))), 4)
        0.0
        >>> logits = torch.tensor([[[[9.0, 9.0]], [[-9.0, -9.0]]]])  # class 0 everywhere: Dice 2/3 and 0
        >>> round(float(loss_fn(logits, torch.tensor([[[0, 1]]]))), 4)
        0.6667
        >>> round(float(DiceLoss(weight=torch.tensor([1.0, 3.0]))(logits, torch.tensor([[[0, 1]]]))), 4)
        0.8333
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        ignore_index: int | None = 255,
        classes: Sequence[int] | None = None,
        weight: torch.Tensor | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(mode, ignore_index=ignore_index)
        self.classes = check_classes(classes, mode)
        self.register_buffer(
            "weight", check_class_weight(weight, mode=mode, owner="DiceLoss", binary_hint=_BINARY_WEIGHT_HINT)
        )
        self.from_logits = from_logits
        self.smooth = check_number("smooth", smooth)
        self.eps = check_number("eps", eps)

    def extra_repr(self) -> str:
        """Settings shown by ``repr``.

        Example:
            >>> DiceLoss("binary").extra_repr()
            "mode='binary', ignore_index=255, smooth=0.0"
        """
        return f"mode={self.mode!r}, ignore_index={self.ignore_index}, smooth={self.smooth}"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar Dice loss (float32, or float64 for float64 input) of a batch.

        Args:
            input: Logits (or probabilities with ``from_logits=False``) as in the module docstring.
            target: Class ids (multiclass) or 0/1 masks (binary) as in the module docstring.

        Raises:
            TypeError: the input is not float, or a multiclass target is not integer.
            ValueError: shapes do not fit the mode, ``classes`` or ``weight``, or (CPU tensors) target
                values are out of range.

        Example:
            >>> loss_fn = DiceLoss("binary")
            >>> logits = torch.tensor([[[[9.0, -9.0]]]])  # [1, 1, 1, 2]
            >>> round(float(loss_fn(logits, torch.tensor([[[1, 1]]]))), 4)
            0.3333
        """
        probs, onehot = probabilities_and_onehot(
            input,
            target,
            mode=self.mode,
            from_logits=self.from_logits,
            ignore_index=self.ignore_index,
            owner="DiceLoss",
        )
        check_classes_fit(self.classes, probs.shape[1])
        check_weight_fits(self.weight, probs.shape[1])
        dims = [0, *range(2, probs.ndim)]
        intersection = (probs * onehot).sum(dims)
        target_sum = onehot.sum(dims)
        cardinality = probs.sum(dims) + target_sum
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)
        return class_mean(1 - dice, target_sum > 0, classes=self.classes, weight=self.weight)
