"""The contract every trainkit segmentation loss shares, written once and checked at the boundary.

==============  ===================================  ==============================================
mode            input                                target
==============  ===================================  ==============================================
``multiclass``  float logits ``[N, C, ...]``, C >= 2  int64 class ids ``[N, ...]`` (``ignore_index`` allowed)
``binary``      float logits ``[N, 1, ...]``          0/1 ``[N, ...]`` or ``[N, 1, ...]`` (int, bool or float)
==============  ===================================  ==============================================

Pixels whose target is ``ignore_index`` (255 by default, the value trainkit's presets pad masks with)
take no part in any loss and get no gradient; a batch whose pixels are all ignored gives 0, never NaN.
Losses compute in float32 under autocast (float64 input stays float64).

Through the :class:`~trainkit.Trainer`, a multiclass target stored as floats holding whole numbers (or
as uint8/int32) is converted to int64 with one warning, the rule for every class-id loss
(:attr:`SegmentationLoss.expects_class_indices`, as for ``torch.nn.CrossEntropyLoss``); called directly,
a loss raises a ``TypeError`` that says to use ``target.long()``, as cross-entropy does.

Target values are range-checked only for CPU tensors: on an accelerator the check would force a
host-device sync every step. There, out-of-range ids are masked like ``ignore_index`` (cross-entropy
in ``DiceCELoss`` still rejects them, and the metrics report them at ``compute()``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

MODES = ("multiclass", "binary")


class SegmentationLoss(nn.Module):
    """What trainkit's losses share: ``mode``, ``ignore_index`` and the Trainer's target rule.

    Args:
        mode: ``"multiclass"`` or ``"binary"`` (see the module's table).
        ignore_index: Target value of pixels to leave out (``None``: none are left out).

    Example:
        >>> from trainkit.losses import DiceLoss
        >>> DiceLoss().ignore_index, isinstance(DiceLoss(), SegmentationLoss)
        (255, True)
    """

    def __init__(self, mode: str, *, ignore_index: int | None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"`ignore_index` must be an int or None; got {ignore_index!r}")
        self.mode = mode
        self.ignore_index = ignore_index

    @property
    def expects_class_indices(self) -> bool:
        """Whether the target holds class ids (``"multiclass"``), as for ``torch.nn.CrossEntropyLoss``.

        The :class:`~trainkit.Trainer` reads it to apply the same target rule to every class-id loss:
        float targets holding whole numbers (and uint8/int32 ones) become int64 with one warning, other
        float targets raise. Binary targets stay as they are (0/1 of any dtype).

        Example:
            >>> from trainkit.losses import DiceLoss
            >>> DiceLoss("multiclass").expects_class_indices, DiceLoss("binary").expects_class_indices
            (True, False)
        """
        return self.mode == "multiclass"


# ----------------------------------------------------------------------------- options


def check_number(name: str, value: Any, *, low: float = 0.0, high: float | None = None) -> float:
    """Return ``value`` as a float after checking it is a finite number in ``[low, high]``."""
    bounded = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a number {bounded}; got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"`{name}` must be a number {bounded}; got {value!r}")
    return float(value)


def check_classes(classes: Sequence[int] | None, mode: str) -> list[int] | None:
    """Check the ``classes`` option (class ids averaged by a per-class loss) and return it as a list."""
    if classes is None:
        return None
    if mode == "binary":
        raise ValueError("`classes` selects classes of mode='multiclass'; binary mode has one class")
    classes = list(classes)
    if not classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes):
        raise ValueError(f"`classes` must be a non-empty list of class ids >= 0; got {classes!r}")
    return classes


def check_class_weight(weight: Any, *, mode: str, owner: str, binary_hint: str) -> torch.Tensor | None:
    """Check per-class ``weight`` (multiclass only; ``binary_hint`` says what to use instead) and return it."""
    if weight is None:
        return None
    if mode == "binary":
        raise ValueError(f"`{owner}`: `weight` (class weights) applies to mode='multiclass'; {binary_hint}")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1 or not weight.is_floating_point():
        raise TypeError(
            f"`weight` must be a 1-D float tensor of class weights [C]; got {weight!r}. "
            "Build one with `torch.tensor([...])` or `trainkit.losses.class_weights(counts)`"
        )
    values = weight.detach().cpu()  # once, when the loss is built
    if not torch.isfinite(values).all() or (values < 0).any() or not (values > 0).any():
        raise ValueError(
            f"`weight` must hold finite class weights >= 0, at least one of them > 0; got {values.tolist()}"
        )
    return weight


def check_weight_fits(weight: torch.Tensor | None, num_classes: int) -> None:
    """Check that per-class ``weight`` has one entry per input channel."""
    if weight is not None and weight.shape != (num_classes,):
        raise ValueError(
            f"`weight` has shape {tuple(weight.shape)} but the input has {num_classes} classes; "
            f"give one weight per class [{num_classes}]"
        )


def check_classes_fit(classes: list[int] | None, num_classes: int) -> None:
    """Check that the ``classes`` option names channels the input has."""
    if classes is not None and max(classes) >= num_classes:
        raise ValueError(f"`classes={classes}` names ids >= the input's {num_classes} channels")


# ----------------------------------------------------------------------------- inputs


def compute_dtype(input: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 input (softmax and sums lose too much below it), float64 kept."""
    return torch.promote_types(input.dtype, torch.float32)


def kept(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Boolean mask of the pixels that are not ``ignore_index``."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def multiclass_inputs(
    input: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None, owner: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the multiclass contract; return logits in the compute dtype, class ids and the kept mask.

    Ignored (and, on accelerators, out-of-range) pixels are left out of the mask and hold class 0 in the
    returned ids, so they can index without error.
    """
    check_multiclass(input, target, ignore_index=ignore_index, owner=owner)
    num_classes = input.shape[1]
    target = target.long()
    mask = kept(target, ignore_index) & (target >= 0) & (target < num_classes)
    return input.to(compute_dtype(input)), torch.where(mask, target, 0), mask


def binary_inputs(
    input: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None, owner: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the binary contract; return logits shaped like the target, the 0/1 target and the kept mask.

    Ignored pixels hold 0 in the returned target.
    """
    flat = check_binary(input, target, ignore_index=ignore_index, owner=owner)
    x = flat.to(compute_dtype(input))
    y = target.reshape(x.shape).to(x.dtype)
    mask = kept(y, ignore_index) & (y >= 0) & (y <= 1)
    return x, torch.where(mask, y, 0), mask


def probabilities_and_onehot(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str,
    from_logits: bool,
    ignore_index: int | None,
    owner: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and one-hot target ``[N, C, ...]`` (``C = 1`` in binary mode), both 0 at ignored pixels."""
    if mode == "multiclass":
        x, ids, mask = multiclass_inputs(input, target, ignore_index=ignore_index, owner=owner)
        probs = x.softmax(1) if from_logits else x
        classes = torch.arange(x.shape[1], device=ids.device).view(1, -1, *([1] * (ids.ndim - 1)))
        onehot = ((ids.unsqueeze(1) == classes) & mask.unsqueeze(1)).to(probs.dtype)
        return probs * mask.unsqueeze(1), onehot
    x, y, mask = binary_inputs(input, target, ignore_index=ignore_index, owner=owner)
    probs = x.sigmoid() if from_logits else x
    # A class axis of size 1, so both modes share the per-class reductions.
    return (probs * mask).unsqueeze(1), y.unsqueeze(1)


def class_mean(
    loss: torch.Tensor, present: torch.Tensor, *, classes: list[int] | None, weight: torch.Tensor | None
) -> torch.Tensor:
    """Mean of per-class ``loss [..., C]`` over the classes present, weighted by ``weight [C]`` when given.

    Tensor arithmetic only (no host sync); 0 where no class is present.
    """
    factor = present.to(loss.dtype)
    if weight is not None:
        factor = factor * weight.to(loss.dtype)
    if classes is not None:
        loss, factor = loss[..., classes], factor[..., classes]
    return (loss * factor).sum(-1) / factor.sum(-1).clamp_min(torch.finfo(loss.dtype).tiny)


# ----------------------------------------------------------------------------- checks


def _describe(values: torch.Tensor) -> str:
    unique = values.unique().tolist()
    shown = ", ".join(str(v) for v in unique[:5])
    return f"[{shown}{', ...' if len(unique) > 5 else ''}]"


def check_multiclass(input: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None, owner: str) -> None:
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
        bad = kept(target, ignore_index) & ((target < 0) | (target >= shape[1]))
        if bad.any():
            raise ValueError(
                f"`{owner}`: target holds class ids {_describe(target[bad])} outside [0, {shape[1]}) "
                f"(input has {shape[1]} channels, `ignore_index={ignore_index}`); map them to class ids or "
                "set `ignore_index` to the value that marks unlabeled pixels"
            )


def check_binary(input: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None, owner: str) -> torch.Tensor:
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
        bad = kept(target, ignore_index) & ((target < 0) | (target > 1))
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
