"""Tversky loss (Salehi et al. 2017, "Tversky loss function for image segmentation using 3D FCNs").

The Tversky index generalises Dice with separate weights on false positives and false negatives:

``TI_c = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)``, with the soft counts
``TP = sum(p * y)``, ``FP = sum(p * (1 - y))``, ``FN = sum((1 - p) * y)``

over the batch (N and every spatial position), ``p`` the softmax (or sigmoid) probability of class ``c``
and ``y`` its one-hot target. ``alpha = beta = 0.5`` is Dice, ``alpha = beta = 1`` the Tanimoto (soft
Jaccard) index; ``beta > alpha`` penalises missed pixels more than false alarms, which raises recall on a
small, rare structure (the paper found ``alpha=0.3, beta=0.7`` best for lesions, the defaults here).

As :class:`~trainkit.losses.DiceLoss`: ``ignore_index`` pixels are removed from ``p`` and ``y``; the loss is
``1 - TI_c`` averaged over the classes present in the batch's target (weighted by ``weight`` when
given); a batch with no target pixel gives 0. Binary mode has one class, the foreground.
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

__all__ = ["TverskyLoss"]


class TverskyLoss(SegmentationLoss):
    """Tversky loss (``1 - TI``) from logits, for ``"multiclass"`` or ``"binary"`` segmentation.

    Args:
        mode: ``"multiclass"`` (softmax over C >= 2 channels, int64 class ids) or ``"binary"`` (sigmoid
            over one channel, 0/1 target).
        alpha: Weight of the false positives (``>= 0``).
        beta: Weight of the false negatives (``>= 0``); above ``alpha`` favours recall.
        from_logits: Apply softmax/sigmoid to the input; ``False`` if it already holds probabilities.
        ignore_index: Target value of pixels to leave out (``None``: none are left out).
        classes: Class ids averaged (e.g. ``[1, 2]`` to leave out the background); ``None``: all
            present in the batch. Multiclass only.
        weight: Optional float ``[C]`` weights of the classes in the mean (multiclass only).
        smooth: Added to numerator and denominator; 0.0 keeps the exact index.
        eps: Lower bound of the denominator, against division by zero.

    Example:
        >>> logits = torch.tensor([[[[20.0, -20.0, -20.0, -20.0]]]])  # [1, 1, 1, 4]: finds 1 of 2 positives
        >>> target = torch.tensor([[[1, 1, 0, 0]]])
        >>> round(float(TverskyLoss("binary")(logits, target)), 4)  # 1 - 1 / (1 + 0.7 * 1)
        0.4118
        >>> round(float(TverskyLoss("binary", alpha=0.5, beta=0.5)(logits, target)), 4)  # = DiceLoss
        0.3333
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        alpha: float = 0.3,
        beta: float = 0.7,
        from_logits: bool = True,
        ignore_index: int | None = 255,
        classes: Sequence[int] | None = None,
        weight: torch.Tensor | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(mode, ignore_index=ignore_index)
        self.alpha = check_number("alpha", alpha)
        self.beta = check_number("beta", beta)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError(
                "`alpha` and `beta` are both 0, so the index would be TP / TP = 1 and the loss always 0; "
                "raise one (alpha weighs false positives, beta false negatives)"
            )
        self.classes = check_classes(classes, mode)
        hint = "binary mode has one class; to favour recall raise `beta` above `alpha`"
        self.register_buffer("weight", check_class_weight(weight, mode=mode, owner="TverskyLoss", binary_hint=hint))
        self.from_logits = from_logits
        self.smooth = check_number("smooth", smooth)
        self.eps = check_number("eps", eps)

    def extra_repr(self) -> str:
        """Settings shown by ``repr``.

        Example:
            >>> TverskyLoss("binary").extra_repr()
            "mode='binary', alpha=0.3, beta=0.7, ignore_index=255, smooth=0.0"
        """
        return (
            f"mode={self.mode!r}, alpha={self.alpha}, beta={self.beta}, ignore_index={self.ignore_index}, "
            f"smooth={self.smooth}"
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar Tversky loss of a batch (float32, or float64 for float64 input).

        Args:
            input: Logits (or probabilities with ``from_logits=False``), ``[N, C, ...]`` or ``[N, 1, ...]``.
            target: Class ids ``[N, ...]`` (multiclass) or 0/1 masks (binary).

        Raises:
            TypeError: the input is not float, or a multiclass target is not integer.
            ValueError: shapes do not fit the mode, ``classes`` or ``weight``, or (CPU tensors) target
                values are out of range.

        Example:
            >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # [1, 2, 1, 2], both pixels right
            >>> round(float(TverskyLoss()(logits, torch.tensor([[[0, 1]]]))), 4)
            0.0
        """
        probs, onehot = probabilities_and_onehot(
            input,
            target,
            mode=self.mode,
            from_logits=self.from_logits,
            ignore_index=self.ignore_index,
            owner="TverskyLoss",
        )
        check_classes_fit(self.classes, probs.shape[1])
        check_weight_fits(self.weight, probs.shape[1])
        dims = [0, *range(2, probs.ndim)]
        tp = (probs * onehot).sum(dims)
        target_sum = onehot.sum(dims)
        fp = probs.sum(dims) - tp
        fn = target_sum - tp
        denominator = tp + self.alpha * fp + self.beta * fn + self.smooth
        index = (tp + self.smooth) / denominator.clamp_min(self.eps)
        return class_mean(1 - index, target_sum > 0, classes=self.classes, weight=self.weight)
