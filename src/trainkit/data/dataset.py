"""``SegmentationDataset``: folders of images and masks, paired by stem, as correct tensors.

Contract of a sample ``image, target = ds[i]``:

* ``image``: ``tv_tensors.Image`` uint8 ``[C, H, W]``, ``C = channels``;
* ``target="semantic"``: ``tv_tensors.Mask`` int64 ``[H, W]`` of class ids (``ignore_index`` kept);
* ``target="binary"``: ``tv_tensors.Mask`` int64 ``[H, W]`` of 0/1 (lossy JPEG masks: thresholded at mid-range);
* ``target="instance"``: torchvision's detection dict: ``masks`` (``tv_tensors.Mask`` bool ``[N, H, W]``),
  ``boxes`` (``tv_tensors.BoundingBoxes`` float32 xyxy, ``x2``/``y2`` = last column/row + 1), ``labels``
  int64 ``[N]``, ``area`` float32 ``[N]`` (box area), ``iscrowd`` int64 zeros, ``image_id`` int64 (the index).

Random augmentations draw from the global RNGs, like any dataset's: the ``Trainer`` seeds them for each
sample from ``(seed, epoch, position)`` (``trainkit.engine.Seeding``), one mechanism for this dataset
and the user's own.
"""

from __future__ import annotations

import csv
import operator
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from trainkit.data._decode import check_channels, lossy_format, read_bytes, read_image, read_mask
from trainkit.data._encoding import MaskEncoding
from trainkit.data._pairing import pair_files
from trainkit.data._targets import binary_target, instance_target, label_table, semantic_target
from trainkit.errors import DataError

__all__ = ["TARGETS", "ClassDict", "SegmentationDataset", "read_class_dict"]

TARGETS: tuple[str, ...] = ("semantic", "binary", "instance")
"""The target kinds :class:`SegmentationDataset` builds."""

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
            Without a map, 0/255 masks give 0/1 (255 counts as foreground, not ignore).
        instance_labels: ``target="instance"`` only: ``{object_id: class}``; default: every object is class 1.
        channels: Image channels: 1 (gray), 3 (RGB) or 4 (RGBA); gray, palette and RGBA files are converted.
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
        with _one_thread():
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

    def _load(self, index: int, image_path: Path, mask_path: Path) -> Sample:
        image = read_image(image_path, self.channels)
        mask_data = read_bytes(mask_path)
        raw = read_mask(mask_path, rgb=self.encoding.color_map is not None, data=mask_data)
        if tuple(image.shape[-2:]) != raw.shape[:2]:
            raise DataError(
                f"image {image_path} is {image.shape[-1]}x{image.shape[-2]} (WxH) but its mask {mask_path} is "
                f"{raw.shape[1]}x{raw.shape[0]}; resize the mask to the image (nearest neighbour) or fix the pairing"
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
        if self.target == "binary" and not encoding.mapped:
            values = raw.max(axis=2) if raw.ndim == 3 else raw  # colour masks: any non-zero channel
            threshold = self.threshold
            if threshold is None and lossy:  # noise near edges: a 0/255 JPEG holds 1..254 there (8-bit, uint8)
                threshold = np.iinfo(values.dtype).max // 2
            return binary_target(values, threshold=threshold, ignore_index=None)
        ids = encoding.class_ids(raw, mask_path, lossy=lossy)
        if self.target == "binary":
            return binary_target(ids, threshold=self.threshold, ignore_index=encoding.ignore_index)
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


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run one sample's work with one intra-op thread.

    The tensors of a single image are too small for PyTorch's thread pool: in the main process
    (``num_workers=0``) on 2 busy cores, ``train_preset`` at 64 px took 19.5 ms a sample with 2
    threads and 2.2 ms with 1. DataLoader workers already run with one thread each.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ClassDict(NamedTuple):
    """What :func:`read_class_dict` returns: the ``color_map`` and the class names in id order.

    Example:
        >>> color_map, names = ClassDict({(0, 0, 0): 0}, ["Void"])
    """

    color_map: dict[tuple[int, int, int], int]
    names: list[str]


def read_class_dict(
    path: str | os.PathLike[str], *, ignore: str | tuple[str, ...] = (), ignore_index: int = 255
) -> ClassDict:
    """Read a CamVid-style ``class_dict.csv`` (header ``name,r,g,b``) into a ``color_map`` and names.

    Class ids follow the row order; classes named in ``ignore`` map to ``ignore_index`` and take no id.

    Args:
        path: The CSV file.
        ignore: Class name(s) to map to ``ignore_index`` (e.g. ``"Void"``).
        ignore_index: The id given to ignored colours.

    Raises:
        DataError: a missing file, a header without ``name,r,g,b``, bad numbers or a repeated colour.

    Example:
        >>> color_map, names = read_class_dict("CamVid/class_dict.csv")  # doctest: +SKIP
        >>> ds = SegmentationDataset("CamVid/train", "CamVid/train_labels", mask_suffix="_L",
        ...                          color_map=color_map, num_classes=len(names))  # doctest: +SKIP
    """
    path = Path(path)
    ignored = {ignore} if isinstance(ignore, str) else set(ignore)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise DataError(f"cannot read class dict {path}: {err}") from err
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if not {"name", "r", "g", "b"} <= set(header):
        raise DataError(f"{path}: the header must name columns name,r,g,b (any order), got {rows[0] if rows else []}")
    col = {name: header.index(name) for name in ("name", "r", "g", "b")}
    color_map: dict[tuple[int, int, int], int] = {}
    names: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            name = row[col["name"]].strip()
            colour = (int(row[col["r"]]), int(row[col["g"]]), int(row[col["b"]]))
        except (IndexError, ValueError) as err:
            raise DataError(f"{path}, line {line}: expected name,r,g,b with integer colours, got {row}") from err
        if not all(0 <= c <= 255 for c in colour) or colour in color_map:
            problem = "repeats an earlier colour" if colour in color_map else "has a colour outside 0..255"
            raise DataError(f"{path}, line {line}: {name!r} {problem} {colour}")
        if name in ignored:
            color_map[colour] = ignore_index
        else:
            color_map[colour] = len(names)
            names.append(name)
    unknown = ignored - set(row[col["name"]].strip() for row in rows[1:] if len(row) > col["name"])
    if unknown:
        raise DataError(f"{path}: `ignore` names {sorted(unknown)} are not classes in the file")
    return ClassDict(color_map, names)
