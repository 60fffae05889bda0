"""``check``: validate a dataset folder pair without training, reporting every problem in one run.

It runs the same pairing, decoding and mask rules as :class:`~trainkit.data.SegmentationDataset`, but
records each failure (naming the file) and carries on, so one run lists all unpaired files, unreadable or
truncated files, size mismatches and bad mask values, together with the per-class pixel histogram, the
images' pixel formats and duplicate images. Each file is read once: its bytes are hashed, their header read
and decoded from memory (TIFF images excepted, decoded from the file: see ``_decode``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainkit.data._decode import check_channels, lossy_format, pixel_format, read_bytes, read_image, read_mask
from trainkit.data._encoding import MaskEncoding, is_int
from trainkit.data._pairing import ambiguous_message, find_pairs, list_image_files, unpaired_message
from trainkit.errors import DataError

__all__ = ["CheckReport", "check"]

_LISTED = 20  # errors/warnings printed by str(report) before "... and N more"
_CHANNELS = {1: "1 (gray)", 2: "2 (gray+alpha)", 3: "3 (RGB)", 4: "4 (RGBA)"}


@dataclass
class CheckReport:
    """What :func:`check` found. ``ok`` is ``True`` when there are no errors (warnings are allowed).

    Attributes:
        images: The images folder.
        masks: The masks folder.
        pairs: Image/mask pairs found.
        checked: Pairs decoded and checked (fewer than ``pairs`` with ``max_files``).
        errors: Problems that break training, one line each, naming the file(s).
        warnings: Things worth a look that do not break training (duplicates, converted channels...).
        class_histogram: Pixels per class id over the checked masks (after ``color_map``/``value_map``).
        pixel_formats: Images per stored pixel format (``"RGB"``, ``"L"``, ``"P"``...).
        channel_counts: Images per stored channel count (before conversion to ``channels``).
        image_sizes: Images per ``(width, height)``.
        duplicates: Groups of image files with identical content.

    Example:
        >>> report = CheckReport(Path("images"), Path("masks"))
        >>> report.ok, report.errors
        (True, [])
    """

    images: Path
    masks: Path
    pairs: int = 0
    checked: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_histogram: dict[int, int] = field(default_factory=dict)
    pixel_formats: Counter[str] = field(default_factory=Counter)
    channel_counts: Counter[int] = field(default_factory=Counter)
    image_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    duplicates: list[list[Path]] = field(default_factory=list)
    ignore_index: int | None = 255

    @property
    def ok(self) -> bool:
        """``True`` when no errors were found.

        Example:
            >>> CheckReport(Path("i"), Path("m"), errors=["masks/a.png: truncated"]).ok
            False
        """
        return not self.errors

    def __str__(self) -> str:
        """A readable multi-line summary, as ``trainkit check`` prints it."""
        lines = [f"trainkit check: images={self.images}  masks={self.masks}"]
        checked = f" ({self.checked} checked)" if self.checked != self.pairs else ""
        lines.append(f"  pairs: {self.pairs}{checked}")
        if self.image_sizes:
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.image_sizes.most_common(5))
            more = f" and {len(self.image_sizes) - 5} more sizes" if len(self.image_sizes) > 5 else ""
            lines.append(f"  image sizes (WxH): {sizes}{more}")
        if self.channel_counts:
            channels = ", ".join(f"{_CHANNELS.get(c, c)}: {n}" for c, n in sorted(self.channel_counts.items()))
            formats = ", ".join(f"{name} {n}" for name, n in self.pixel_formats.most_common())
            lines.append(f"  image channels: {channels}  [formats: {formats}]")
        if self.class_histogram:
            total = sum(self.class_histogram.values())
            cells = []
            for class_id, count in sorted(self.class_histogram.items()):
                tag = " ignore" if class_id == self.ignore_index else ""
                cells.append(f"{class_id}{tag}: {count} ({100 * count / total:.1f}%)")
            lines.append("  class histogram (pixels): " + ", ".join(cells))
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title.upper()} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items[:_LISTED])
                if len(items) > _LISTED:
                    lines.append(f"  ... and {len(items) - _LISTED} more (see `report.{title}`)")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"result: {verdict} ({len(self.errors)} errors, {len(self.warnings)} warnings)")
        return "\n".join(lines)


def check(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    mask_suffix: str = "",
    num_classes: int | None = None,
    color_map: Mapping[tuple[int, int, int], int] | None = None,
    value_map: Mapping[int, int] | None = None,
    ignore_index: int | None = 255,
    channels: int = 3,
    recursive: bool = False,
    max_files: int | None = None,
) -> CheckReport:
    """Validate a dataset the way :class:`~trainkit.data.SegmentationDataset` reads it, reporting everything.

    Checks pairing (unpaired files, files sharing a stem), that every image and mask decodes (truncated or
    corrupt files), that sizes agree, that mask values are known colours/values and below ``num_classes``;
    collects the per-class pixel histogram, the images' channel counts and sizes, and finds duplicate images
    by content hash. It never stops at the first problem and never raises for a problem in the data.

    Args:
        images: Folder of images.
        masks: Folder of masks.
        mask_suffix: As in ``SegmentationDataset``.
        num_classes: When given, mask values ``>= num_classes`` (other than ``ignore_index``) are errors and
            classes never seen are warnings.
        color_map: As in ``SegmentationDataset``.
        value_map: As in ``SegmentationDataset``.
        ignore_index: As in ``SegmentationDataset``.
        channels: The channel count training will use; images stored otherwise get a warning.
        recursive: As in ``SegmentationDataset``.
        max_files: Check only the first ``max_files`` pairs (pairing is always checked in full).

    Returns:
        A :class:`CheckReport`; ``print(report)`` shows the summary, ``report.ok`` the verdict.

    Raises:
        ValueError: arguments of the wrong form (a bad ``color_map``, ``channels``, ``max_files``...).

    Example:
        >>> report = check("PennFudanPed/PNGImages", "PennFudanPed/PedMasks", mask_suffix="_mask")  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
        >>> report.ok  # doctest: +SKIP
        True
    """
    check_channels(channels)
    if max_files is not None and (not is_int(max_files) or max_files < 1):
        raise ValueError(f"`max_files` must be a positive integer or None, got {max_files!r}")
    encoding = MaskEncoding(
        color_map=color_map, value_map=value_map, ignore_index=ignore_index, num_classes=num_classes
    )
    report = CheckReport(Path(images), Path(masks), ignore_index=ignore_index)
    try:
        pairing = find_pairs(images, masks, mask_suffix=mask_suffix, recursive=recursive)
    except DataError:
        for folder, role in ((images, "images"), (masks, "masks")):
            try:
                list_image_files(folder, recursive=recursive, role=role)
            except DataError as err:
                report.errors.append(str(err))
        return report
    if pairing.ambiguous:
        report.errors.append(ambiguous_message(pairing))
    if pairing.unpaired_images or pairing.unpaired_masks:
        report.errors.append(unpaired_message(pairing, Path(images), Path(masks), mask_suffix))
    report.pairs = len(pairing.pairs)

    tally = _Tally()
    for image_path, mask_path in pairing.pairs[:max_files]:
        report.checked += 1
        try:
            _check_pair(image_path, mask_path, channels, encoding, report, tally)
        except Exception as err:  # a report, not a traceback: anything unexpected is one more error line
            report.errors.append(f"{image_path} / {mask_path}: unexpected {type(err).__name__}: {err}")

    report.class_histogram = {i: int(n) for i, n in enumerate(tally.histogram.tolist()) if n > 0}
    _add_warnings(report, tally, channels, num_classes)
    return report


@dataclass
class _Tally:
    """What :func:`check` counts over the pairs before it writes warnings."""

    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hashes: dict[str, list[Path]] = field(default_factory=dict)
    converted: Counter[str] = field(default_factory=Counter)
    lossy_masks: Counter[str] = field(default_factory=Counter)


def _check_image(image_path: Path, channels: int, report: CheckReport, tally: _Tally) -> torch.Tensor | None:
    """Read one image once: hash it, read its pixel format and decode it; ``None`` when it cannot be read."""
    try:
        data = read_bytes(image_path)
    except DataError as err:
        report.errors.append(str(err))
        return None
    tally.hashes.setdefault(hashlib.blake2b(data.data, digest_size=16).hexdigest(), []).append(image_path)
    fmt, stored = pixel_format(image_path, data=data)
    report.pixel_formats[fmt] += 1
    if stored is not None:
        report.channel_counts[stored] += 1
        if stored != channels:
            tally.converted[fmt] += 1
    try:
        image = read_image(image_path, channels, data=data)
    except DataError as err:
        report.errors.append(str(err))
        return None
    report.image_sizes[(image.shape[-1], image.shape[-2])] += 1
    return image


def _check_pair(
    image_path: Path,
    mask_path: Path,
    channels: int,
    encoding: MaskEncoding,
    report: CheckReport,
    tally: _Tally,
) -> None:
    """Decode one pair, record its problems in ``report`` and add its classes to ``tally.histogram``."""
    image = _check_image(image_path, channels, report, tally)
    try:
        data = read_bytes(mask_path)
        lossy = lossy_format(data)
        if lossy:
            tally.lossy_masks[lossy] += 1
        raw = read_mask(mask_path, rgb=encoding.color_map is not None, data=data)
    except DataError as err:
        report.errors.append(str(err))
        return
    if image is not None and tuple(image.shape[-2:]) != raw.shape[:2]:
        report.errors.append(
            f"size mismatch: image {image_path} is {image.shape[-1]}x{image.shape[-2]} (WxH), "
            f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]}"
        )
    try:
        ids = encoding.class_ids(raw, mask_path, lossy=lossy)
    except DataError as err:
        report.errors.append(str(err))
        return
    if ids.size and int(ids.min()) >= 0 and int(ids.max()) < 2**20:
        counts = np.bincount(ids.reshape(-1))
        if len(counts) > len(tally.histogram):
            grow = np.zeros(len(counts) - len(tally.histogram), dtype=np.int64)
            tally.histogram = np.concatenate([tally.histogram, grow])
        tally.histogram[: len(counts)] += counts
    try:
        encoding.check_classes(ids, mask_path, lossy=lossy)
    except DataError as err:
        report.errors.append(str(err))


def _add_warnings(report: CheckReport, tally: _Tally, channels: int, num_classes: int | None) -> None:
    report.duplicates = [group for group in tally.hashes.values() if len(group) > 1]
    for group in report.duplicates:
        report.warnings.append(
            f"identical images (same content): {', '.join(str(p) for p in group)}; duplicates can leak between "
            "train and validation splits"
        )
    if tally.converted:
        formats = ", ".join(f"{n} stored as {fmt}" for fmt, n in tally.converted.most_common())
        report.warnings.append(f"images converted to `channels`={channels}: {formats}")
    for lossy, count in tally.lossy_masks.items():
        report.warnings.append(
            f"{count} masks are {lossy} files: lossy compression creates values that are not classes near edges; "
            "`target='binary'` thresholds them at mid-range (> 127), class-id masks must be re-saved losslessly (PNG)"
        )
    if num_classes is not None and report.class_histogram:
        unseen = [c for c in range(num_classes) if c not in report.class_histogram]
        if unseen:
            report.warnings.append(f"classes with no pixel in the checked masks: {unseen[:20]}")
