"""Model summaries: a layer table built on torchinfo, and parameter counts.

torchinfo is imported inside :func:`summary`, so importing this module (or ``trainkit``) stays cheap.

Example:
    >>> import torch.nn as nn
    >>> count_parameters(nn.Linear(4, 2))
    {'total': 10, 'trainable': 10, 'frozen': 0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import nn

from trainkit.utils.device import resolve_device

if TYPE_CHECKING:
    from torchinfo import ModelStatistics

__all__ = ["count_parameters", "summary"]


def summary(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtypes: Sequence[torch.dtype] | None = None,
    depth: int = 3,
    verbose: int = 1,
    **kwargs: Any,
) -> ModelStatistics:
    """Run one forward pass on random inputs and tabulate each layer's output shape and parameters.

    The call shape of torchsummary, which the notes use: ``input_size`` is one sample's size without the batch
    dimension; ``batch_size`` is added for you. For a model whose ``forward`` takes several tensors, give a
    list of sizes, one per positional argument. The pass runs under ``torch.no_grad()`` in eval mode, so
    BatchNorm statistics are not touched; the model's train/eval mode and its device are restored afterwards.

    Args:
        model: The model to summarise.
        input_size: One sample's size, e.g. ``(3, 128, 128)``, or a list of such sizes for several inputs.
        batch_size: Batch dimension prepended to every size.
        device: Where to run the pass (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        dtypes: One dtype per input (default float32), e.g. ``[torch.long]`` for token ids.
        depth: How many levels of nested modules the table shows.
        verbose: 0 prints nothing, 1 prints the table, 2 also lists weights and biases.
        **kwargs: Passed on to ``torchinfo.summary`` (e.g. ``col_names``, ``row_settings``) or, if torchinfo
            does not know them, to ``model.forward``.

    Returns:
        torchinfo's ``ModelStatistics``: ``str()`` of it is the table; ``total_params``, ``trainable_params``,
        ``total_mult_adds`` and friends hold the numbers.

    Raises:
        ValueError: ``input_size``, ``batch_size``, ``dtypes``, ``depth`` or ``verbose`` is malformed, or
            ``device`` is unknown.

    Example:
        >>> from trainkit.models import UNet
        >>> stats = summary(UNet(3, 2, base_channels=8, depth=2), (3, 32, 32), verbose=0)
        >>> stats.total_params
        29634
    """
    sizes = _input_sizes(input_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
    if dtypes is not None and len(dtypes) != len(sizes):
        raise ValueError(
            f"`dtypes` needs one dtype per input: {len(sizes)} input size(s) but {len(dtypes)} dtype(s) given"
        )
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0 (quiet), 1 (table) or 2 (table with weights), got {verbose!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"`depth` must be an int >= 0, got {depth!r}")
    target = resolve_device(device)
    import torchinfo

    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    try:
        return torchinfo.summary(
            model,
            input_size=[(batch_size, *size) for size in sizes],
            device=target,
            dtypes=list(dtypes) if dtypes is not None else None,
            depth=depth,
            verbose=verbose,
            **kwargs,
        )
    finally:
        if len(devices) == 1 and devices != {target}:
            model.to(next(iter(devices)))  # torchinfo moved the model to `device`: give it back where it was


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Count a model's parameters: all of them, those that train (``requires_grad``) and the frozen rest.

    A parameter shared by several layers counts once.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        >>> model[0].requires_grad_(False)  # doctest: +ELLIPSIS
        Linear(...)
        >>> count_parameters(model)
        {'total': 23, 'trainable': 8, 'frozen': 15}
    """
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def _input_sizes(input_size: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """One size ``(C, H, W)`` or a list of sizes, each a non-empty tuple of positive ints, as a list."""

    def is_size(value: object) -> TypeGuard[Sequence[int]]:
        return (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and len(value) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)
        )

    if is_size(input_size):
        return [tuple(input_size)]
    if isinstance(input_size, Sequence) and not isinstance(input_size, str) and len(input_size) > 0:
        sizes = [tuple(size) for size in input_size if is_size(size)]
        if len(sizes) == len(input_size):
            return sizes
    raise ValueError(
        f"`input_size` must be one sample's size without the batch dimension, e.g. (3, 128, 128), or a list of "
        f"such sizes for a model with several inputs; got {input_size!r}"
    )
