"""``AuxLoss``: any loss on a model with auxiliary outputs (torchvision's ``aux``, deep supervision)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.utils.outputs import aux_outputs, main_output

__all__ = ["DEFAULT_AUX_WEIGHT", "AuxLoss"]

DEFAULT_AUX_WEIGHT = 0.5
"""The weight of each auxiliary output's loss when none is given (torchvision's segmentation references)."""


class AuxLoss(nn.Module):
    """``loss(main, target) + aux_weight * sum(loss(aux, target))`` for outputs that are dicts or sequences.

    The main and auxiliary outputs are told apart by the output rule of :mod:`trainkit.utils.outputs`
    (``"out"``/``"logits"`` of a dict, the first element of a tuple or list, or the entry named by
    ``main``). An auxiliary map smaller than the target (deep supervision at a coarser scale) is resized
    to it bilinearly. A plain tensor output gets the plain loss. The ``Trainer``'s default step applies
    this rule with ``aux_weight=0.5`` to any loss when the model returns a dict or a sequence; pass an
    ``AuxLoss`` to choose the weight (``0`` ignores the auxiliary outputs) or to name the main output,
    which the metrics and ``predict`` then read too.

    Args:
        loss: the loss of one output, ``loss(logits, target)``.
        aux_weight: the weight of each auxiliary output's loss.
        main: the dict key of the main output, when it is neither ``"out"`` nor ``"logits"``.

    Example:
        >>> ce = AuxLoss(torch.nn.CrossEntropyLoss(), aux_weight=0.5)
        >>> logits, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(float(ce({"out": logits, "aux": logits}, target)), 4)  # 1.5 x log(3)
        1.6479
    """

    def __init__(
        self, loss: Callable[..., torch.Tensor], aux_weight: float = DEFAULT_AUX_WEIGHT, main: str | None = None
    ):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"`loss` must be callable, got {type(loss).__name__}; e.g. `torch.nn.CrossEntropyLoss()`")
        if (
            isinstance(aux_weight, bool)
            or not isinstance(aux_weight, (int, float))
            or not 0 <= aux_weight < float("inf")
        ):
            raise ValueError(f"`aux_weight` must be a finite number >= 0, got {aux_weight!r}")
        self.loss, self.aux_weight, self.main = loss, float(aux_weight), main

    @property
    def expects_class_indices(self) -> bool:
        """Whether the wrapped loss takes class ids (the Trainer's target rule reads it).

        Example:
            >>> AuxLoss(torch.nn.CrossEntropyLoss()).expects_class_indices
            True
        """
        inner = self.loss
        return isinstance(inner, (nn.CrossEntropyLoss, nn.NLLLoss)) or bool(
            getattr(inner, "expects_class_indices", False)
        )

    def forward(self, outputs: Any, target: Any) -> torch.Tensor:
        total = self.loss(main_output(outputs, self.main), target)
        if self.aux_weight == 0:
            return total
        for aux in aux_outputs(outputs, self.main):
            if isinstance(target, torch.Tensor) and aux.ndim >= 3 and aux.shape[-2:] != target.shape[-2:]:
                aux = F.interpolate(aux, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
            total = total + self.aux_weight * self.loss(aux, target)
        return total

    def extra_repr(self) -> str:
        main = f", main={self.main!r}" if self.main is not None else ""
        return f"aux_weight={self.aux_weight}{main}"
