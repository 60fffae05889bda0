"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") for segmentation, from logits.

Cross-entropy down-weights nothing: the many easy pixels of a frequent class (a background the model
already gets right with p = 0.9) still add up to most of the loss. The focal loss multiplies each pixel's
cross-entropy by ``(1 - p_t) ** gamma``, ``p_t`` being the probability given to the pixel's true class,
so well-classified pixels fade and training concentrates on the hard ones:

``FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)``

- binary (sigmoid of one logit): ``p_t = p`` where the target is 1 and ``1 - p`` where it is 0;
  ``alpha_t = alpha`` for positive and ``1 - alpha`` for negative pixels (``alpha=None``: 1 for both).
  The loss is the mean over the pixels that are not ``ignore_index``, as in
  ``torchvision.ops.sigmoid_focal_loss(reduction="mean")``. Soft targets ``y`` in [0, 1] are taken as
  there: ``p_t = p * y + (1 - p) * (1 - y)`` and ``alpha_t = alpha * y + (1 - alpha) * (1 - y)``.
- multiclass (softmax over C channels): ``p_t`` is the softmax probability of the target class and
  ``alpha_t`` is ``weight[target]``; the loss is the sum over kept pixels divided by the sum of their
  weights, as ``torch.nn.CrossEntropyLoss(weight=...)`` averages. So ``gamma=0`` gives exactly
  cross-entropy (with ``weight``) or binary cross-entropy (``alpha=None``).

``log(p_t)`` comes from ``log_softmax``/``logsigmoid`` and ``1 - p_t`` from ``expm1``, so confident
pixels neither overflow nor lose their small gradient; computed in float32 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainkit.losses._base import (
    SegmentationLoss,
    binary_inputs,
    check_class_weight,
    check_number,
    check_weight_fits,
    multiclass_inputs,
)

__all__ = ["FocalLoss"]


class FocalLoss(SegmentationLoss):
    """Focal loss from logits, for ``"multiclass"`` or ``"binary"`` segmentation.

    Args:
        mode: ``"multiclass"`` (logits ``[N, C, ...]``, int64 class ids ``[N, ...]``) or ``"binary"``
            (logits ``[N, 1, ...]``, 0/1 target ``[N, ...]`` or ``[N, 1, ...]``).
        gamma: Focusing parameter ``>= 0``; 0 gives cross-entropy, 2 is the paper's choice.
        alpha: Binary only: weight in [0, 1] of the positive pixels (``1 - alpha`` for the negative ones);
            ``None`` weighs both 1. The paper uses 0.25 together with ``gamma=2`` for detection, where
            the focusing term already down-weights the many easy negatives; for a rare foreground in
            segmentation a value above 0.5 raises its weight.
        weight: Multiclass only: float ``[C]`` class weights (the paper's ``alpha_t`` per class), as in
            ``torch.nn.CrossEntropyLoss(weight=...)``; moves with ``.to(device)``. See
            :func:`~trainkit.losses.class_weights`.
        ignore_index: Target value of pixels to leave out (``None``: none are left out).

    Example:
        >>> logits = torch.tensor([[[[0.0, 4.0]]]])  # [1, 1, 1, 2]: p = 0.5 and 0.982, both targets 1
        >>> round(float(FocalLoss("binary")(logits, torch.tensor([[[1, 1]]]))), 4)  # easy pixel adds ~0
        0.0866
        >>> round(float(FocalLoss("binary", gamma=0.0)(logits, torch.tensor([[[1, 1]]]))), 4)  # BCE
        0.3556
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        gamma: float = 2.0,
        alpha: float | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(mode, ignore_index=ignore_index)
        self.gamma = check_number("gamma", gamma)
        if alpha is not None:
            if mode == "multiclass":
                raise ValueError(
                    "`FocalLoss`: `alpha` weighs the positive pixels of mode='binary'; for mode='multiclass' "
                    "give one weight per class with `weight=torch.tensor([...])`"
                )
            alpha = check_number("alpha", alpha, high=1.0)
        self.alpha = alpha
        hint = "in binary mode weigh the positive pixels with `alpha=` in [0, 1]"
        self.register_buffer("weight", check_class_weight(weight, mode=mode, owner="FocalLoss", binary_hint=hint))

    def extra_repr(self) -> str:
        """Settings shown by ``repr``.

        Example:
            >>> FocalLoss("binary", alpha=0.75).extra_repr()
            "mode='binary', gamma=2.0, alpha=0.75, ignore_index=255"
        """
        return f"mode={self.mode!r}, gamma={self.gamma}, alpha={self.alpha}, ignore_index={self.ignore_index}"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar focal loss of a batch (float32, or float64 for float64 input).

        Args:
            input: Logits ``[N, C, ...]`` (multiclass) or ``[N, 1, ...]`` (binary).
            target: Class ids ``[N, ...]`` (multiclass) or 0/1 masks (binary).

        Raises:
            TypeError: the input is not float, or a multiclass target is not integer.
            ValueError: shapes do not fit the mode or ``weight``, or (CPU tensors) target values are
                out of range.

        Example:
            >>> logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # [1, 2, 2]: p_t = 0.5 everywhere
            >>> round(float(FocalLoss()(logits, torch.tensor([[0, 255]]))), 4)  # 0.25 * log(2)
            0.1733
        """
        if self.mode == "multiclass":
            return self._multiclass(input, target)
        return self._binary(input, target)

    def _multiclass(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, ids, mask = multiclass_inputs(input, target, ignore_index=self.ignore_index, owner="FocalLoss")
        check_weight_fits(self.weight, x.shape[1])
        log_pt = x.log_softmax(1).gather(1, ids.unsqueeze(1)).squeeze(1)
        per_pixel = -_focusing(-torch.expm1(log_pt), self.gamma) * log_pt
        factor = mask.to(x.dtype)
        if self.weight is not None:
            factor = factor * self.weight.to(x.dtype)[ids]
        return (per_pixel * factor).sum() / factor.sum().clamp_min(torch.finfo(x.dtype).tiny)

    def _binary(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y, mask = binary_inputs(input, target, ignore_index=self.ignore_index, owner="FocalLoss")
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        one_minus_pt = x.sigmoid() * (1 - y) + torch.sigmoid(-x) * y
        per_pixel = _focusing(one_minus_pt, self.gamma) * ce
        if self.alpha is not None:
            per_pixel = per_pixel * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return (per_pixel * mask).sum() / mask.sum().clamp_min(1)


def _focusing(one_minus_pt: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1 - p_t) ** gamma``, with a finite gradient where ``1 - p_t`` is exactly 0 (``0 < gamma < 1``)."""
    return one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny) ** gamma
