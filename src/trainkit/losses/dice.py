"""Soft Dice loss for multiclass and binary segmentation, computed from logits.

Tensor contract of each mode (checked at the boundary, with errors that say the fix):

==============  ===================================  ==============================================
mode            input                                target
==============  ===================================  ==============================================
``multiclass``  float logits ``[N, C, ...]``, C >= 2  int64 class ids ``[N, ...]`` (``ignore_index`` allowed)
``binary``      float logits ``[N, 1, ...]``          0/1 ``[N, ...]`` or ``[N, 1, ...]`` (int, bool or float)
==============  ===================================  ==============================================

Through the :class:`~trainkit.Trainer`, a multiclass target stored as floats holding whole numbers (or
as uint8/int32) is converted to int64 with one warning, the rule for every class-id loss
(:attr:`DiceLoss.expects_class_indices`, as for ``torch.nn.CrossEntropyLoss``); called directly, the loss
raises a ``TypeError`` that says to use ``target.long()``, as cross-entropy does.

The Dice of each class is computed over the whole batch (sums over N and every spatial position):
``dice_c = (2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)``, with ``p`` the softmax (or
sigmoid) probability, computed in float32 even under autocast, and ``y`` the one-hot target. Pixels
whose target is ``ignore_index`` are removed from both ``p`` and ``y``. The loss is
``1 - mean(dice_c)`` over the classes that have at least one target pixel in the batch: a class absent
from the batch's target has no Dice to learn from (its false positives still lower the present
classes' Dice through the softmax, and a CE term penalises them directly), so it is left out rather
than counted as 0 or 1. A batch with no target pixel at all gives a loss of 0.

Target values are range-checked only for CPU tensors: on an accelerator the check would force a
host-device sync every step. There, out-of-range ids are masked like ``ignore_index`` (cross-entropy
in ``DiceCELoss`` still rejects them, and the metrics report them at ``compute()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["DiceLoss"]

_MODES = ("multiclass", "binary")


class DiceLoss(nn.Module):
    """Soft Dice loss (``1 - Dice``) from logits, for ``"multiclass"`` or ``"binary"`` segmentation.

    Args:
        mode: ``"multiclass"`` (softmax over C >= 2 channels, int64 class-id target) or ``"binary"``
            (sigmoid over one channel, 0/1 target).
        from_logits: Apply softmax/sigmoid to the input. Set ``False`` if the input already holds
            probabilities.
        ignore_index: Target value of pixels to leave out (``None``: none are left out).
        classes: Class ids whose Dice is averaged (e.g. ``[1, 2]`` to leave out the background);
            ``None`` averages all classes present in the batch. Multiclass only.
        smooth: Added to numerator and denominator (Laplace smoothing); 0.0 keeps the exact Dice.
        eps: Lower bound of the denominator, against division by zero.

    Example:
        >>> loss_fn = DiceLoss("multiclass")
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # [1, 2, 1, 2]
        >>> round(float(loss_fn(logits, torch.tensor([[[0, 1]]]))), 4)
        0.0
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        ignore_index: int | None = 255,
        classes: Sequence[int] | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}; got {mode!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"`ignore_index` must be an int or None; got {ignore_index!r}")
        if classes is not None:
            if mode == "binary":
                raise ValueError("`classes` selects classes of mode='multiclass'; binary mode has one class")
            classes = list(classes)
            if not classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes):
                raise ValueError(f"`classes` must be a non-empty list of class ids >= 0; got {classes!r}")
        for name, value in (("smooth", smooth), ("eps", eps)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0; got {value!r}")
        self.mode = mode
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.classes = classes
        self.smooth = float(smooth)
        self.eps = float(eps)

    @property
    def expects_class_indices(self) -> bool:
        """Whether the target holds class ids (``"multiclass"``), as for ``torch.nn.CrossEntropyLoss``.

        The :class:`~trainkit.Trainer` reads it to apply the same target rule to every class-id loss:
        float targets holding whole numbers (and uint8/int32 ones) become int64 with one warning, other
        float targets raise. Binary targets stay as they are (0/1 of any dtype).

        Example:
            >>> DiceLoss("multiclass").expects_class_indices, DiceLoss("binary").expects_class_indices
            (True, False)
        """
        return self.mode == "multiclass"

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
            ValueError: shapes do not fit the mode, or (CPU tensors) target values are out of range.

        Example:
            >>> loss_fn = DiceLoss("binary")
            >>> logits = torch.tensor([[[[9.0, -9.0]]]])  # [1, 1, 1, 2]
            >>> round(float(loss_fn(logits, torch.tensor([[[1, 1]]]))), 4)
            0.3333
        """
        if self.mode == "multiclass":
            probs, onehot = self._multiclass(input, target)
        else:
            probs, onehot = self._binary(input, target)
        dims = [0, *range(2, probs.ndim)]
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)
        present = onehot.sum(dims) > 0
        loss = 1 - dice
        if self.classes is not None:
            loss, present = loss[self.classes], present[self.classes]
        # Mean over present classes as tensor arithmetic: no host sync, 0 when none is present.
        return (loss * present).sum() / present.sum().clamp_min(1)

    def _multiclass(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_multiclass(input, target, ignore_index=self.ignore_index, owner="DiceLoss")
        num_classes = input.shape[1]
        if self.classes is not None and max(self.classes) >= num_classes:
            raise ValueError(f"`classes={self.classes}` names ids >= the input's {num_classes} channels")
        target = target.long()
        kept = _kept(target, self.ignore_index) & (target >= 0) & (target < num_classes)
        x = input.to(_compute_dtype(input))
        probs = x.softmax(1) if self.from_logits else x
        ids = torch.arange(num_classes, device=target.device).view(1, num_classes, *([1] * (target.ndim - 1)))
        mask = kept.unsqueeze(1)
        onehot = ((target.unsqueeze(1) == ids) & mask).to(probs.dtype)
        return probs * mask, onehot

    def _binary(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input = _check_binary(input, target, ignore_index=self.ignore_index, owner="DiceLoss")
        x = input.to(_compute_dtype(input))
        probs = x.sigmoid() if self.from_logits else x
        target = target.reshape(probs.shape).to(probs.dtype)
        kept = _kept(target, self.ignore_index) & (target >= 0) & (target <= 1)
        y = torch.where(kept, target, 0)
        # A class axis of size 1, so both modes share the reduction in `forward`.
        return (probs * kept).unsqueeze(1), y.unsqueeze(1)


def _compute_dtype(input: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 input (softmax and sums lose too much below it), float64 kept."""
    return torch.promote_types(input.dtype, torch.float32)


def _kept(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def _describe(values: torch.Tensor) -> str:
    unique = values.unique().tolist()
    shown = ", ".join(str(v) for v in unique[:5])
    return f"[{shown}{', ...' if len(unique) > 5 else ''}]"


def _check_multiclass(input: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None, owner: str) -> None:
    """Check the multiclass contract: float logits ``[N, C, ...]``, integer target ``[N, ...]`` in ``[0, C)``."""
    _check_tensors(input, target, owner)
    if target.is_floating_point() or target.is_complex():
        raise TypeError(
            f"`{owner}(mode='multiclass')` needs int64 class ids as target; got {target.dtype}. Convert with "
            "`target.long()` (or use mode='binary' for 0/1 float masks with one logit channel)"
        )
    shape, tshape = tuple(input.shape), tuple(target.shape)
    if input.ndim != target.ndim + 1 or shape[0] != tshape[0] or shape[2:] != tshape[1:]:
        hint = (
            "; drop its channel dim with `target.squeeze(1)`"
            if target.ndim == input.ndim and tshape[1:2] == (1,)
            else ""
        )
        raise ValueError(
            f"`{owner}(mode='multiclass')`: input {shape} does not fit target {tshape}; expected logits "
            f"[N, C, ...] and class ids [N, ...] with the same N and spatial size{hint}"
        )
    if shape[1] < 2:
        raise ValueError(
            f"`{owner}(mode='multiclass')` needs C >= 2 logit channels; got input {shape}. "
            "For one foreground channel use mode='binary'"
        )
    if target.device.type == "cpu":  # free on the CPU; on accelerators it would sync every step
        bad = _kept(target, ignore_index) & ((target < 0) | (target >= shape[1]))
        if bad.any():
            raise ValueError(
                f"`{owner}`: target holds class ids {_describe(target[bad])} outside [0, {shape[1]}) "
                f"(input has {shape[1]} channels, `ignore_index={ignore_index}`); map them to class ids or "
                "set `ignore_index` to the value that marks unlabeled pixels"
            )


def _check_binary(input: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None, owner: str) -> torch.Tensor:
    """Check the binary contract and return the input shaped like the target (channel dim dropped)."""
    _check_tensors(input, target, owner)
    if target.is_complex():
        raise TypeError(f"`{owner}(mode='binary')`: target has dtype {target.dtype}; expected 0/1 int, bool or float")
    shape, tshape = tuple(input.shape), tuple(target.shape)
    if shape == tshape:
        flat_input = input
    elif input.ndim == target.ndim + 1 and shape[1] == 1 and shape[:1] + shape[2:] == tshape:
        flat_input = input[:, 0]
    else:
        raise ValueError(
            f"`{owner}(mode='binary')`: input {shape} does not fit target {tshape}; expected one logit channel "
            "[N, 1, ...] with target [N, ...] or [N, 1, ...]. For C >= 2 channels use mode='multiclass'"
        )
    if target.device.type == "cpu":
        bad = _kept(target, ignore_index) & ((target < 0) | (target > 1))
        if bad.any():
            raise ValueError(
                f"`{owner}(mode='binary')`: target holds values {_describe(target[bad])} outside [0, 1] "
                f"(`ignore_index={ignore_index}`); binarise the mask (e.g. `(mask > 0).long()`) or set `ignore_index`"
            )
    return flat_input


def _check_tensors(input: Any, target: Any, owner: str) -> None:
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"`{owner}` takes two tensors; got {type(input).__name__} and {type(target).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"`{owner}`: input must be float logits; got {input.dtype}. Pass the model's raw output")
    if input.device != target.device:
        raise ValueError(
            f"`{owner}`: input is on {input.device} but target is on {target.device}; move the target with "
            "`target.to(input.device)`"
        )
