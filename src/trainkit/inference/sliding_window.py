"""Sliding-window inference: a model trained on crops, run over an image of any size, tile by tile.

``sliding_window`` in pseudocode::

    windows = grid(image, window, stride = window - overlap)        # the last one moved back to the border
    for batch in windows, sw_batch_size at a time:                   # cropped on the image's device
        out = model(transform(batch.to(device)))                      # under autocast, inference mode
        for each window:  output[region] += out * weights / (sum of all weights over region)
    return output                                                     # on output_device, in output_dtype

The stitched output is the only full-size tensor: there is no image-sized count map and no final division
(each window's weights are normalised over its own area first, :mod:`trainkit.inference._grid`), so with
``output_device="cpu"`` an image far larger than the GPU's memory runs with a few windows on the GPU.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.engine.precision import MixedPrecision
from trainkit.inference._grid import Axis, NormalisedWeights, axis_grid, blend_map
from trainkit.utils.device import resolve_device
from trainkit.utils.outputs import main_output

__all__ = ["BLENDS", "PADDING_MODES", "SlidingWindow", "blend_weights", "sliding_window"]

BLENDS: tuple[str, ...] = ("constant", "gaussian")
"""How overlapping windows are averaged: equally, or each pixel by a Gaussian centred on its window."""

PADDING_MODES: tuple[str, ...] = ("constant", "reflect", "replicate")
"""How an image smaller than the window is padded (``torch.nn.functional.pad`` modes; constant is zeros)."""


@dataclass(frozen=True)
class _Settings:
    """The checked options of one sliding-window run."""

    window: tuple[int, int]
    stride: tuple[int, int]
    blend: str
    margin: int
    sw_batch_size: int
    amp: MixedPrecision | str | bool
    device: torch.device | None
    output_device: torch.device | None
    output_dtype: torch.dtype
    padding_mode: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None
    main: str | None


def sliding_window(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    *,
    window: int | tuple[int, int],
    overlap: float | tuple[float, float] = 0.25,
    blend: str = "constant",
    margin: int = 0,
    sw_batch_size: int = 4,
    amp: MixedPrecision | str | bool = False,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    output_dtype: torch.dtype = torch.float32,
    padding_mode: str = "constant",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    main: str | None = None,
) -> torch.Tensor:
    """Run ``model`` over ``images`` window by window and stitch the outputs into one prediction.

    Works with any model mapping ``[N, C, h, w]`` windows to ``[N, K, h', w']`` (``h' = h`` for most
    segmentation models; a fixed ratio such as ``h / 4`` works too), including dict and tuple outputs, read
    by the output rule (:mod:`trainkit.utils.outputs`). Windows start every ``window - overlap`` pixels and
    the last one is moved back to end at the border (MONAI's placement), so an image that is not a multiple
    of the stride needs no padding; an image smaller than a window is padded to it (``padding_mode``) and
    the output cropped back. Every output pixel is the weighted mean of the windows covering it.

    Args:
        model: the network (in eval mode: a model in training mode gets a warning), or any callable.
        images: ``[N, C, H, W]`` or ``[C, H, W]``, any dtype the model (after ``transform``) takes; it stays
            where it is, only windows are copied to ``device``.
        window: the window's side, or ``(height, width)``.
        overlap: between neighbouring windows, a fraction of the window in ``[0, 1)`` (``0.25``) or a whole
            number of pixels (``64``); one value or ``(vertical, horizontal)``.
        blend: ``"constant"`` (every window pixel counts the same) or ``"gaussian"`` (pixels near a window's
            centre count more, which hides seams; sigma 1/8 of the window, as nnU-Net and MONAI).
        margin: pixels of each window's output given no weight on the sides that face another window (the
            ring a model's zero padding spoils; the U-Net paper's overlap-tile). At most half the overlap.
            With ``blend="constant"`` and a margin at least a model's receptive-field radius, the result is
            the whole-image forward pass exactly.
        sw_batch_size: windows a forward pass.
        amp: a :class:`~trainkit.engine.precision.MixedPrecision`, or its mode as for ``Trainer(amp=...)``
            (``"auto"``, ``"bf16"``, ``"fp16"``, ``False``).
        device: where windows run (default: the model's device, else the images').
        output_device: where the output is accumulated (default: the images' device); ``"cpu"`` for an image
            whose output does not fit on the GPU.
        output_dtype: of the accumulated output.
        padding_mode: ``"constant"`` (zeros), ``"reflect"`` or ``"replicate"``, for images smaller than a window.
        transform: applied to each batch of windows on ``device`` before the model, e.g.
            :class:`~trainkit.data.transforms.BatchNormalize` for uint8 images.
        main: the main output's key in a dict output, when it is not ``"out"`` or ``"logits"``.

    Returns:
        ``[N, K, H * h'/h, W * w'/w]`` (``[K, ...]`` for a ``[C, H, W]`` input) on ``output_device``.

    Raises:
        ValueError: an option out of range, images that are not 3-D or 4-D, a model output that is not
            ``[windows, K, h', w']`` or whose scale does not map window positions to whole output pixels.

    Example:
        >>> model = torch.nn.Conv2d(3, 2, kernel_size=1)
        >>> image = torch.rand(1, 3, 100, 70)
        >>> logits = sliding_window(model, image, window=32, overlap=0.25, blend="gaussian")
        >>> tuple(logits.shape), torch.allclose(logits, model(image), atol=1e-5)  # a 1x1 conv: no seams at all
        ((1, 2, 100, 70), True)
    """
    settings = _settings(
        window=window, overlap=overlap, blend=blend, margin=margin, sw_batch_size=sw_batch_size, amp=amp,
        device=device, output_device=output_device, output_dtype=output_dtype, padding_mode=padding_mode,
        transform=transform, main=main,
    )  # fmt: skip
    return _run(model, images, settings)


def blend_weights(window: int | tuple[int, int], blend: str = "gaussian") -> torch.Tensor:
    """The weight of each pixel of a window's output before normalisation: ``[h, w]``, peak 1.

    The Gaussian's sigma is 1/8 of the side; its values are floored at 1e-3, so a window's corners still
    count where no other window covers them (MONAI's ``compute_importance_map``).

    Example:
        >>> weights = blend_weights(8, "gaussian")
        >>> tuple(weights.shape), round(float(weights[3, 3]), 3), round(float(weights[0, 0]), 3)  # centre, corner
        ((8, 8), 0.779, 0.001)
    """
    height, width = _pair(window, "window")
    if blend not in BLENDS:
        raise ValueError(f"`blend` must be one of {BLENDS}, got {blend!r}")
    return blend_map(height, width, blend)


class SlidingWindow(nn.Module):
    """``model`` as a module that predicts images of any size by sliding windows (:func:`sliding_window`).

    Being a module, it goes where a model goes: ``trainkit.predict_iter(SlidingWindow(model, window=512),
    loader)`` puts it in eval mode, reads the device from its parameters (the wrapped model's), and wraps
    it in :class:`TTA` or wraps a ``TTA`` in it.

    Args:
        model: the network.
        window: the window's side or ``(height, width)``.
        **options: the other keyword options of :func:`sliding_window`, checked here.

    Raises:
        ValueError: an option out of range (as :func:`sliding_window`).

    Example:
        >>> tiled = SlidingWindow(torch.nn.Conv2d(3, 2, 1), window=32, overlap=8, blend="gaussian")
        >>> tuple(tiled(torch.rand(1, 3, 50, 90)).shape)
        (1, 2, 50, 90)
    """

    def __init__(self, model: nn.Module, *, window: int | tuple[int, int], **options: Any) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"`SlidingWindow` got unknown options {unknown}; it takes {sorted(_OPTIONS)}")
        self.model = model
        self.settings = _settings(**{**_OPTIONS, **options, "window": window})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The stitched prediction of ``images`` (see :func:`sliding_window`).

        Example:
            >>> SlidingWindow(torch.nn.Identity(), window=4, overlap=0)(torch.ones(1, 1, 6, 6)).sum().item()
            36.0
        """
        return _run(self.model, images, self.settings)


_OPTIONS: dict[str, Any] = {
    "overlap": 0.25, "blend": "constant", "margin": 0, "sw_batch_size": 4, "amp": False, "device": None,
    "output_device": None, "output_dtype": torch.float32, "padding_mode": "constant", "transform": None, "main": None,
}  # fmt: skip
"""The keyword options of :func:`sliding_window` after ``window``, with their defaults."""

_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
"""Layers that compute something else in training mode (a model without them needs no ``eval()``)."""


def _settings(*, window: Any, overlap: Any, margin: Any, sw_batch_size: Any, **rest: Any) -> _Settings:
    size = _pair(window, "window")
    overlaps = overlap if isinstance(overlap, (tuple, list)) else (overlap, overlap)
    if len(overlaps) != 2:
        raise ValueError(f"`overlap` must be one value or (vertical, horizontal), got {overlap!r}")
    stride = (_stride(size[0], overlaps[0]), _stride(size[1], overlaps[1]))
    if rest["blend"] not in BLENDS:
        raise ValueError(f"`blend` must be one of {BLENDS}, got {rest['blend']!r}")
    if rest["padding_mode"] not in PADDING_MODES:
        raise ValueError(f"`padding_mode` must be one of {PADDING_MODES}, got {rest['padding_mode']!r}")
    if not _is_int(sw_batch_size) or sw_batch_size < 1:
        raise ValueError(f"`sw_batch_size` must be a positive integer (windows a forward pass), got {sw_batch_size!r}")
    least_overlap = min(w - s for w, s in zip(size, stride, strict=True))
    if not _is_int(margin) or margin < 0 or 2 * margin > least_overlap:
        raise ValueError(
            f"`margin` must be a whole number of pixels from 0 to half the overlap ({least_overlap // 2} for "
            f"window={window!r} and overlap={overlap!r}), got {margin!r}: raise `overlap` or lower `margin`"
        )
    if not isinstance(rest["output_dtype"], torch.dtype) or not rest["output_dtype"].is_floating_point:
        raise ValueError(f"`output_dtype` must be a floating-point torch.dtype, got {rest['output_dtype']!r}")
    if rest["transform"] is not None and not callable(rest["transform"]):
        raise TypeError(f"`transform` must be callable(windows) -> windows, got {rest['transform']!r}")
    amp = rest["amp"]
    if not isinstance(amp, (MixedPrecision, str, bool)) and amp is not None:
        raise TypeError(f"`amp` must be a `MixedPrecision` or a mode ('auto', 'bf16', 'fp16', False), got {amp!r}")
    devices = {k: None if rest[k] is None else resolve_device(rest[k]) for k in ("device", "output_device")}
    return _Settings(
        window=size, stride=stride, margin=int(margin), sw_batch_size=int(sw_batch_size),
        **{**rest, **devices, "amp": False if amp is None else amp},
    )  # fmt: skip


def _pair(value: Any, name: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"`{name}` must be a positive whole number of pixels or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _stride(window: int, overlap: Any) -> int:
    """Pixels between window starts: ``overlap`` is a fraction in [0, 1) (a float) or pixels (an int)."""
    if _is_int(overlap) and 0 <= overlap < window:
        return window - int(overlap)
    if isinstance(overlap, float) and 0.0 <= overlap < 1.0:
        return max(math.floor(window * (1.0 - overlap) + 1e-9), 1)
    raise ValueError(
        f"`overlap` must be a fraction of the window in [0, 1) such as 0.25, or whole pixels from 0 to "
        f"{window - 1} for a window of {window}, got {overlap!r}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _run(model: Callable[[torch.Tensor], Any], images: torch.Tensor, settings: _Settings) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or 0 in images.shape:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a non-empty [N, C, H, W] or [C, H, W] tensor, got {shape}")
    single = images.ndim == 3
    batch = images[None] if single else images
    if isinstance(model, nn.Module) and any(m.training for m in model.modules() if isinstance(m, _MODE_DEPENDENT)):
        warnings.warn(
            "`sliding_window`: the model is in training mode, so its BatchNorm uses each window batch's statistics "
            "and its dropout is on; call `model.eval()` first",
            UserWarning,
            stacklevel=3,
        )
    device = settings.device or _model_device(model) or batch.device
    precision = settings.amp if isinstance(settings.amp, MixedPrecision) else MixedPrecision(settings.amp, device)
    height, width = batch.shape[-2:]
    axes = (
        axis_grid(height, settings.window[0], settings.stride[0]),
        axis_grid(width, settings.window[1], settings.stride[1]),
    )
    windows = list(itertools.product(range(batch.shape[0]), range(len(axes[0].starts)), range(len(axes[1].starts))))
    stitcher: _Stitcher | None = None
    with torch.inference_mode():
        for first in range(0, len(windows), settings.sw_batch_size):
            chunk = windows[first : first + settings.sw_batch_size]
            crops = torch.cat([_crop(batch, n, axes[0], iy, axes[1], ix, settings.padding_mode) for n, iy, ix in chunk])
            crops = crops.to(device)
            if settings.transform is not None:
                crops = settings.transform(crops)
            with precision.autocast():
                out = main_output(model(crops), settings.main)
            if stitcher is None:
                stitcher = _Stitcher(out, batch.shape[0], axes, settings, settings.output_device or batch.device)
            stitcher.add(out, chunk)
    assert stitcher is not None  # a grid always has a window
    return stitcher.output[0] if single else stitcher.output


def _crop(images: torch.Tensor, n: int, ay: Axis, iy: int, ax: Axis, ix: int, mode: str) -> torch.Tensor:
    """Window ``(iy, ix)`` of image ``n``, padded where the image is smaller than the window."""
    y, x = ay.starts[iy] - ay.pad_before, ax.starts[ix] - ax.pad_before
    crop = images[n : n + 1, :, max(y, 0) : y + ay.window, max(x, 0) : x + ax.window]
    pads = (max(-x, 0), max(x + ax.window - ax.size, 0), max(-y, 0), max(y + ay.window - ay.size, 0))
    if not any(pads):
        return crop
    try:
        return F.pad(crop, pads, mode=mode)
    except RuntimeError as err:
        raise ValueError(
            f"`padding_mode={mode!r}` cannot pad the {ay.size}x{ax.size} image to the {ay.window}x{ax.window} "
            f"window ({err}); use padding_mode='replicate' or 'constant', or a smaller window"
        ) from err


class _Stitcher:
    """The output being stitched, allocated from the first batch's output, and each window's place in it."""

    def __init__(
        self, first: torch.Tensor, images: int, axes: tuple[Axis, Axis], settings: _Settings, device: torch.device
    ) -> None:
        if not isinstance(first, torch.Tensor) or first.ndim != 4:
            shape = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
            raise ValueError(f"the model must return [windows, K, h, w] for [windows, C, h, w] windows, got {shape}")
        self.shape = tuple(first.shape[1:])
        scales = [Fraction(first.shape[2 + a], axes[a].window) for a in (0, 1)]
        self.offsets = [self._offsets(axes[a], scales[a], settings, a) for a in (0, 1)]
        sizes = [int(axes[a].size * scales[a]) for a in (0, 1)]
        self.output = torch.zeros(images, first.shape[1], *sizes, dtype=settings.output_dtype, device=device)
        base = blend_map(first.shape[2], first.shape[3], settings.blend, device=first.device)
        margin = [settings.margin * s for s in scales]
        if any(m.denominator != 1 for m in margin) or margin[0] != margin[1]:
            raise ValueError(
                f"`margin={settings.margin}` is not a whole number of output pixels at the model's output scale "
                f"{scales[0]}x{scales[1]}; choose a margin that the scale maps to whole pixels"
            )
        self.weights = NormalisedWeights(base, tuple(self.offsets[0]), tuple(self.offsets[1]), margin=int(margin[0]))

    @staticmethod
    def _offsets(axis: Axis, scale: Fraction, settings: _Settings, a: int) -> list[int]:
        """Each window's first output row (column), relative to the image (negative inside padding)."""
        offsets = [(start - axis.pad_before) * scale for start in axis.starts] + [axis.size * scale]
        if any(o.denominator != 1 for o in offsets):
            name = "height" if a == 0 else "width"
            raise ValueError(
                f"the model's output {name} is {scale} of the window's, so windows starting every "
                f"{settings.stride[a]} pixels of a {axis.size}-pixel image fall between output pixels; choose a "
                f"window and overlap whose stride and image {name} are multiples of {scale.denominator}"
            )
        return [int(o) for o in offsets[:-1]]

    def add(self, out: torch.Tensor, chunk: list[tuple[int, int, int]]) -> None:
        if tuple(out.shape) != (len(chunk), *self.shape):
            raise ValueError(
                f"the model returned {tuple(out.shape)} for {len(chunk)} windows after returning "
                f"{('windows', *self.shape)} for the first ones; every window must give the same output size"
            )
        same_device = out.device == self.output.device
        if not same_device:  # weigh where the windows are, then copy the batch once
            tiles = torch.stack([self.weights.tile(iy, ix) for _, iy, ix in chunk])[:, None]
            out = (out.float() * tiles).to(self.output.device, self.output.dtype)
        height, width = self.shape[1:]
        out_h, out_w = self.output.shape[-2:]
        for k, (n, iy, ix) in enumerate(chunk):
            y, x = self.offsets[0][iy], self.offsets[1][ix]
            rows, cols = slice(max(-y, 0), out_h - y), slice(max(-x, 0), out_w - x)  # the window's part in the image
            target = self.output[n, :, max(y, 0) : y + height, max(x, 0) : x + width]
            if same_device:  # output += window * weights in one pass, no temporary
                target.addcmul_(out[k, :, rows, cols], self.weights.tile(iy, ix)[rows, cols])
            else:
                target += out[k, :, rows, cols]


def _model_device(model: Any) -> torch.device | None:
    if isinstance(model, nn.Module):
        param = next(iter(model.parameters()), None)
        return param.device if param is not None else None
    return None
