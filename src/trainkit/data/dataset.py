"""``SegmentationDataset``: folders of images and masks, paired by stem, as correct tensors.

Contract of a sample ``image, target = ds[i]``:

* ``image``: ``tv_tensors.Image`` uint8 ``[C, H, W]``, ``C = channels``;
* ``target="semantic"``: ``tv_tensors.Mask`` int64 ``[H, W]`` of class ids (``ignore_index`` kept);
* ``target="binary"``: ``tv_tensors.Mask`` int64 ``[H, W]`` of 0/1 (lossy JPEG masks: thresholded at mid-range);
* ``target="instance"``: torchvision's detection dict: ``masks`` (``tv_tensors.Mask`` bool ``[N, H, W]``),
  ``boxes`` (``tv_tensors.BoundingBoxes`` float32 xyxy, ``x2``/``y2`` = last column/row + 1), ``labels``
  int64 ``[N]``, ``area`` float32 ``[N]`` (box area), ``iscrowd`` int64 zeros, ``image_id`` int64 (the index).

Images are turned by their EXIF orientation tag, as viewers show them (``exif_orientation=True``); masks are
read as stored. A mask set that holds only 0 and ``ignore_index`` (0/255 binary masks read as class ids, where
255 would hide the whole foreground) is refused when the dataset is built, from a sample of
:data:`SAMPLED_MASKS` masks: cheap, once, and in the calling process, before any DataLoader worker starts.

Random augmentations draw from the global RNGs, like any dataset's: the ``Trainer`` seeds them for each
sample from ``(seed, epoch, position)`` (``trainkit.engine.Seeding``), one mechanism for this dataset
and the user's own.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision import tv_tensors

from trainkit.data._decode import (
    TORCHVISION_DEPRECATION,
    check_channels,
    lossy_format,
    read_bytes,
    read_image,
    read_mask,
)
from trainkit.data._encoding import MaskEncoding
from trainkit.data._pairing import pair_files
from trainkit.data._sizes import size_mismatch
from trainkit.data._targets import TARGETS, binary_from_raw, instance_target, label_table, semantic_target
from trainkit.data._threads import one_thread
from trainkit.data.class_dict import ClassDict, read_class_dict
from trainkit.errors import DataError, MaskValueError

__all__ = ["SAMPLED_MASKS", "TARGETS", "ClassDict", "SegmentationDataset", "read_class_dict"]

SAMPLED_MASKS = 8
"""Masks read when a dataset is built (first, last and evenly between) to refuse 0/255 masks read as class ids."""

_LOSSY_SUFFIXES = (".jpg", ".jpeg")  # mask files named as lossy; the rules follow the content (`lossy_format`)

Sample = tuple[tv_tensors.Image, Any]
JointTransform = Callable[[tv_tensors.Image, Any], tuple[Any, Any]]


class SegmentationDataset(Dataset[Sample]):
    """Images and masks from two folders, paired by file stem, decoded into the tensors a model trains on.

    Args:
        images: Folder of images.
        masks: Folder of masks; a mask's stem is the image's stem + ``mask_suffix`` (extensions may differ).
        mask_suffix: e.g. ``"_mask"`` for ``img1.png`` ↔ ``img1_mask.gif``.
        target: ``"semantic"`` (class ids), ``"binary"`` (0/1) or ``"instance"`` (detection dict).
        num_classes: When given, semantic class ids must be ``< num_classes`` (or ``ignore_index``), and
            instance labels too; a violation raises :class:`~trainkit.errors.MaskValueError` naming the file.
        color_map: ``{(r, g, b): class_id}`` for RGB colour-coded masks (see :func:`read_class_dict`).
        value_map: ``{raw_value: class_id}`` for single-channel masks whose values are not class ids.
        ignore_index: Class id of "don't care" pixels; stored pixels with this value pass through untouched
            (and are not objects for ``target="instance"``).
        threshold: ``target="binary"`` only: foreground is ``value > threshold``. By default any non-zero value
            is foreground, except in lossy (JPEG) mask files, whose compression noise puts values 1..254 near the
            edges of a 0/255 mask: there foreground is above mid-range (``> 127`` for 8-bit), with one warning.
            Without a map, 0/255 masks give 0/1 (255 counts as foreground, not ignore). With the other targets a mask
            set of only 0 and ``ignore_index`` is refused (see the module docstring), proposing ``target="binary"``.
        instance_labels: ``target="instance"`` only: ``{object_id: class}``; default: every object is class 1.
        channels: Image channels: 1 (gray), 3 (RGB) or 4 (RGBA); gray, palette and RGBA files are converted.
        exif_orientation: Turn JPEG/PNG/WEBP images by their EXIF orientation tag, as viewers (and annotation
            tools) show them; ``False`` reads the stored pixels, for masks made on those. Masks are read as stored.
        transforms: Joint transform ``(image, target) -> (image, target)``. Its random draws come from the global
            RNGs, which ``Trainer`` seeds per sample (``Trainer(seed=...)``), so they do not depend on the
            number of DataLoader workers.
        strict: Raise on unpaired files (default) or drop them with one warning.
        recursive: Also search subfolders; pairing then uses the relative path without extension.
        seed: Deprecated and ignored: per-sample seeding moved to the ``Trainer`` (``Trainer(seed=...)``), which
            seeds every dataset's samples alike. Passing it warns.

    Raises:
        PairingError: unpaired files (``strict=True``) or files sharing a stem.
        DataError: a folder does not exist or holds no images.
        MaskValueError: the sampled masks hold only 0 and ``ignore_index`` with a target other than ``"binary"``.
        ValueError: an argument of the wrong form.

    Example:
        >>> ds = SegmentationDataset("PennFudanPed/PNGImages", "PennFudanPed/PedMasks", mask_suffix="_mask",
        ...                          target="instance")  # doctest: +SKIP
        >>> image, target = ds[0]  # doctest: +SKIP
        >>> image.dtype, target["boxes"].shape  # doctest: +SKIP
        (torch.uint8, torch.Size([2, 4]))
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        masks: str | os.PathLike[str],
        *,
        mask_suffix: str = "",
        target: str = "semantic",
        num_classes: int | None = None,
        color_map: Mapping[tuple[int, int, int], int] | None = None,
        value_map: Mapping[int, int] | None = None,
        ignore_index: int | None = 255,
        threshold: float | None = None,
        instance_labels: Mapping[int, int] | None = None,
        channels: int = 3,
        exif_orientation: bool = True,
        transforms: JointTransform | None = None,
        strict: bool = True,
        recursive: bool = False,
        seed: int | None = None,
    ) -> None:
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}")
        check_channels(channels)
        if threshold is not None and target != "binary":
            raise ValueError(f"`threshold` applies to `target='binary'` only, got `target={target!r}`")
        if instance_labels is not None and target != "instance":
            raise ValueError(f"`instance_labels` applies to `target='instance'` only, got `target={target!r}`")
        if transforms is not None and not callable(transforms):
            raise TypeError(f"`transforms` must be callable(image, target) -> (image, target), got {transforms!r}")
        if seed is not None:
            warnings.warn(
                "`SegmentationDataset(seed=...)` is deprecated and has no effect: the Trainer seeds each sample's "
                "augmentation from `Trainer(seed=...)`, the epoch and the sample's position, for every dataset; "
                "drop the argument",
                DeprecationWarning,
                stacklevel=2,
            )
        self.images = Path(images)
        self.masks = Path(masks)
        self.target = target
        self.threshold = threshold
        self.channels = channels
        self.exif_orientation = exif_orientation
        self.transforms = transforms
        self.encoding = MaskEncoding(
            color_map=color_map, value_map=value_map, ignore_index=ignore_index, num_classes=num_classes
        )
        self._labels = label_table(instance_labels, num_classes) if target == "instance" else None
        self.samples: list[tuple[Path, Path]] = pair_files(
            self.images, self.masks, mask_suffix=mask_suffix, recursive=recursive, strict=strict
        )
        # One warning a dataset: here, from the names, so DataLoader workers inherit `_lossy_warned`; a lossy
        # file under another name is caught by its content in `_load` (then once per process).
        self._lossy_warned = False
        lossy = sum(mask.suffix.lower() in _LOSSY_SUFFIXES for _, mask in self.samples)
        if lossy:
            self._warn_lossy(f"{lossy} of {len(self.samples)} masks are JPEG files", stacklevel=2)
        self._refuse_hidden_foreground()

    def __len__(self) -> int:
        """Number of image/mask pairs.

        Example:
            >>> len(ds)  # doctest: +SKIP
            170
        """
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        """Decode sample ``index`` and build its target; apply ``transforms``.

        Raises:
            DecodeError: an unreadable, truncated or corrupt file.
            MaskValueError: mask values outside the maps or ``num_classes``.
            DataError: image and mask sizes differ.

        Example:
            >>> image, mask = ds[0]  # doctest: +SKIP
        """
        image_path, mask_path = self.samples[index]  # IndexError when out of range, as for a list
        index = operator.index(index) % len(self.samples)  # ds[-1] gets the image_id of the last sample
        with one_thread():
            return self._load(index, image_path, mask_path)

    def _warn_lossy(self, which: str, stacklevel: int) -> None:
        """Warn once that masks are lossy, saying what this dataset does with them."""
        if self._lossy_warned or self.threshold is not None:  # an explicit threshold is the user's rule
            return
        self._lossy_warned = True
        if self.target == "binary" and not self.encoding.mapped:
            effect = (
                "`target='binary'` takes values above mid-range (> 127 for 8-bit) as foreground in them, not any "
                "non-zero value; pass `threshold=` for another rule (`threshold=0` for 0/1 masks), or re-save the "
                "masks as PNG"
            )
        else:
            effect = "class ids there are not the ones saved; re-save the masks losslessly (PNG)"
        warnings.warn(
            f"{which} (lossy): compression noise changes mask values near edges, so {effect}",
            UserWarning,
            stacklevel=stacklevel + 1,
        )

    def _refuse_hidden_foreground(self) -> None:
        """Raise when the sampled masks hold only 0 and ``ignore_index``: the foreground would all be ignored."""
        ignore = self.encoding.ignore_index
        if self.target == "binary" or self.encoding.mapped or ignore is None:
            return
        last = len(self.samples) - 1
        picks = sorted({round(k * last / (SAMPLED_MASKS - 1)) for k in range(SAMPLED_MASKS)})
        example = None
        for k in picks:
            mask_path = self.samples[k][1]
            try:
                with warnings.catch_warnings():  # a caller's `pytest.warns` or "always" filter would show it
                    warnings.filterwarnings("ignore", message=TORCHVISION_DEPRECATION, category=DeprecationWarning)
                    raw = read_mask(mask_path)
            except DataError:  # raised again, with its fix, when the sample is loaded
                continue
            ignored = raw == ignore
            if raw.ndim != 2 or not (ignored | (raw == 0)).all():
                return
            if example is None and ignored.any():
                example = mask_path
        if example is None:
            return
        if self.target == "semantic":
            fix = f"for binary masks (0 background, {ignore} foreground) pass `target='binary'` ({ignore} becomes 1)"
        else:
            fix = f"for binary masks pass `target='binary'`; for one object an image (id {ignore}), `ignore_index=None`"
        raise MaskValueError(
            f"the masks hold only the values 0 and {ignore} (e.g. {example}; {len(picks)} masks sampled), and {ignore} "
            f"is `ignore_index`: with `target={self.target!r}` every foreground pixel would be ignored and the model "
            f"would learn background only (mIoU 0). {fix[0].upper()}{fix[1:]}; or map the values yourself with "
            f"`value_map={{0: 0, {ignore}: 1}}`"
        )

    def _load(self, index: int, image_path: Path, mask_path: Path) -> Sample:
        image_data = read_bytes(image_path)
        image = read_image(image_path, self.channels, data=image_data, exif_orientation=self.exif_orientation)
        mask_data = read_bytes(mask_path)
        raw = read_mask(mask_path, rgb=self.encoding.color_map is not None, data=mask_data)
        if tuple(image.shape[-2:]) != raw.shape[:2]:
            raise DataError(
                size_mismatch(
                    image_path,
                    (image.shape[-2], image.shape[-1]),
                    f"its mask {mask_path}",
                    (raw.shape[0], raw.shape[1]),
                    image_data=image_data,
                    exif_orientation=self.exif_orientation,
                )
            )
        lossy = lossy_format(mask_data)
        if lossy:
            self._warn_lossy(f"masks such as {mask_path} are {lossy} files", stacklevel=3)
        target = self._build_target(raw, mask_path, index, lossy)
        sample_image = tv_tensors.Image(image)
        if self.transforms is None:
            return sample_image, target
        return self.transforms(sample_image, target)

    def _build_target(self, raw: np.ndarray, mask_path: Path, index: int, lossy: str | None) -> Any:
        encoding = self.encoding
        if self.target == "binary":
            return binary_from_raw(raw, encoding, mask_path, threshold=self.threshold, lossy=lossy)
        ids = encoding.class_ids(raw, mask_path, lossy=lossy)
        if self.target == "instance":
            return instance_target(
                ids, index, mask_path, ignore_index=encoding.ignore_index, labels=self._labels, lossy=lossy
            )
        encoding.check_classes(ids, mask_path, lossy=lossy)
        return semantic_target(ids)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} samples, images={str(self.images)!r}, masks={str(self.masks)!r}, "
            f"target={self.target!r})"
        )
