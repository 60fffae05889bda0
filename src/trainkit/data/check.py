"""``check``: validate a dataset folder pair without training, reporting every problem in one run.

It runs the same pairing, decoding and mask rules as :class:`~trainkit.data.SegmentationDataset`, but
records each failure (naming the file) and carries on, so one run lists all unpaired files, unreadable or
truncated files, size mismatches and bad mask values, together with the per-class pixel histogram, the
images' pixel formats and duplicate images. Each file is read once: its bytes are hashed, their header read
and decoded from memory (TIFF images excepted, decoded from the file: see ``_decode``).

The summary also gives the class frequencies with ignored pixels left out, and loss weights that balance them:
``weight=`` from :func:`trainkit.losses.class_weights`, or a binary loss's ``pos_weight``. That one function
of the losses is imported when a report is printed, not with this module, so ``trainkit.data`` stays
independent of ``trainkit.losses`` (layers of DESIGN.md) while the numbers come from the one place that
defines them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainkit.data._check_steps import Tally, add_counts, add_warnings, check_image, hidden_foreground
from trainkit.data._decode import check_channels, lossy_format, read_bytes, read_mask
from trainkit.data._encoding import MaskEncoding, is_int
from trainkit.data._pairing import ambiguous_message, find_pairs, list_image_files, unpaired_message
from trainkit.data._sizes import size_mismatch
from trainkit.data._targets import TARGETS, binary_from_raw
from trainkit.errors import DataError

if TYPE_CHECKING:
    import torch

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
        ignore_index: The id of ignored pixels, left out of the frequencies and weights.
        target: The target kind checked: ``"semantic"``, ``"binary"`` (histogram of 0/1) or ``"instance"``
            (histogram of object ids, no weights).
        num_classes: The ``num_classes`` checked against, if given.
        annotations: ``masks`` is an annotation file (COCO, :func:`~trainkit.data.check_coco`), not a folder.

    Example:
        >>> report = CheckReport(Path("images"), Path("masks"), class_histogram={0: 900, 1: 90, 2: 10, 255: 50})
        >>> report.ok, report.errors, report.class_frequencies
        (True, [], {0: 0.9, 1: 0.09, 2: 0.01})
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
    target: str = "semantic"
    num_classes: int | None = None
    annotations: bool = False

    @property
    def class_frequencies(self) -> dict[int, float]:
        """Fraction of the counted pixels per class, ``ignore_index`` left out (empty when nothing was counted).

        Example:
            >>> CheckReport(Path("i"), Path("m"), class_histogram={0: 3, 1: 1, 255: 4}).class_frequencies
            {0: 0.75, 1: 0.25}
        """
        counts = {c: n for c, n in sorted(self.class_histogram.items()) if c != self.ignore_index}
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()} if total else {}

    def suggested_weights(self, method: str = "inverse_sqrt") -> torch.Tensor | None:
        """Loss ``weight=`` per class from the histogram (:func:`trainkit.losses.class_weights`), or ``None``.

        ``None`` for ``target="instance"`` (object ids are no classes), when fewer than two classes have pixels
        (nothing to balance), or when the histogram holds ids that do not fit ``num_classes`` (listed among the
        errors).

        Example:
            >>> report = CheckReport(Path("i"), Path("m"), class_histogram={0: 900, 1: 90, 2: 10, 255: 50})
            >>> report.suggested_weights()
            tensor([0.2198, 0.6951, 2.0852])
        """
        from trainkit.losses import class_weights  # imported here: see the module docstring

        if self.target == "instance" or len(self.class_frequencies) < 2:
            return None
        num_classes = 2 if self.target == "binary" else self.num_classes
        try:
            return class_weights(
                self.class_histogram, method=method, num_classes=num_classes, ignore_index=self.ignore_index
            )
        except ValueError:
            return None

    @property
    def pos_weight(self) -> float | None:
        """``pos_weight`` of a binary loss, ``n_negative / n_positive``; ``None`` unless ``target="binary"``.

        Example:
            >>> CheckReport(Path("i"), Path("m"), class_histogram={0: 900, 1: 100}, target="binary").pos_weight
            9.0
        """
        weights = self.suggested_weights("inverse") if self.target == "binary" else None
        if weights is None or not float(weights[0]) or not float(weights[1]):
            return None
        return round(float(weights[1] / weights[0]), 6)

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
        lines = [f"trainkit check: images={self.images}  {'annotations' if self.annotations else 'masks'}={self.masks}"]
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
            lines.extend(self._balance_lines())
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title.upper()} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items[:_LISTED])
                if len(items) > _LISTED:
                    lines.append(f"  ... and {len(items) - _LISTED} more (see `report.{title}`)")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"result: {verdict} ({len(self.errors)} errors, {len(self.warnings)} warnings)")
        return "\n".join(lines)

    def _balance_lines(self) -> list[str]:
        """The class frequencies and the loss weights that balance them, for the summary."""
        frequencies = self.class_frequencies
        if self.target == "instance" or not frequencies:
            return []
        excluded = " (ignore excluded)" if self.ignore_index in self.class_histogram else ""
        cells = ", ".join(f"{c}: {100 * f:.1f}%" for c, f in frequencies.items())
        lines = [f"  class frequencies{excluded}: {cells}"]
        if self.target == "binary":
            if self.pos_weight is not None:
                lines.append(
                    f"  suggested pos_weight (n_negative / n_positive): {self.pos_weight:.2f}  "
                    "(`pos_weight=` of a binary loss)"
                )
            return lines
        weights = self.suggested_weights()
        if weights is not None:
            shown = ", ".join(f"{w:.2f}" for w in weights.tolist())
            lines.append(f"  suggested class weights (inverse_sqrt): [{shown}]  (`weight=` of the loss)")
        return lines


def check(
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
    channels: int = 3,
    exif_orientation: bool = True,
    recursive: bool = False,
    max_files: int | None = None,
) -> CheckReport:
    """Validate a dataset the way :class:`~trainkit.data.SegmentationDataset` reads it, reporting everything.

    Checks pairing (unpaired files, files sharing a stem), that every image and mask decodes (truncated or
    corrupt files), that sizes agree (naming EXIF rotation when a mask fits its image only turned), that mask
    values are known colours/values and below ``num_classes``, and that the masks do not hold only 0 and
    ``ignore_index`` with a target other than ``"binary"`` (0/255 binary masks, whose foreground would all be
    ignored); collects the per-class pixel histogram (of the ``target``'s ids), the class frequencies and
    suggested loss weights, the images' channel counts and sizes, and finds duplicate images by content hash.
    It never stops at the first problem and never raises for a problem in the data.

    Args:
        images: Folder of images.
        masks: Folder of masks.
        mask_suffix: As in ``SegmentationDataset``.
        target: As in ``SegmentationDataset``: ``"binary"`` counts the 0/1 targets (and suggests a
            ``pos_weight``), ``"semantic"`` and ``"instance"`` the stored ids (or mapped class ids).
        num_classes: When given, mask values ``>= num_classes`` (other than ``ignore_index``) are errors and
            classes never seen are warnings.
        color_map: As in ``SegmentationDataset``.
        value_map: As in ``SegmentationDataset``.
        ignore_index: As in ``SegmentationDataset``.
        threshold: As in ``SegmentationDataset`` (``target="binary"`` only).
        channels: The channel count training will use; images stored otherwise get a warning.
        exif_orientation: As in ``SegmentationDataset``: images are turned by their EXIF orientation tag.
        recursive: As in ``SegmentationDataset``.
        max_files: Check only the first ``max_files`` pairs (pairing is always checked in full).

    Returns:
        A :class:`CheckReport`; ``print(report)`` shows the summary, ``report.ok`` the verdict.

    Raises:
        ValueError: arguments of the wrong form (a bad ``target``, ``color_map``, ``channels``, ``max_files``...).

    Example:
        >>> report = check("data/images", "data/masks", mask_suffix="_mask", num_classes=3)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
        trainkit check: images=data/images  masks=data/masks
          pairs: 120
          ...
          class frequencies: 0: 90.0%, 1: 9.0%, 2: 1.0%
          suggested class weights (inverse_sqrt): [0.22, 0.70, 2.09]  (`weight=` of the loss)
        result: OK (0 errors, 0 warnings)
    """
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}")
    if threshold is not None and target != "binary":
        raise ValueError(f"`threshold` applies to `target='binary'` only, got `target={target!r}`")
    check_channels(channels)
    if max_files is not None and (not is_int(max_files) or max_files < 1):
        raise ValueError(f"`max_files` must be a positive integer or None, got {max_files!r}")
    encoding = MaskEncoding(
        color_map=color_map, value_map=value_map, ignore_index=ignore_index, num_classes=num_classes
    )
    report = CheckReport(Path(images), Path(masks), ignore_index=ignore_index, target=target, num_classes=num_classes)
    rules = _Rules(channels, encoding, target, threshold, exif_orientation)
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

    tally = Tally()
    for image_path, mask_path in pairing.pairs[:max_files]:
        report.checked += 1
        try:
            _check_pair(image_path, mask_path, rules, report, tally)
        except Exception as err:  # a report, not a traceback: anything unexpected is one more error line
            report.errors.append(f"{image_path} / {mask_path}: unexpected {type(err).__name__}: {err}")

    report.class_histogram = {i: int(n) for i, n in enumerate(tally.histogram.tolist()) if n > 0}
    hidden = hidden_foreground(report.class_histogram, target, encoding)
    if hidden:
        report.errors.append(hidden)
    add_warnings(report, tally, channels, num_classes)
    return report


@dataclass(frozen=True)
class _Rules:
    """How :func:`check` reads a pair, as the dataset would."""

    channels: int
    encoding: MaskEncoding
    target: str
    threshold: float | None
    exif_orientation: bool


def _check_pair(image_path: Path, mask_path: Path, rules: _Rules, report: CheckReport, tally: Tally) -> None:
    """Decode one pair, record its problems in ``report`` and add its classes to ``tally.histogram``."""
    encoding = rules.encoding
    decoded = check_image(image_path, rules.channels, report, tally, exif_orientation=rules.exif_orientation)
    try:
        data = read_bytes(mask_path)
        lossy = lossy_format(data)
        if lossy:
            tally.lossy_masks[lossy] += 1
        raw = read_mask(mask_path, rgb=encoding.color_map is not None, data=data)
    except DataError as err:
        report.errors.append(str(err))
        return
    if decoded is not None and tuple(decoded[0].shape[-2:]) != raw.shape[:2]:
        image, data = decoded
        mismatch = size_mismatch(
            image_path,
            (image.shape[-2], image.shape[-1]),
            f"its mask {mask_path}",
            (raw.shape[0], raw.shape[1]),
            image_data=data,
            exif_orientation=rules.exif_orientation,
        )
        report.errors.append(f"size mismatch: {mismatch}")
    try:
        if rules.target == "binary":
            add_counts(tally, binary_from_raw(raw, encoding, mask_path, threshold=rules.threshold, lossy=lossy).numpy())
            return
        ids = encoding.class_ids(raw, mask_path, lossy=lossy)
    except DataError as err:
        report.errors.append(str(err))
        return
    add_counts(tally, ids)
    try:
        encoding.check_classes(ids, mask_path, lossy=lossy)
    except DataError as err:
        report.errors.append(str(err))
