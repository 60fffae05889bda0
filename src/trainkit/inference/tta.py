"""Test-time augmentation: predict flipped and rescaled copies of an image, undo each on its output, average.

``tta`` in pseudocode::

    for scale in scales:                     # 1.0 by default
        for flip in ("", *flips):            # the image as it is, then each flip
            out = forward(flip(resize(images, scale)))
            total += resize(flip(out), size at scale 1)     # the flip is its own inverse
    return total / count

``forward`` is anything that maps ``[N, C, H, W]`` to ``[N, K, H', W']``: a model, or a
:class:`~trainkit.inference.SlidingWindow` (the flips then move the window grid too), and a
:class:`TTA` can itself be the model of a ``SlidingWindow`` (each window flipped, the grid fixed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.utils.outputs import main_output

__all__ = ["FLIPS", "TTA", "tta"]

FLIPS: dict[str, tuple[int, ...]] = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}
"""The flips by name and the dimensions they reverse: horizontal (left-right), vertical, both (a 180° turn)."""


def tta(
    forward: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    *,
    flips: Iterable[str] = ("h", "v", "hv"),
    scales: Iterable[float] = (1.0,),
    main: str | None = None,
) -> torch.Tensor:
    """The mean of ``forward``'s outputs over flipped and rescaled copies of ``images``, each undone first.

    The image as it is always counts, once per scale. A rescaled copy is resized bilinearly (with
    antialiasing when shrinking; integer images are rounded back to their dtype) and its output resized
    bilinearly back to the output size at scale 1. What ``forward`` returns is averaged as it is (logits
    give the mean of logits); dict or tuple outputs are read by the output rule (``main`` names the entry).
    Memory: the running sum and one output beside the input, on the device ``forward`` returns on.

    Args:
        forward: a model or any callable ``[N, C, H, W] -> [N, K, H', W']``, e.g. a ``SlidingWindow``.
        images: ``[N, C, H, W]``, or ``[C, H, W]`` (then the output is ``[K, H', W']``).
        flips: any of ``"h"`` (left-right), ``"v"`` (up-down) and ``"hv"`` (both); ``()`` for none.
        scales: factors the image is resized by before ``forward``, e.g. ``(0.75, 1.0, 1.25)``.
        main: the main output's key in a dict output, when it is not ``"out"`` or ``"logits"``.

    Returns:
        The float32 mean, shaped like ``forward(images)``.

    Raises:
        ValueError: an unknown flip, a scale that is not positive, or images that are not 3-D or 4-D.

    Example:
        >>> left_half = lambda x: x * (torch.arange(x.shape[-1]) < x.shape[-1] // 2)  # not flip-equivariant
        >>> tta(left_half, torch.ones(1, 1, 1, 4), flips=("h",)).flatten().tolist()  # its mean and its mirror's
        [0.5, 0.5, 0.5, 0.5]
    """
    flip_dims, factors = _augmentations(flips, scales)
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a [N, C, H, W] or [C, H, W] tensor, got {shape}")
    batch = images[None] if images.ndim == 3 else images
    height, width = batch.shape[-2:]
    total: torch.Tensor | None = None
    size: tuple[int, int] | None = None
    for scale in factors:
        scaled = batch if scale == 1.0 else _resize(batch, (_scaled(height, scale), _scaled(width, scale)))
        for dims in [(), *flip_dims]:
            out = main_output(forward(scaled.flip(dims) if dims else scaled), main)
            out = out.flip(dims) if dims else out
            if size is None:  # the output size at scale 1, from this output's ratio to its input
                size = (
                    round(height * out.shape[-2] / scaled.shape[-2]),
                    round(width * out.shape[-1] / scaled.shape[-1]),
                )
            if tuple(out.shape[-2:]) != size:
                out = _resize(out.float(), size)
            total = out.to(torch.float32, copy=True) if total is None else total.add_(out)
    assert total is not None  # there is at least one scale
    total /= len(factors) * (1 + len(flip_dims))
    return total[0] if images.ndim == 3 else total


class TTA(nn.Module):
    """``model`` as a module whose forward pass is :func:`tta` of it.

    Args:
        model: the network (or a :class:`~trainkit.inference.SlidingWindow`).
        flips: any of ``"h"``, ``"v"``, ``"hv"``.
        scales: resize factors, ``(1.0,)`` by default.
        main: the main output's key in a dict output.

    Raises:
        ValueError: an unknown flip or a scale that is not positive.

    Example:
        >>> running_sum = TTA(lambda x: x.cumsum(-1), flips=("h",))  # sums from the left, and from the right
        >>> running_sum(torch.ones(1, 1, 1, 3)).flatten().tolist()
        [2.0, 2.0, 2.0]
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], Any],
        *,
        flips: Iterable[str] = ("h", "v", "hv"),
        scales: Iterable[float] = (1.0,),
        main: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        if isinstance(flips, str):
            _augmentations(flips, scales)  # refuses it
        self.flips, self.scales = tuple(flips), tuple(scales)
        _augmentations(self.flips, self.scales)  # checked now, not at the first image
        self.main = main

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The averaged prediction of ``images`` (see :func:`tta`).

        Example:
            >>> TTA(torch.nn.Identity(), flips=("h", "v"))(torch.ones(1, 1, 2, 2)).sum().item()
            4.0
        """
        return tta(self.model, images, flips=self.flips, scales=self.scales, main=self.main)


def _augmentations(flips: Iterable[str], scales: Iterable[float]) -> tuple[list[tuple[int, ...]], list[float]]:
    if isinstance(flips, str):
        raise ValueError(f"`flips` must be a collection of names such as ('h', 'v', 'hv'), got the string {flips!r}")
    names = list(flips)
    unknown = [name for name in names if name not in FLIPS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"`flips` must hold distinct names among {tuple(FLIPS)}, got {tuple(names)}")
    factors = [float(s) for s in scales]
    if not factors or any(not s > 0 for s in factors):
        raise ValueError(f"`scales` must hold at least one factor, each > 0 (1.0 is the image as it is), got {factors}")
    return [FLIPS[name] for name in names], factors


def _scaled(size: int, scale: float) -> int:
    return max(round(size * scale), 1)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, antialiased when shrinking; integer images come back rounded in their dtype."""
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    resized = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    if images.dtype.is_floating_point:
        return resized.to(images.dtype)
    info = torch.iinfo(images.dtype)
    return resized.round_().clamp_(info.min, info.max).to(images.dtype)
