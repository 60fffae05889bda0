"""The steps :func:`~trainkit.data.check` and :func:`~trainkit.data.check_coco` share: reading an image once,
counting class pixels, and the findings written once every file was seen."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainkit.data._decode import pixel_format, read_bytes, read_image
from trainkit.data._encoding import MaskEncoding
from trainkit.errors import DataError

if TYPE_CHECKING:
    import torch

    from trainkit.data.check import CheckReport

__all__ = ["Tally", "add_counts", "add_warnings", "check_image", "hidden_foreground"]


@dataclass
class Tally:
    """What a check counts over the files before it writes warnings."""

    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hashes: dict[str, list[Path]] = field(default_factory=dict)
    converted: Counter[str] = field(default_factory=Counter)
    lossy_masks: Counter[str] = field(default_factory=Counter)


def check_image(
    image_path: Path, channels: int, report: CheckReport, tally: Tally, *, exif_orientation: bool
) -> tuple[torch.Tensor, np.ndarray] | None:
    """Read one image once: hash it, read its pixel format and decode it; ``None`` when it cannot be read.

    Returns the decoded image and the file's bytes (for its EXIF orientation tag).
    """
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
        image = read_image(image_path, channels, data=data, exif_orientation=exif_orientation)
    except DataError as err:
        report.errors.append(str(err))
        return None
    report.image_sizes[(image.shape[-1], image.shape[-2])] += 1
    return image, data


def add_counts(tally: Tally, ids: np.ndarray) -> None:
    """Add the pixels of each id in ``ids`` (non-negative integers) to ``tally.histogram``."""
    if ids.size and int(ids.min()) >= 0 and int(ids.max()) < 2**20:
        counts = np.bincount(ids.reshape(-1))
        if len(counts) > len(tally.histogram):
            grow = np.zeros(len(counts) - len(tally.histogram), dtype=np.int64)
            tally.histogram = np.concatenate([tally.histogram, grow])
        tally.histogram[: len(counts)] += counts


def hidden_foreground(histogram: Mapping[int, int], target: str, encoding: MaskEncoding) -> str | None:
    """The error for masks of only 0 and ``ignore_index`` read as class ids (0/255 binary masks), else ``None``.

    Example:
        >>> hidden_foreground({0: 900, 255: 100}, "semantic", MaskEncoding()).split(":")[0]
        'the masks hold only the values 0 and 255, and 255 is `ignore_index`'
        >>> hidden_foreground({0: 900, 1: 100}, "semantic", MaskEncoding()) is None
        True
    """
    ignore = encoding.ignore_index
    if (
        target == "binary"
        or encoding.mapped
        or ignore is None
        or ignore not in histogram
        or set(histogram) - {0, ignore}
    ):
        return None
    return (
        f"the masks hold only the values 0 and {ignore}, and {ignore} is `ignore_index`: with `target={target!r}` "
        "every foreground pixel would be ignored and the model would learn background only (mIoU 0); for binary "
        f"masks (0 background, {ignore} foreground) check and train with `target='binary'` (`--target binary`), "
        f"which makes {ignore} class 1"
    )


def add_warnings(report: CheckReport, tally: Tally, channels: int, num_classes: int | None) -> None:
    """Write the findings that need every file seen: duplicates, converted images, lossy masks, unseen classes."""
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
