"""How ``trainkit predict`` runs the model on one image: at the scale it was trained at, tiled, averaged over TTA.

For each image::

    size = training_scale_size(image, spec.preprocessing.size)   # the scale the training crops were cut at
    x = resize(image, size)                                       # uint8, antialiased, on the CPU
    logits = Forward(model)(normalize(x))                         # whole, or windows when larger than --tile;
                                                                  # the mean over --tta's flips and scales
    for band in bilinear_bands(logits, image's size):             # the logits (not the class ids) resized back,
        ids[band rows] = to_class_ids(band)                       # a band of rows at a time: K full-size maps
                                                                  # never exist at once

``trainkit.data.transforms.train_preset`` rescales each image by ``s * max(h / H, w / W)`` (``s`` drawn
around 1, the image just covering the ``h x w`` crop at ``s = 1``) before cropping, so the model learned
objects at that scale: a 4000 x 3000 photo trained with 256-pixel crops is seen at 341 x 256.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from trainkit.inference import sliding_window, tta
from trainkit.utils.outputs import main_output

__all__ = ["TTA_MODES", "Forward", "bilinear_bands", "size_multiple", "training_scale_size"]

TTA_MODES: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "flip": (("h",), (1.0,)),
    "flip+scale": (("h",), (0.75, 1.0, 1.25)),
}
"""``--tta``: ``(flips, scales)``: the left-right flip the training preset also makes (not up-down: photos have an
up), and scales within the preset's random ones (0.5 to 2)."""

_BAND_BYTES = 64 << 20  # the float32 logits of one band of rows, resized to the image's width


def training_scale_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """The image's size at the training scale: resized by ``max(h / H, w / W)``, so it just covers the crop size.

    Example:
        >>> training_scale_size(3000, 4000, (256, 256)), training_scale_size(20, 50, (32, 32))
        ((256, 341), (32, 80))
    """
    ratio = max(size[0] / height, size[1] / width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def size_multiple(model: nn.Module) -> int:
    """The multiple the model needs its height and width to be: smp's encoder output stride, else 1.

    Example:
        >>> size_multiple(torch.nn.Conv2d(3, 2, 1))
        1
    """
    if not callable(getattr(model, "check_input_shape", None)):  # segmentation_models_pytorch's own check
        return 1
    return int(getattr(getattr(model, "encoder", None), "output_stride", 32))


class Forward(nn.Module):
    """The model's logits for a normalised image at the training scale: whole, or by windows, under TTA.

    An image larger than ``tile`` on either side is predicted by :func:`~trainkit.inference.sliding_window`
    (``overlap``, ``blend``, ``sw_batch_size``); any other in one pass, padded evenly to the model's
    :func:`size_multiple` and cropped back. ``tta`` (a key of :data:`TTA_MODES`) averages flipped and rescaled
    copies (:func:`~trainkit.inference.tta`), each tiled or not by its own size.

    Example:
        >>> forward = Forward(torch.nn.Conv2d(3, 2, 1), tile=(16, 16), tta="flip")
        >>> tuple(forward(torch.rand(1, 3, 20, 40)).shape)
        (1, 2, 20, 40)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tile: tuple[int, int] | None = None,
        overlap: float = 0.25,
        blend: str = "gaussian",
        sw_batch_size: int = 4,
        tta: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tile, self.overlap, self.blend, self.sw_batch_size = tile, overlap, blend, sw_batch_size
        self.augmentations = TTA_MODES[tta] if tta is not None else None
        self.multiple = size_multiple(model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, K, H, W]`` logits of ``[N, C, H, W]`` normalised images."""
        if self.augmentations is None:
            return self._tiled_or_whole(images)
        flips, scales = self.augmentations
        return tta(self._tiled_or_whole, images, flips=flips, scales=scales)

    def _tiled_or_whole(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if self.tile is not None and (height > self.tile[0] or width > self.tile[1]):
            return sliding_window(
                self.model, images, window=self.tile, overlap=self.overlap, blend=self.blend,
                sw_batch_size=self.sw_batch_size,
            )  # fmt: skip
        m = self.multiple
        if height % m == 0 and width % m == 0:
            return main_output(self.model(images))
        padded = (math.ceil(height / m) * m, math.ceil(width / m) * m)
        return sliding_window(self.model, images, window=padded, overlap=0, sw_batch_size=1)  # one window, cropped


def bilinear_bands(logits: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
    """``[K, h, w]`` logits resized bilinearly to ``size``, yielded as ``(first row, [K, rows, W])`` bands.

    The same values as ``F.interpolate(logits[None], size, mode="bilinear", align_corners=False)[0]``, computed
    a band of rows at a time (about 64 MiB of float32 each), so the ``K`` full-size maps never exist at once.

    Example:
        >>> logits = torch.rand(3, 5, 7)
        >>> bands = [band for _, band in bilinear_bands(logits, (40, 30))]
        >>> whole = torch.nn.functional.interpolate(logits[None], (40, 30), mode="bilinear", align_corners=False)[0]
        >>> torch.allclose(torch.cat(bands, dim=1), whole, atol=1e-6)
        True
    """
    logits = logits.float()
    channels, in_h, in_w = logits.shape
    y0, y1, wy = _source(size[0], in_h, logits.device)
    x0, x1, wx = _source(size[1], in_w, logits.device)
    band = max(1, _BAND_BYTES // (4 * channels * size[1]))
    for start in range(0, size[0], band):
        stop = min(start + band, size[0])
        top, bottom, weight = y0[start:stop], y1[start:stop], wy[start:stop, None]
        vertical = torch.lerp(logits[:, top], logits[:, bottom], weight)  # [K, rows, w]
        yield start, torch.lerp(vertical[:, :, x0], vertical[:, :, x1], wx)  # [K, rows, W]


def _source(out: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output index: the two source indices and the weight of the second (PyTorch's half-pixel rule)."""
    position = ((torch.arange(out, device=device, dtype=torch.float64) + 0.5) * (size / out) - 0.5).clamp_(min=0)
    first = position.floor().long().clamp_(max=size - 1)
    second = (first + 1).clamp_(max=size - 1)
    return first, second, (position - first).clamp_(0, 1).float()
