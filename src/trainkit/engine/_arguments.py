"""The checks on ``Trainer``'s arguments, and the batch transform's channels-last form.

Each check raises ``TypeError`` or ``ValueError`` at the boundary, naming the argument, what was given
and the fix, before any model, optimizer or loader is used. Loaders are prepared in ``loaders.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["check_args", "check_not_empty", "with_channels_last"]


def check_args(
    model: Any, optimizer: Any, loss_fn: Any, interval: str, grad_accum: Any, clip: Any, on_nan: str
) -> None:
    """Validate the ``Trainer`` constructor's arguments.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> check_args(model, torch.optim.SGD(model.parameters(), 0.1), None, "epoch", 1, None, "raise")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}; e.g. "
            "`torch.optim.Adam(model.parameters(), lr=1e-3)`"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}; e.g. `torch.nn.CrossEntropyLoss()`")
    if interval not in ("epoch", "step"):
        raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {interval!r}")
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"`grad_accum` must be a positive integer, got {grad_accum!r}")
    if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and 0 < clip < math.inf):
        raise ValueError(f"`clip_grad_norm` must be a positive finite number or None, got {clip!r}")
    if on_nan not in ("raise", "skip"):
        raise ValueError(f"`on_nan` must be 'raise' or 'skip', got {on_nan!r}")
    rates = [g.get("lr") for g in optimizer.param_groups]
    if any(isinstance(lr, (int, float)) and not 0 <= lr < math.inf for lr in rates):  # NaN fails both comparisons
        raise ValueError(
            f"the optimizer's learning rate must be finite and >= 0, got {rates}; e.g. "
            "`torch.optim.Adam(model.parameters(), lr=1e-3)`"
        )


def check_not_empty(loader: Any, name: str) -> None:
    """Raise ``ValueError`` if ``loader`` has a length and it is 0 (``name`` is the argument's name).

    Example:
        >>> check_not_empty([(torch.zeros(1), torch.zeros(1))], "train_loader")
    """
    try:
        n = len(loader)
    except TypeError:
        return
    if n == 0:
        dataset = getattr(loader, "dataset", None)
        size = f" (dataset of {len(dataset)} samples)" if dataset is not None and hasattr(dataset, "__len__") else ""
        raise ValueError(
            f"`{name}` yields no batches{size}; check the dataset folder, and `drop_last=True` with a batch size "
            "larger than the dataset"
        )


def with_channels_last(transform: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """``transform`` (when given), then the first element of a sequence batch in channels-last if it is 4-D.

    Example:
        >>> images, masks = with_channels_last(None)((torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4)))
        >>> images.is_contiguous(memory_format=torch.channels_last)
        True
    """

    def apply(batch: Any) -> Any:
        if transform is not None:
            batch = transform(batch)
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor) and batch[0].ndim == 4:
            return type(batch)([batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]])
        return batch

    return apply
