"""Where the windows of :func:`~trainkit.inference.sliding_window` go, and what each one's pixels weigh.

One axis at a time: an image of ``size`` pixels smaller than the window is padded to the window's size,
evenly on both sides (the larger half after); windows start every ``stride`` pixels and the last one is
moved back to end at the border, so no window reaches past the image (MONAI's placement, which is what
lets :mod:`benchmarks/inference.py` compare outputs). The two axes' starts form a grid.

Each window's pixels are weighed by the blend map (constant or Gaussian), with ``margin`` pixels on the
sides that face a neighbouring window given no weight. Instead of dividing the stitched output by a
full-size sum of weights at the end, each window's weights are divided by the sum of its own and its
neighbours' weights over its area before it is added: the same result, without an image-sized count map.
Windows with the same neighbourhood share that tile, so only a handful are ever computed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

__all__ = ["Axis", "NormalisedWeights", "axis_grid", "gaussian_1d"]

SIGMA_SCALE = 0.125
"""The Gaussian's standard deviation as a fraction of the window's side (nnU-Net's and MONAI's 1/8)."""

MIN_WEIGHT = 1e-3
"""The least weight of a Gaussian map (MONAI's floor): a window's corners still count where nothing else covers."""


@dataclass(frozen=True)
class Axis:
    """The windows along one axis of the image.

    Attributes:
        size: the image's size along the axis.
        window: the window's size.
        pad_before: the padding before the image (only when ``size < window``).
        starts: each window's start, in padded coordinates (``0 .. max(size, window) - window``).
    """

    size: int
    window: int
    pad_before: int
    starts: tuple[int, ...]


def axis_grid(size: int, window: int, stride: int) -> Axis:
    """The windows of one axis: ``stride`` apart, the last one moved back to end at the border.

    Example:
        >>> axis_grid(100, 32, 24).starts, axis_grid(20, 32, 24).pad_before
        ((0, 24, 48, 68), 6)
    """
    padded = max(size, window)
    if padded == window:
        return Axis(size, window, (padded - size) // 2, (0,))
    count = math.ceil((padded - window) / stride) + 1
    return Axis(size, window, 0, tuple(min(i * stride, padded - window) for i in range(count)))


def gaussian_1d(length: int, *, device: torch.device | None = None) -> torch.Tensor:
    """A Gaussian over ``length`` pixels centred on the middle, peak 1, sigma ``SIGMA_SCALE * length``.

    Example:
        >>> [round(v, 3) for v in gaussian_1d(4).tolist()]
        [0.011, 0.607, 0.607, 0.011]
    """
    x = torch.arange(length, dtype=torch.float32, device=device) - (length - 1) / 2.0
    return torch.exp(x**2 / (-2 * (SIGMA_SCALE * length) ** 2))


def blend_map(height: int, width: int, blend: str, device: torch.device | None = None) -> torch.Tensor:
    """The weight of each pixel of a ``height × width`` window output: ones, or a floored Gaussian."""
    if blend == "constant":
        return torch.ones(height, width, device=device)
    weights = gaussian_1d(height, device=device)[:, None] * gaussian_1d(width, device=device)[None, :]
    return weights.clamp_(min=max(float(weights.min()), MIN_WEIGHT))


class NormalisedWeights:
    """Each window's weights divided by the sum of all window weights over its area, cached by neighbourhood.

    Positions, sizes and the margin are in output pixels. Adding ``output * tile`` for every window gives
    the weighted mean of the windows at every pixel, as dividing by a full-size weight sum would.

    Example:
        >>> weights = NormalisedWeights(torch.ones(4, 4), (0, 2), (0,), margin=0)
        >>> weights.tile(0, 0)[:, 0].tolist()  # the second window covers rows 2 and 3 as well
        [1.0, 1.0, 0.5, 0.5]
    """

    def __init__(self, base: torch.Tensor, starts_y: tuple[int, ...], starts_x: tuple[int, ...], *, margin: int):
        self.base = base
        self.starts = (starts_y, starts_x)
        self.margin = margin
        self._tiles: dict[tuple[object, ...], torch.Tensor] = {}
        self._masked: dict[tuple[bool, ...], torch.Tensor] = {}

    def tile(self, iy: int, ix: int) -> torch.Tensor:
        """The ``[h, w]`` weights of window ``(iy, ix)`` of the grid, normalised over all its neighbours."""
        rows, cols = self._neighbours(0, iy), self._neighbours(1, ix)
        ends_y, ends_x = self._ends(0, iy), self._ends(1, ix)
        key = (rows, cols, ends_y, ends_x)
        tile = self._tiles.get(key)
        if tile is None:
            height, width = self.base.shape
            total = torch.zeros_like(self.base)
            for (dy, *neighbour_y), (dx, *neighbour_x) in itertools.product(rows, cols):
                weight = self._weights(*neighbour_y, *neighbour_x)
                # Window j's pixel (a - dy, b - dx) is window i's pixel (a, b), where both windows are.
                total[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] += weight[
                    max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)
                ]
            own = self._weights(*ends_y, *ends_x)
            tile = self._tiles[key] = own / total.clamp_(min=torch.finfo(total.dtype).tiny)
        return tile

    def _neighbours(self, axis: int, i: int) -> tuple[tuple[int, bool, bool], ...]:
        """``(offset, first, last)`` of every window of the axis overlapping window ``i``, itself included."""
        starts, length = self.starts[axis], self.base.shape[axis]
        return tuple(
            (start - starts[i], *self._ends(axis, j))
            for j, start in enumerate(starts)
            if abs(start - starts[i]) < length
        )

    def _ends(self, axis: int, i: int) -> tuple[bool, bool]:
        """Whether window ``i`` is the first / last of its axis: its margin is kept there (no flags without one)."""
        if not self.margin:
            return False, False
        return i == 0, i == len(self.starts[axis]) - 1

    def _weights(self, first_y: bool, last_y: bool, first_x: bool, last_x: bool) -> torch.Tensor:
        """The base weights with the margin zeroed on the sides that face another window (at most 16 kinds)."""
        key = (first_y, last_y, first_x, last_x)
        if key not in self._masked:
            weights = self.base.clone()
            m = self.margin
            if m and not first_y:
                weights[:m] = 0
            if m and not last_y:
                weights[-m:] = 0
            if m and not first_x:
                weights[:, :m] = 0
            if m and not last_x:
                weights[:, -m:] = 0
            self._masked[key] = weights
        return self._masked[key]
