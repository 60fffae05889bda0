"""``trainkit evaluate``: the metrics of a trained checkpoint on a labelled folder, at the size the model is used at.

The checkpoint alone says how: its spec gives the model, the preprocessing (images and masks resized to its
``size``, masks with nearest neighbour, as in validation), how masks are read (``target``, the colour map
itself) and the class names of the per-class table.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

from trainkit.cli.recipe import load_model, normalizer

__all__ = ["Evaluation", "evaluate_folder"]


class Evaluation(NamedTuple):
    """What :func:`evaluate_folder` measured: mean scores, per-class ones, and how.

    Example:
        >>> result = Evaluation({"miou": 0.5}, {"iou": [1.0, 0.0]}, ["bg", "cat"], images=2, size=(8, 8))
        >>> result.scores["miou"], result.per_class["iou"][1]
        (0.5, 0.0)
    """

    scores: dict[str, float]
    per_class: dict[str, list[float]]
    class_names: list[str]
    images: int
    size: tuple[int, int]

    def table(self) -> str:
        """The per-class scores as aligned text, one class a line (``nan``: the class is absent).

        Example:
            >>> Evaluation({"miou": 0.5}, {"iou": [1.0, 0.0], "dice": [1.0, 0.0]}, ["bg", "cat"], 2, (8, 8)).table()
            'class  iou     dice\\nbg     1.0000  1.0000\\ncat    0.0000  0.0000'
        """
        width = max(5, *(len(n) for n in self.class_names)) + 2
        lines = ["class".ljust(width) + "".join(k.ljust(8) for k in self.per_class).rstrip()]
        for i, name in enumerate(self.class_names):
            row = "".join(_number(values[i]).ljust(8) for values in self.per_class.values())
            lines.append((name.ljust(width) + row).rstrip())
        return "\n".join(lines)


def evaluate_folder(
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    mask_suffix: str = "",
    device: str = "auto",
    batch_size: int = 8,
    num_workers: int = 0,
    exif_orientation: bool | None = None,
) -> Evaluation:
    """Score ``checkpoint``'s model on a folder of images and masks: mIoU, Dice, pixel accuracy, per class.

    Images and masks are paired and read as in training (``SegmentationDataset``, with the checkpoint's
    ``target``, colour map and EXIF orientation choice: ``exif_orientation`` ``True`` turns photos by their tag,
    ``False`` reads them as stored, ``None`` as the checkpoint records), resized to the checkpoint's size, and
    scored with exact streaming metrics (pixels labelled ``ignore_index`` are not counted).

    Raises:
        CheckpointError: the checkpoint records no spec.
        DataError: unpaired files, unreadable files, mask values outside the classes (named with the fix).

    Example:
        >>> result = evaluate_folder("runs/demo/checkpoints/best.pt", "test/images", "test/masks")  # doctest: +SKIP
        >>> round(result.scores["miou"], 3)  # doctest: +SKIP
        0.874
    """
    from torch.utils.data import DataLoader

    from trainkit.data import SegmentationDataset, collate
    from trainkit.data.transforms import eval_preset
    from trainkit.engine.loops import evaluate
    from trainkit.metrics import Dice, MeanIoU, PixelAccuracy
    from trainkit.utils.device import resolve_device

    dev = resolve_device(device)
    model, spec = load_model(checkpoint, device=dev)
    size = spec.preprocessing.size
    dataset = SegmentationDataset(
        images,
        masks,
        mask_suffix=mask_suffix,
        target=spec.target,
        num_classes=spec.num_classes if spec.target == "semantic" else None,
        color_map=spec.color_map,
        ignore_index=spec.ignore_index,
        channels=spec.model.in_channels,
        exif_orientation=spec.preprocessing.exif_orientation if exif_orientation is None else exif_orientation,
        transforms=eval_preset(size, normalize=False),
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    classes = max(2, spec.num_classes)  # one binary logit: background and foreground
    iou, dice = MeanIoU(classes, ignore_index=spec.ignore_index), Dice(classes, ignore_index=spec.ignore_index)
    accuracy = PixelAccuracy(classes, ignore_index=spec.ignore_index)
    metrics = {"miou": iou, "dice": dice, "pixel_accuracy": accuracy}
    scores = evaluate(model, loader, metrics=metrics, device=dev, batch_transform=normalizer(spec))
    per_class = {"iou": iou.per_class().tolist(), "dice": dice.per_class().tolist()}
    names = spec.class_names if len(spec.class_names) == classes else [f"class {i}" for i in range(classes)]
    return Evaluation(scores, per_class, names, len(dataset), (int(size[0]), int(size[1])))  # type: ignore[index]


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"
