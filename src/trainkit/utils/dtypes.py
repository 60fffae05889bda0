"""The dtype contract of a batch, written once: the dtype each tensor of a sample or batch has for the loss.

Each tensor's role comes from the table of :mod:`trainkit.utils.batch`:

* NumPy arrays and scalars become tensors first (``torch.from_numpy``), then follow the rules below.
* Class ids (any ``tv_tensors.Mask``, and integer or bool tensors in a ``target`` role) become int64.
  Float ones become int64 only when every value is a whole number and they are a ``Mask``, or the loss
  is known to take class ids (``class_ids=True``); other float targets stay float (``BCEWithLogitsLoss``,
  soft masks, regression).
* Floating inputs (``batch`` or ``input`` role) take ``input_dtype``, the model's, when it is given.
* Everything else: float64 becomes float32, other dtypes are kept (uint8 images stay uint8 for the
  conversion on the device; a detection target's ``masks``, ``boxes``, ... keep theirs).

:func:`trainkit.data.collate` applies it while stacking; the ``Trainer`` applies it to batches of the user's
own collate (``BatchFixer``, with the model's dtype and whether the loss takes class ids); each adds its own
warnings. It lives with the batch roles, below the data and engine layers, so the engine uses it without
importing the data package (and torchvision).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from trainkit.utils.batch import BATCH, INPUT, KEEP, TARGET

__all__ = ["batch_dtype", "to_batch_dtype"]

_ARRAYS = (np.ndarray, np.generic)


def batch_dtype(
    tensor: torch.Tensor, role: str = BATCH, *, input_dtype: torch.dtype | None = None, class_ids: bool | None = None
) -> torch.dtype:
    """The dtype of ``tensor`` in a batch by the contract (module docstring), from its dtype and role alone.

    A float tensor of class ids keeps a float dtype here: whether its values are whole numbers decides, in
    :func:`to_batch_dtype`.

    Args:
        tensor: One tensor of a sample or batch.
        role: Its role: ``"batch"`` (the root), ``"input"``, ``"target"`` or ``"keep"``.
        input_dtype: The floating dtype of the model's weights, for floating inputs; ``None``: float64 → float32.
        class_ids: Whether targets are class ids: ``None`` as the tensor says (a ``Mask``, or integer/bool in a
            target role), ``True`` the loss takes class ids (floats too), ``False`` never.

    Example:
        >>> ids = torch.zeros(2, dtype=torch.uint8)
        >>> batch_dtype(ids, "input"), batch_dtype(ids, "target"), batch_dtype(ids, "target", class_ids=False)
        (torch.uint8, torch.int64, torch.uint8)
        >>> batch_dtype(torch.zeros(2, dtype=torch.float64)), batch_dtype(torch.zeros(2), input_dtype=torch.bfloat16)
        (torch.float32, torch.bfloat16)
    """
    if not tensor.is_floating_point():
        integral = not tensor.is_complex()
        return torch.int64 if integral and _holds_class_ids(tensor, role, class_ids) else tensor.dtype
    if input_dtype is not None and role in (BATCH, INPUT):
        return input_dtype
    return torch.float32 if tensor.dtype == torch.float64 else tensor.dtype


def to_batch_dtype(
    value: Any, role: str = BATCH, *, input_dtype: torch.dtype | None = None, class_ids: bool | None = None
) -> torch.Tensor:
    """``value`` (a tensor or NumPy array) converted to its batch dtype: :func:`batch_dtype`, then float class ids
    that are whole numbers to int64. Returns ``value`` itself when it is a tensor already right.

    Arguments as for :func:`batch_dtype`. Soft masks (fractional floats) stay float; with ``class_ids=True``
    the caller raises for them (the ``Trainer``: "targets ... with non-integer values").

    Example:
        >>> from torchvision import tv_tensors
        >>> to_batch_dtype(tv_tensors.Mask(torch.tensor([0.0, 2.0])), "target")
        Mask([0, 2])
        >>> to_batch_dtype(tv_tensors.Mask(torch.tensor([0.0, 0.5])), "target").dtype  # soft: not class ids
        torch.float32
        >>> whole = torch.tensor([1.0, 0.0])
        >>> to_batch_dtype(whole, "target"), to_batch_dtype(whole, "target", class_ids=True)
        (tensor([1., 0.]), tensor([1, 0]))
        >>> to_batch_dtype(np.zeros(2), "input").dtype
        torch.float32
    """
    tensor = torch.from_numpy(np.asarray(value)) if isinstance(value, _ARRAYS) else value
    dtype = batch_dtype(tensor, role, input_dtype=input_dtype, class_ids=class_ids)
    out = tensor if dtype == tensor.dtype else tensor.to(dtype)  # `.to` keeps a tv_tensors type; `.long()` does not
    if out.is_floating_point() and _float_class_ids(tensor, role, class_ids) and torch.equal(out, out.round()):
        return out.to(torch.int64)
    return out


def _holds_class_ids(tensor: torch.Tensor, role: str, class_ids: bool | None) -> bool:
    return role != KEEP and class_ids is not False and (role == TARGET or _is_mask(tensor))


def _float_class_ids(tensor: torch.Tensor, role: str, class_ids: bool | None) -> bool:
    """Floats are class ids in a ``Mask``, or in a target role when the loss is known to take class ids."""
    return role != KEEP and class_ids is not False and (_is_mask(tensor) or (class_ids is True and role == TARGET))


def _is_mask(tensor: torch.Tensor) -> bool:
    """``isinstance(tensor, tv_tensors.Mask)`` without importing torchvision: no Mask exists before it is imported."""
    tv_tensors = sys.modules.get("torchvision.tv_tensors")
    return tv_tensors is not None and isinstance(tensor, tv_tensors.Mask)
