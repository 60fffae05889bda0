"""Joint transforms: one random draw moves the image, its mask and its boxes together.

Built on :mod:`torchvision.transforms.v2` and :mod:`torchvision.tv_tensors`. Every transform here maps
``(image, target) -> (image, target)`` where

* ``image`` is a ``tv_tensors.Image``, uint8 ``[C, H, W]`` (a plain tensor is wrapped);
* ``target`` is a ``tv_tensors.Mask`` int64 ``[H, W]`` of class ids (semantic/binary; a plain 2-D tensor is
  wrapped), or a torchvision detection dict with ``masks`` (``[N, H, W]``), ``boxes`` (xyxy), ``labels``, ...

Masks are always resized with nearest neighbour, so no new class ids appear, sampled at the pixel centres the
bilinear image is (``nearest-exact``: torchvision's default ``nearest`` shifts a mask by up to half a pixel
against its image); pixels that padding creates are
``ignore_index`` (255) in semantic masks and background (``False``) in instance masks; semantic masks leave as
int64. With ``normalize=False`` images stay uint8 so the float conversion can happen on the device with
:class:`BatchNormalize`.

Randomness comes from PyTorch's global generator (as in torchvision), so seeding it before a call
(``torch.manual_seed``) reproduces the draw.

Example:
    >>> import torch
    >>> from torchvision import tv_tensors
    >>> image = tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8))
    >>> mask = tv_tensors.Mask(torch.zeros(40, 60, dtype=torch.int64))
    >>> image, mask = train_preset(32)(image, mask)
    >>> image.dtype, tuple(image.shape), mask.dtype, tuple(mask.shape)
    (torch.float32, (3, 32, 32), torch.int64, (32, 32))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainkit.utils.batch import BATCH, INPUT, INPUT_KEYS, key_for, map_tensors

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BatchNormalize", "eval_preset", "train_preset"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet RGB images in [0, 1], the usual default for normalisation."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet RGB images in [0, 1]."""


def train_preset(
    size: int | Sequence[int],
    *,
    scale: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    hue: float = 0.0,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> v2.Compose:
    """Training augmentation: random scale, random crop to ``size``, horizontal flip, light colour jitter.

    The steps, in order (as in torchvision's segmentation references):

    1. rescale by ``s * max(h / H, w / W)`` with ``s`` uniform in ``scale``, so ``s = 1`` just covers the crop;
    2. pad to at least ``size`` at a random position: image with 0, semantic masks with ``ignore_index``,
       instance masks with background;
    3. random crop to ``size`` (boxes are clipped; instances left empty are dropped and ``area`` recomputed);
    4. horizontal flip with probability ``hflip``;
    5. colour jitter of strength ``color_jitter`` on the image only (0 turns it off), and a hue shift of up
       to ``hue`` when asked;
    6. semantic masks cast to int64; with ``normalize=True`` the image becomes float32 scaled to [0, 1] and
       normalised with ``mean``/``std``.

    Args:
        size: Output ``(height, width)``, or one int for a square.
        scale: Range of the random scale factor relative to the crop size; ``(1, 1)`` turns the zoom off
            (``trainkit train``'s default: on runs of a few hundred steps the zoom slowed learning).
        hflip: Probability of a horizontal flip.
        color_jitter: Brightness, contrast and saturation jitter; 0 disables.
        hue: Largest hue shift, in [0, 0.5]; 0 (the default) keeps the hue. Off by default because a hue shift
            changes what the colour of a class means in many datasets (vegetation, stains, lesions) and costs
            3.5x the rest of the jitter (it goes through HSV: 11.4 ms against 2.0 ms a 512x512 image).
        normalize: Convert the image to normalised float32 here; ``False`` keeps uint8 for
            :class:`BatchNormalize` on the device.
        mean: Per-channel mean used when ``normalize=True``.
        std: Per-channel standard deviation used when ``normalize=True``.
        ignore_index: Value written into semantic-mask pixels created by padding.

    Returns:
        A ``v2.Compose`` called as ``image, target = preset(image, target)``.

    Raises:
        ValueError: an argument is out of range.
        TypeError: ``size`` is not an int or a pair of ints.

    Example:
        >>> preset = train_preset((32, 48), normalize=False)
        >>> image = tv_tensors.Image(torch.zeros(3, 20, 20, dtype=torch.uint8))
        >>> image, mask = preset(image, tv_tensors.Mask(torch.ones(20, 20, dtype=torch.int64)))
        >>> tuple(image.shape), image.dtype, mask.dtype
        ((3, 32, 48), torch.uint8, torch.int64)
    """
    out_size = _pair(size, "size")
    if not (isinstance(scale, Sequence) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ValueError(f"`scale` must be a pair (low, high) with 0 < low <= high, got {scale!r}; e.g. (0.5, 2.0)")
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"`hflip` is a probability in [0, 1], got {hflip!r}")
    if color_jitter < 0:
        raise ValueError(f"`color_jitter` must be >= 0 (0 turns it off), got {color_jitter!r}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"`hue` is the largest hue shift, in [0, 0.5] (0 keeps the hue), got {hue!r}")
    steps: list[Any] = [
        _CheckInputs(),
        _RandomScale(out_size, (float(scale[0]), float(scale[1]))),
        _RandomPadToSize(out_size, ignore_index),
        v2.RandomCrop(out_size),
        v2.RandomHorizontalFlip(hflip),
    ]
    if color_jitter > 0 or hue > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=hue))
    steps.append(_FinishTarget())
    steps += _normalize_steps(normalize, mean, std)
    return v2.Compose(steps)


def eval_preset(
    size: int | Sequence[int],
    *,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Evaluation transform: resize to exactly ``size`` (image bilinear, masks nearest-exact), no randomness.

    Args:
        size: Output ``(height, width)``, or one int for a square (the aspect ratio is not kept).
        normalize: Convert the image to normalised float32 here; ``False`` keeps uint8 for
            :class:`BatchNormalize` on the device.
        mean: Per-channel mean used when ``normalize=True``.
        std: Per-channel standard deviation used when ``normalize=True``.

    Returns:
        A ``v2.Compose`` called as ``image, target = preset(image, target)``.

    Raises:
        ValueError: ``size`` is not positive.
        TypeError: ``size`` is not an int or a pair of ints.

    Example:
        >>> image = tv_tensors.Image(torch.zeros(3, 30, 50, dtype=torch.uint8))
        >>> image, mask = eval_preset(16)(image, tv_tensors.Mask(torch.zeros(30, 50, dtype=torch.int64)))
        >>> tuple(image.shape), tuple(mask.shape)
        ((3, 16, 16), (16, 16))
    """
    steps: list[Any] = [_CheckInputs(), partial(_resize, size=_pair(size, "size")), _FinishTarget()]
    return v2.Compose(steps + _normalize_steps(normalize, mean, std))


class BatchNormalize:
    """Convert a batch of images to float32 and normalise it, on whatever device the batch is on.

    Pair it with ``train_preset(..., normalize=False)`` so images travel as uint8 from the loader and the
    conversion runs on the GPU. uint8 images are scaled to [0, 1] first; float images are only normalised.
    The batch may be the image tensor ``[N, C, H, W]`` itself, a tuple or list whose first element holds
    the images, or a dict with an input key of the batch roles table (``"image"``, ``"images"``, ``"input"``,
    ``"inputs"``, ``"x"``: :data:`trainkit.utils.batch.INPUT_KEYS`); every tensor of that input entry is
    normalised, the other entries are returned untouched, in a container of the same kind.

    Args:
        mean: Per-channel mean (of images in [0, 1]).
        std: Per-channel standard deviation, each > 0.

    Raises:
        ValueError: ``mean`` and ``std`` differ in length or a ``std`` is not positive.

    Example:
        >>> normalize = BatchNormalize(mean=(0.5,), std=(0.5,))
        >>> images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
        >>> batch = normalize((images, torch.zeros(1, 1, 2, dtype=torch.int64)))
        >>> batch[0].flatten().tolist()
        [-1.0, 1.0]
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(
                f"`mean` and `std` need one value per channel and the same length, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"every `std` value must be > 0, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._constants: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: Any) -> Any:
        """Return ``batch`` with its image tensor converted to normalised float32.

        Example:
            >>> BatchNormalize((0.0,), (1.0,))({"image": torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)})["image"]
            tensor([[[[1.]]]])
        """
        if isinstance(batch, Mapping):
            if (key := key_for(batch, INPUT)) is not None:
                return {**batch, key: map_tensors(batch[key], self._normalize)}
        elif isinstance(batch, torch.Tensor) or (
            isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, tuple, list, Mapping))
        ):
            return map_tensors(batch, self._normalize_inputs, with_role=True)  # the root tensor, or position 0
        raise TypeError(
            f"`BatchNormalize` expects an image tensor [N, C, H, W], a tuple/list whose first element holds the "
            f"images, or a dict with an input key ({', '.join(INPUT_KEYS)}); got {type(batch).__name__}"
        )

    def _normalize_inputs(self, tensor: torch.Tensor, role: str) -> torch.Tensor:
        return self._normalize(tensor) if role in (BATCH, INPUT) else tensor

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != len(self.mean):
            raise ValueError(
                f"`BatchNormalize` with {len(self.mean)} channel(s) expects images [N, {len(self.mean)}, H, W], "
                f"got shape {tuple(images.shape)}; pass one `mean`/`std` value per channel"
            )
        if images.dtype == torch.uint8:
            images = images.to(torch.float32).div_(255.0)
        elif not images.is_floating_point():
            raise TypeError(f"`BatchNormalize` expects uint8 or floating-point images, got {images.dtype}")
        key = (images.device, images.dtype)
        if key not in self._constants:  # built once per device, so no host-to-device copy per batch
            shape = (1, -1, 1, 1)
            self._constants[key] = (
                torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(shape),
                torch.tensor(self.std, dtype=images.dtype, device=images.device).view(shape),
            )
        mean, std = self._constants[key]
        return (images - mean) / std

    def __repr__(self) -> str:
        return f"BatchNormalize(mean={self.mean}, std={self.std})"


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """``size`` as ``(height, width)`` of positive ints."""
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"`{name}` must be an int or a pair of ints (height, width), got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"`{name}` must be positive, got {size!r}")
    return pair


def _normalize_steps(normalize: bool, mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    if not normalize:
        return []
    BatchNormalize(mean, std)  # the same argument checks, raised when the preset is built
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]


class _CheckInputs:
    """Check the ``(image, target)`` contract once at the start and wrap plain tensors as tv_tensors.

    A plain 2-D target becomes a ``Mask``; in a dict, plain ``masks`` become a ``Mask`` and plain ``boxes`` become
    xyxy ``BoundingBoxes`` on the image's canvas. Without this, v2 would pass plain tensors through unchanged and
    the mask would silently stop following the image.
    """

    def __call__(self, image: Any, target: Any) -> tuple[tv_tensors.Image, Any]:
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            got = f"shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(
                f"joint transforms expect the image as a `tv_tensors.Image` [C, H, W], got {got}; "
                "decode with `torchvision.io.decode_image` or use `trainkit.data.SegmentationDataset`"
            )
        image = image if isinstance(image, tv_tensors.Image) else tv_tensors.Image(image)
        hw = tuple(image.shape[-2:])
        if isinstance(target, torch.Tensor):
            if target.ndim != 2 or tuple(target.shape) != hw:
                raise ValueError(
                    f"a semantic target must be a mask [H, W] the size of the image {hw}, got shape "
                    f"{tuple(target.shape)}"
                )
            return image, target if isinstance(target, tv_tensors.Mask) else tv_tensors.Mask(target)
        if isinstance(target, Mapping):
            target = dict(target)
            masks = target.get("masks")
            if isinstance(masks, torch.Tensor) and not isinstance(masks, tv_tensors.Mask):
                target["masks"] = tv_tensors.Mask(masks)
            boxes = target.get("boxes")
            if isinstance(boxes, torch.Tensor) and not isinstance(boxes, tv_tensors.BoundingBoxes):
                target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=hw)
            return image, target
        raise TypeError(
            "joint transforms expect the target as a `tv_tensors.Mask` [H, W] or a detection dict with "
            f"'masks'/'boxes'/'labels', got {type(target).__name__}"
        )


class _RandomScale:
    """Resize by ``s * max(h / H, w / W)``, ``s`` uniform in ``scale``: at ``s = 1`` the image just covers ``size``."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float]) -> None:
        self.size = size
        self.scale = scale

    def __call__(self, image: tv_tensors.Image, target: Any) -> tuple[Any, Any]:
        height, width = image.shape[-2:]
        s = float(torch.empty(()).uniform_(*self.scale))
        ratio = s * max(self.size[0] / height, self.size[1] / width)
        new_size = (max(1, round(height * ratio)), max(1, round(width * ratio)))
        return _resize(image, target, new_size)


def _resize(image: tv_tensors.Image, target: Any, size: tuple[int, int]) -> tuple[Any, Any]:
    """Resize to ``size``: the image bilinear (antialiased), masks nearest-exact, boxes scaled.

    ``v2.Resize`` resizes masks with ``nearest``, which picks source pixel ``floor(i * in / out)``: the mask
    moves by up to half a pixel against the bilinear image (1-2 % of the pixels of a 128-px mask of shapes
    disagree with their image after a 1.2x resize). ``nearest-exact`` samples at the same pixel centres as the
    image, so a mask stays on its image at every scale.
    """
    hw = list(size)

    def resize_target(value: Any) -> Any:
        if isinstance(value, (tv_tensors.Mask, tv_tensors.BoundingBoxes)):
            return v2.functional.resize(value, hw, interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return value

    image = v2.functional.resize(image, hw, antialias=True)
    if isinstance(target, Mapping):  # a detection dict: its masks and boxes move, labels and ids stay
        return image, {key: resize_target(value) for key, value in target.items()}
    return image, resize_target(target)


class _RandomPadToSize:
    """Pad to at least ``size`` at a random offset: image 0, semantic mask ``ignore_index``, instance masks 0."""

    def __init__(self, size: tuple[int, int], ignore_index: int) -> None:
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, image: tv_tensors.Image, target: Any) -> tuple[Any, Any]:
        height, width = image.shape[-2:]
        pad_h, pad_w = max(self.size[0] - height, 0), max(self.size[1] - width, 0)
        if pad_h == 0 and pad_w == 0:
            return image, target
        top = int(torch.randint(0, pad_h + 1, ()))
        left = int(torch.randint(0, pad_w + 1, ()))
        # Instance masks are per-object booleans: padding them with 255 would mark every new pixel as each object.
        mask_fill = self.ignore_index if isinstance(target, tv_tensors.Mask) else 0
        pad = v2.Pad([left, top, pad_w - left, pad_h - top], fill={tv_tensors.Image: 0, tv_tensors.Mask: mask_fill})
        return pad(image, target)


class _FinishTarget:
    """Cast semantic masks to int64; in detection dicts drop instances a crop emptied and recompute ``area``."""

    def __call__(self, image: Any, target: Any) -> tuple[Any, Any]:
        if isinstance(target, tv_tensors.Mask):
            return image, target.to(torch.int64)
        if not isinstance(target, Mapping) or not isinstance(target.get("boxes"), tv_tensors.BoundingBoxes):
            return image, target
        xyxy = v2.functional.convert_bounding_box_format(
            target["boxes"], new_format=tv_tensors.BoundingBoxFormat.XYXY
        ).as_subclass(torch.Tensor)
        keep = (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
        masks = target.get("masks")
        if isinstance(masks, torch.Tensor) and masks.ndim == 3 and masks.shape[0] == keep.shape[0]:
            keep &= masks.flatten(1).any(dim=1)
        n = keep.shape[0]
        finished = {}
        for key, value in target.items():
            per_instance = key != "image_id" and isinstance(value, torch.Tensor) and value.ndim >= 1
            if per_instance and value.shape[0] == n:
                kept = value[keep]  # indexing unwraps tv_tensors: wrap boxes and masks again
                value = tv_tensors.wrap(kept, like=value) if isinstance(value, tv_tensors.TVTensor) else kept
            finished[key] = value
        if "area" in finished:
            xyxy = xyxy[keep]
            finished["area"] = (xyxy[:, 3] - xyxy[:, 1]) * (xyxy[:, 2] - xyxy[:, 0])
        return image, finished
