"""``CocoDataset``: a COCO annotation file (polygons, RLE) as the targets ``SegmentationDataset`` yields.

COCO's format is what CVAT, Label Studio, Roboflow and COCO itself export; LabelMe folders convert to it with
:func:`~trainkit.data.labelme_to_coco`. The rules a user meets:

* **Classes.** Category ids need not be contiguous (COCO's run 1..90 with gaps): the chosen categories
  (``categories=``, default all, by ascending id) become class ids 1..K in that order, 0 is background.
  ``ds.class_names[c]`` names class ``c``; ``ds.category_to_class`` maps a category id to its class id.
  Annotations of other categories are not drawn; categories named in ``ignore`` are drawn as ``ignore_index``.
* **Overlaps.** Annotations are drawn in file order, each on top of the ones before it, for the semantic and
  binary targets; instance masks are each annotation's own and may overlap.
* **Crowds** (``iscrowd=1``, usually RLE): their pixels are drawn with their class (they do belong to it); in
  the instance target they are kept with ``iscrowd=1`` (torchvision's detection reference drops them before
  training: ``keep = target["iscrowd"] == 0``).
* **Images without annotations** are kept, all background (0), or an instance target with no object.
* **Polygons of fewer than 3 points** have no area and are skipped with one warning (as detectron2 does).
* **Sizes.** The annotations are drawn at the ``height`` x ``width`` of their ``images`` entry; an image file of
  another size is an error (naming EXIF rotation when the sizes are swapped).
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision import tv_tensors

from trainkit.data._check_steps import Tally, add_counts, add_warnings, check_image
from trainkit.data._coco_index import CocoImage, draw_regions, mask_api, missing_message, read_coco
from trainkit.data._decode import check_channels, read_bytes, read_image
from trainkit.data._sizes import size_mismatch
from trainkit.data._targets import TARGETS, binary_target, detection_dict, semantic_target
from trainkit.data._threads import one_thread
from trainkit.data.check import CheckReport
from trainkit.errors import DataError, PairingError

__all__ = ["CocoDataset", "check_coco"]

Sample = tuple[tv_tensors.Image, Any]


class CocoDataset(Dataset[Sample]):
    """Images and a COCO annotation file (polygons, RLE, crowds) as semantic, binary or instance targets.

    A sample has :class:`~trainkit.data.SegmentationDataset`'s contract (``image`` uint8 ``[C, H, W]``; an int64
    ``Mask`` of class ids or 0/1; or torchvision's detection dict), so the same ``transforms``, ``collate`` and
    ``collate_instances`` apply. The rules for classes, overlaps and crowds are in the module docstring.

    Args:
        annotations: The COCO JSON file (``instances_train2017.json``, CVAT's ``instances_default.json``...), or
            its content as a dict (what :func:`~trainkit.data.labelme_to_coco` returns).
        images: The folder that ``file_name`` of each image is relative to.
        target: ``"semantic"`` (class ids), ``"binary"`` (1 where any chosen category is) or ``"instance"``.
        categories: Category names or ids to learn, in class-id order (1, 2, ...); default: all, by ascending id.
        ignore: Category name(s) drawn as ``ignore_index`` ("don't care" regions); not objects of instance targets.
        ignore_index: The id of ignored pixels.
        channels: Image channels: 1 (gray), 3 (RGB) or 4 (RGBA).
        exif_orientation: Turn images by their EXIF orientation tag, as annotation tools show them.
        transforms: Joint transform ``(image, target) -> (image, target)``.
        strict: Raise when image files are missing (default), or drop those images with one warning.

    Raises:
        ImportError: pycocotools is not installed (``pip install trainkit[coco]``).
        DataError: the file is unreadable or malformed; ``PairingError`` when image files are missing.
        ValueError: an argument of the wrong form.

    Example:
        >>> ds = CocoDataset("coco/annotations/instances_val2017.json", "coco/val2017")  # doctest: +SKIP
        >>> ds.class_names[:3], ds.category_to_class[90], ds.num_classes  # doctest: +SKIP
        (['background', 'person', 'bicycle'], 80, 81)
        >>> image, mask = ds[0]  # doctest: +SKIP
        >>> mask.dtype, mask.unique().tolist()  # doctest: +SKIP
        (torch.int64, [0, 1, 62, 65])
    """

    def __init__(
        self,
        annotations: str | os.PathLike[str] | Mapping[str, Any],
        images: str | os.PathLike[str],
        *,
        target: str = "semantic",
        categories: Sequence[str | int] | None = None,
        ignore: str | Sequence[str] = (),
        ignore_index: int | None = 255,
        channels: int = 3,
        exif_orientation: bool = True,
        transforms: Callable[[tv_tensors.Image, Any], tuple[Any, Any]] | None = None,
        strict: bool = True,
    ) -> None:
        _check_arguments(target, categories, ignore_index, channels)
        if transforms is not None and not callable(transforms):
            raise TypeError(f"`transforms` must be callable(image, target) -> (image, target), got {transforms!r}")
        mask_api()  # here, not at the first sample: the install hint before any DataLoader worker starts
        self.images = Path(images)
        self.target = target
        self.ignore_index = ignore_index
        self.channels = channels
        self.exif_orientation = exif_orientation
        self.transforms = transforms
        index = read_coco(annotations, self.images, categories=categories, ignore=ignore, ignore_index=ignore_index)
        self.source = index.source
        self.class_names: list[str] = index.class_names
        self.category_to_class: dict[int, int] = index.category_to_class
        self.missing: list[CocoImage] = index.missing
        self.skipped_annotations: list[Any] = index.skipped
        if index.missing and (strict or not index.images):
            fix = "; check `images=`, or pass `strict=False` to drop them" if index.images else "; check `images=`"
            raise PairingError(missing_message(index.missing, index.source, self.images) + fix)
        if index.missing:
            warnings.warn(
                f"dropping images (`strict=False`): {missing_message(index.missing, index.source, self.images)}",
                stacklevel=2,
            )
        if index.skipped:
            warnings.warn(_skipped_message(index.skipped, index.source), UserWarning, stacklevel=2)
        self.samples: list[CocoImage] = index.images

    @property
    def num_classes(self) -> int:
        """Classes of the targets, background included: K + 1 (2 for ``target="binary"``).

        Example:
            >>> ds.num_classes  # doctest: +SKIP
            81
        """
        return 2 if self.target == "binary" else len(self.class_names)

    def __len__(self) -> int:
        """Number of images (with or without annotations).

        Example:
            >>> len(ds)  # doctest: +SKIP
            5000
        """
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        """Decode image ``index``, draw its annotations into the target and apply ``transforms``.

        Raises:
            DecodeError: an unreadable, truncated or corrupt image.
            DataError: the image's size differs from its ``images`` entry, or a segmentation cannot be decoded.

        Example:
            >>> image, target = ds[0]  # doctest: +SKIP
            >>> tuple(image.shape), tuple(target.shape)  # doctest: +SKIP
            ((3, 480, 640), (480, 640))
        """
        record = self.samples[operator.index(index)]
        with one_thread():
            image = self._read_image(record)
            target = self.build_target(record)
        if self.transforms is None:
            return image, target
        return self.transforms(image, target)

    def _read_image(self, record: CocoImage) -> tv_tensors.Image:
        data = read_bytes(record.path)
        image = read_image(record.path, self.channels, data=data, exif_orientation=self.exif_orientation)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise DataError(self._size_mismatch(record, (image.shape[-2], image.shape[-1]), data))
        return tv_tensors.Image(image)

    def _size_mismatch(self, record: CocoImage, image_hw: tuple[int, int], data: np.ndarray) -> str:
        return size_mismatch(
            record.path,
            image_hw,
            f"the size its annotations give (image id {record.image_id} in {self.source})",
            (record.height, record.width),
            image_data=data,
            exif_orientation=self.exif_orientation,
            mask_fix=f'fix "width"/"height" of image id {record.image_id}, or use the image that was annotated',
        )

    def build_target(self, record: CocoImage) -> Any:
        """The target of one image of ``samples``, without decoding the image.

        Example:
            >>> ds.build_target(ds.samples[0]).shape  # doctest: +SKIP
            torch.Size([480, 640])
        """
        regions = record.regions
        masks = draw_regions(regions, record.height, record.width, image=record.path, source=self.source)
        if self.target == "instance":
            keep = [k for k, r in enumerate(regions) if r.class_id != self.ignore_index and masks[k].any()]
            labels = np.array([regions[k].class_id for k in keep], dtype=np.int64)
            iscrowd = np.array([regions[k].iscrowd for k in keep], dtype=np.int64)
            return detection_dict(masks[keep], labels, iscrowd, record.image_id)
        ids = np.zeros((record.height, record.width), dtype=np.int64)
        for region, mask in zip(regions, masks, strict=True):  # file order: later annotations on top
            ids[mask] = region.class_id
        if self.target == "binary":
            return binary_target(ids, threshold=None, ignore_index=self.ignore_index)
        return semantic_target(ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.source}, target={self.target!r})"


def _check_arguments(target: str, categories: Any, ignore_index: Any, channels: int) -> None:
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}")
    check_channels(channels)
    if categories is not None and (isinstance(categories, (str, bytes)) or not isinstance(categories, Sequence)):
        raise ValueError(f"`categories` must be a list of category names or ids, got {categories!r}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0
    ):
        raise ValueError(f"`ignore_index` must be an integer >= 0 or None, got {ignore_index!r}")


def _skipped_message(skipped: list[Any], source: str) -> str:
    shown = ", ".join(str(s) for s in skipped[:5]) + (f" ... and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return (
        f"{source}: skipped {len(skipped)} annotations whose polygons have fewer than 3 points (no area): {shown}; "
        "they are not drawn. Fix them in the annotation tool if they should be objects"
    )


def check_coco(
    annotations: str | os.PathLike[str] | Mapping[str, Any],
    images: str | os.PathLike[str],
    *,
    target: str = "semantic",
    categories: Sequence[str | int] | None = None,
    ignore: str | Sequence[str] = (),
    ignore_index: int | None = 255,
    channels: int = 3,
    exif_orientation: bool = True,
    max_files: int | None = None,
) -> CheckReport:
    """Validate a COCO dataset the way :class:`CocoDataset` reads it, reporting everything, like :func:`check`.

    Reports a malformed file, missing, unreadable or duplicate images, images whose size differs from their
    ``images`` entry (naming EXIF rotation when swapped), segmentations pycocotools cannot decode, skipped
    polygons, and the per-class pixel histogram with class frequencies and suggested loss weights
    (``target="binary"``: a ``pos_weight``). It never raises for a problem in the data.

    Args:
        annotations: As in :class:`CocoDataset`.
        images: As in :class:`CocoDataset`.
        target: As in :class:`CocoDataset`; ``"instance"`` counts class ids but suggests no weights.
        categories: As in :class:`CocoDataset`.
        ignore: As in :class:`CocoDataset`.
        ignore_index: As in :class:`CocoDataset`.
        channels: The channel count training will use; images stored otherwise get a warning.
        exif_orientation: As in :class:`CocoDataset`.
        max_files: Check only the first ``max_files`` images.

    Returns:
        A :class:`~trainkit.data.CheckReport` whose ``masks`` is the annotation file.

    Raises:
        ImportError: pycocotools is not installed.
        ValueError: arguments of the wrong form.

    Example:
        >>> report = check_coco("annotations/instances_default.json", "images")  # doctest: +SKIP
        >>> report.ok, report.class_histogram  # doctest: +SKIP
        (True, {0: 901120, 1: 92160, 2: 6720})
    """
    _check_arguments(target, categories, ignore_index, channels)
    if max_files is not None and (isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1):
        raise ValueError(f"`max_files` must be a positive integer or None, got {max_files!r}")
    source = Path("<dict>") if isinstance(annotations, Mapping) else Path(annotations)
    report = CheckReport(Path(images), source, ignore_index=ignore_index, target=target, annotations=True)
    try:
        with warnings.catch_warnings():  # missing images and skipped polygons are listed in the report instead
            warnings.simplefilter("ignore")
            ds = CocoDataset(
                annotations,
                images,
                target="semantic" if target == "instance" else target,  # instance: the class ids' histogram
                categories=categories,
                ignore=ignore,
                ignore_index=ignore_index,
                channels=channels,
                exif_orientation=exif_orientation,
                strict=False,
            )
    except DataError as err:
        report.errors.append(str(err))
        return report
    if ds.missing:
        report.errors.append(missing_message(ds.missing, ds.source, ds.images))
    if ds.skipped_annotations:
        report.warnings.append(_skipped_message(ds.skipped_annotations, ds.source))
    report.pairs = len(ds)
    tally = Tally()
    for record in ds.samples[:max_files]:
        report.checked += 1
        decoded = check_image(record.path, channels, report, tally, exif_orientation=exif_orientation)
        if decoded is not None and tuple(decoded[0].shape[-2:]) != (record.height, record.width):
            image, data = decoded
            report.errors.append(
                f"size mismatch: {ds._size_mismatch(record, (image.shape[-2], image.shape[-1]), data)}"
            )
        try:
            add_counts(tally, ds.build_target(record).numpy())
        except DataError as err:
            report.errors.append(str(err))
    report.class_histogram = {i: int(n) for i, n in enumerate(tally.histogram.tolist()) if n > 0}
    report.num_classes = ds.num_classes  # the class ids', also for "instance" (read as "semantic" above)
    add_warnings(report, tally, channels, report.num_classes)
    return report
