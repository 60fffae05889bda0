"""Lovász loss (Berman et al. 2018, "The Lovász-Softmax loss: a tractable surrogate for the optimization
of the intersection-over-union measure in neural networks"): a loss that optimises IoU directly.

The Jaccard loss of class ``c`` is a set function of its mispredicted pixels ``M``:
``Δ(M) = |M| / |{y = c} ∪ M|`` (``1 - IoU``). Its Lovász extension turns it into a piecewise-linear,
convex function of per-pixel errors ``m``: sort the errors in decreasing order (``π``) and sum
``m_π(i) * (Δ({π(1), ..., π(i)}) - Δ({π(1), ..., π(i - 1)}))``. For 0/1 errors (a hard prediction) it
equals ``1 - IoU`` exactly.

- multiclass (Lovász-softmax): ``m_i = |y_i == c - p_i(c)|`` with ``p`` the softmax; the loss is the
  mean over the classes present in the target (weighted by ``weight`` when given; ``classes`` selects
  among them), as the paper's reference code with ``classes="present"``.
- binary (Lovász hinge): ``m_i = max(0, 1 - s_i * x_i)`` with ``x`` the logit and ``s = ±1`` the label,
  the extension of the foreground's Jaccard loss. Unlike Dice it also penalises false positives in a
  batch without foreground, as the reference code does.

``per_image=False`` (the default) computes one loss over the whole batch; ``per_image=True`` averages
per-image losses over the images with at least one counted pixel. ``ignore_index`` pixels are left
out (no error, no part in the intersection or union); a batch with every pixel ignored gives 0.
Everything stays on the device: ignored pixels are sorted last with an error that adds nothing
(computed in float32 under autocast; the counts of the gradient in int64, exact at any image size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainkit.losses._base import (
    SegmentationLoss,
    binary_inputs,
    check_class_weight,
    check_classes,
    check_classes_fit,
    check_weight_fits,
    class_mean,
    multiclass_inputs,
)

__all__ = ["LovaszLoss"]


class LovaszLoss(SegmentationLoss):
    """Lovász-softmax (multiclass) or Lovász hinge (binary) loss from logits: a convex surrogate of ``1 - IoU``.

    Args:
        mode: ``"multiclass"`` (logits ``[N, C, ...]``, int64 class ids ``[N, ...]``) or ``"binary"``
            (logits ``[N, 1, ...]``, 0/1 target ``[N, ...]`` or ``[N, 1, ...]``).
        per_image: Average per-image losses instead of one loss over the batch.
        from_logits: Multiclass only: apply softmax; ``False`` if the input already holds probabilities.
            The binary hinge works on logits (margins) by definition.
        ignore_index: Target value of pixels to leave out (``None``: none are left out).
        classes: Class ids averaged (``None``: all present). Multiclass only.
        weight: Optional float ``[C]`` weights of the classes in the mean (multiclass only).

    Example:
        >>> probs = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 1.0, 1.0]]]])  # predicts [0, 1, 1, 1]
        >>> target = torch.tensor([[[0, 0, 1, 1]]])  # IoU 1/2 (class 0) and 2/3 (class 1)
        >>> round(float(LovaszLoss(from_logits=False)(probs, target)), 4)  # 1 - mean IoU
        0.4167
        >>> logits = torch.tensor([[[[2.0, -0.5]]]])  # margins 2 and -0.5 on two positives
        >>> round(float(LovaszLoss("binary")(logits, torch.tensor([[[1, 1]]]))), 4)  # 1.5 * 0.5
        0.75
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        per_image: bool = False,
        from_logits: bool = True,
        ignore_index: int | None = 255,
        classes: Sequence[int] | None = None,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(mode, ignore_index=ignore_index)
        if mode == "binary" and not from_logits:
            raise ValueError(
                "`LovaszLoss(mode='binary')` is the Lovász hinge, defined on logits (margins); `from_logits=False` "
                "applies to mode='multiclass' only. Pass the model's raw output"
            )
        self.per_image = bool(per_image)
        self.from_logits = from_logits
        self.classes = check_classes(classes, mode)
        hint = "binary mode has one class, the foreground"
        self.register_buffer("weight", check_class_weight(weight, mode=mode, owner="LovaszLoss", binary_hint=hint))

    def extra_repr(self) -> str:
        """Settings shown by ``repr``.

        Example:
            >>> LovaszLoss("binary", per_image=True).extra_repr()
            "mode='binary', per_image=True, ignore_index=255"
        """
        return f"mode={self.mode!r}, per_image={self.per_image}, ignore_index={self.ignore_index}"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar Lovász loss of a batch (float32, or float64 for float64 input).

        Args:
            input: Logits ``[N, C, ...]`` (multiclass, or probabilities with ``from_logits=False``) or
                ``[N, 1, ...]`` (binary).
            target: Class ids ``[N, ...]`` (multiclass) or 0/1 masks (binary).

        Raises:
            TypeError: the input is not float, or a multiclass target is not integer.
            ValueError: shapes do not fit the mode, ``classes`` or ``weight``, or (CPU tensors) target
                values are out of range or, in binary mode, not 0/1.

        Example:
            >>> logits = torch.tensor([[[[2.0, -0.5]]]])
            >>> round(float(LovaszLoss("binary")(logits, torch.tensor([[[1, 255]]]))), 4)  # margin 2: no error
            0.0
        """
        if self.mode == "multiclass":
            return self._softmax(input, target)
        return self._hinge(input, target)

    def _softmax(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, ids, mask = multiclass_inputs(input, target, ignore_index=self.ignore_index, owner="LovaszLoss")
        num_classes = x.shape[1]
        check_classes_fit(self.classes, num_classes)
        check_weight_fits(self.weight, num_classes)
        probs = x.softmax(1) if self.from_logits else x
        # [B, C, P]: B = N images, or one group holding the whole batch.
        probs = probs.reshape(*probs.shape[:2], -1)
        ids, mask = ids.reshape(len(ids), -1), mask.reshape(len(mask), -1)
        if not self.per_image:
            probs = probs.transpose(0, 1).reshape(1, num_classes, -1)
            ids, mask = ids.reshape(1, -1), mask.reshape(1, -1)
        classes = torch.arange(num_classes, device=ids.device).view(1, -1, 1)
        foreground = (ids.unsqueeze(1) == classes) & mask.unsqueeze(1)
        errors = (foreground.to(probs.dtype) - probs).abs()
        errors = torch.where(mask.unsqueeze(1), errors, -1.0)  # ignored pixels sort last...
        errors_sorted, order = errors.sort(-1, descending=True)
        grad = _lovasz_grad(foreground.gather(-1, order), probs.dtype)
        per_class = (errors_sorted.clamp_min(0) * grad).sum(-1)  # ...and add nothing
        present = foreground.any(-1)
        per_group = class_mean(per_class, present, classes=self.classes, weight=self.weight)
        counted = (present if self.classes is None else present[:, self.classes]).any(-1)
        return (per_group * counted).sum() / counted.sum().clamp_min(1)

    def _hinge(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y, mask = binary_inputs(input, target, ignore_index=self.ignore_index, owner="LovaszLoss")
        if y.device.type == "cpu" and ((y != y.round()) & mask).any():
            raise ValueError(
                "`LovaszLoss(mode='binary')` needs hard 0/1 labels (IoU counts pixels); the target holds "
                "fractional values. Round them with `target.round()`, or use `FocalLoss`/`DiceLoss` for soft labels"
            )
        groups = len(x) if self.per_image else 1
        x, mask = x.reshape(groups, -1), mask.reshape(groups, -1)
        foreground = (y.reshape(groups, -1) >= 0.5) & mask  # on accelerators (unchecked), rounded
        errors = 1 - x * (2 * foreground.to(x.dtype) - 1)
        errors = torch.where(mask, errors, -1.0)  # no hinge error: adds nothing wherever it sorts
        errors_sorted, order = errors.sort(-1, descending=True)
        grad = _lovasz_grad(foreground.gather(-1, order), x.dtype)
        per_group = (errors_sorted.relu() * grad).sum(-1)
        counted = mask.any(-1)
        return (per_group * counted).sum() / counted.sum().clamp_min(1)


def _lovasz_grad(foreground_sorted: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``Δ(S_i) - Δ(S_{i-1})`` along the last dim, for pixels sorted by decreasing error (bool ``[..., P]``).

    With ``S_i`` the first ``i`` pixels: ``|{y=c} ∪ S_i| = gts + (negatives among them)`` and
    ``|{y=c} ∩ (not S_i)| = gts - (positives among them)``, so ``Δ(S_i) = 1 - intersection / union``.
    """
    positives = foreground_sorted.long().cumsum(-1)
    negatives = (~foreground_sorted).long().cumsum(-1)
    gts = positives[..., -1:]
    jaccard = 1 - (gts - positives).to(dtype) / (gts + negatives).to(dtype)
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], -1)
