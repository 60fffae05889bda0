"""Training curves, prediction overlays and the categorical colour palette, as PNG files.

matplotlib is imported inside the functions that draw, and only its object-oriented API is used
(``matplotlib.figure.Figure`` with the Agg canvas): importing this module costs nothing, and plotting never
touches pyplot's global state or the user's chosen backend, so it is safe in scripts, notebooks and workers.

Example:
    >>> history = [{"epoch": 0, "train/loss": 0.9, "val/loss": 0.8, "val/miou": 0.41},
    ...            {"epoch": 1, "train/loss": 0.6, "val/loss": 0.7, "val/miou": 0.55}]
    >>> plot_curves(history, "runs/demo/curves.png").name  # doctest: +SKIP
    'curves.png'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["palette", "plot_curves", "plot_predictions"]

_PANEL_INCHES = 2.0
_DPI = 100
_LEGEND_INCHES = 0.4
_LEGEND_CLASSES = 16  # more would not fit the legend strip


def palette(num_classes: int = 256) -> list[tuple[int, int, int]]:
    """A fixed colour per class id: the Pascal VOC colour map, with class 0 black and id 255 (ignore) white.

    The colours are distinct for all 256 ids and the same in every call, so overlays and palette-encoded
    mask PNGs look alike across runs. For a PNG palette use ``palette(256)``.

    Args:
        num_classes: How many colours to return (ids ``0 .. num_classes - 1``), between 1 and 256.

    Returns:
        A list of ``(r, g, b)`` tuples of ints in 0..255.

    Raises:
        ValueError: ``num_classes`` is outside 1..256.

    Example:
        >>> palette(3)
        [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
        >>> palette(256)[255]
        (255, 255, 255)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= 256:
        raise ValueError(f"`num_classes` must be an int in 1..256 (8-bit class ids), got {num_classes!r}")
    colours = []
    for class_id in range(num_classes):
        r = g = b = 0
        bits = class_id
        for shift in range(7, -1, -1):  # spread the id's bits over the high bits of r, g and b
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours.append((r, g, b))
    if num_classes == 256:
        colours[255] = (255, 255, 255)  # ignore_index; VOC's own 255 is (224, 224, 192)
    return colours


def plot_curves(
    history: Sequence[Mapping[str, Any]], path: str | Path, *, metrics: Sequence[str] = ("val/miou",)
) -> Path:
    """Write a PNG with two panels: train/val loss per epoch, and the chosen metrics per epoch.

    Rows or keys that are missing (or not finite) are skipped, so a run without validation still plots.

    Args:
        history: One dict an epoch, as ``Trainer.fit`` returns: ``{"epoch", "train/loss", "val/loss",
            "val/miou", ...}`` with float values. Without an ``"epoch"`` key the row's position is used.
        path: Where to write the PNG; parent folders are created.
        metrics: History keys to draw in the second panel.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``history`` is empty or holds something other than dicts.

    Example:
        >>> plot_curves([{"epoch": 0, "train/loss": 1.0, "val/miou": 0.5}], tmp_path / "c.png")  # doctest: +SKIP
        PosixPath('.../c.png')
    """
    if not history or not all(isinstance(row, Mapping) for row in history):
        raise ValueError(
            "`history` must be a non-empty list of dicts, one an epoch (what `Trainer.fit` returns), "
            f"got {type(history).__name__} of length {len(history) if hasattr(history, '__len__') else '?'}"
        )
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), dpi=_DPI, layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for ax, keys, title in ((loss_ax, ("train/loss", "val/loss"), "loss"), (metric_ax, tuple(metrics), "metrics")):
        for key in keys:
            points = [
                (float(row.get("epoch", i)), float(row[key]))
                for i, row in enumerate(history)
                if key in row and math.isfinite(float(row[key]))
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _save(fig, path)


def plot_predictions(
    images: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    preds: torch.Tensor | np.ndarray,
    path: str | Path,
    *,
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ignore_index: int = 255,
    max_rows: int = 6,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid with one row a sample: image | truth overlay | prediction overlay.

    Class colours come from :func:`palette` (background is left unpainted, ``ignore_index`` pixels are white),
    with a legend of the classes (the first 16) under the grid. Each panel is 200×200 pixels, so the file is
    ``600 × (200 * rows + 40)``.

    Args:
        images: ``[N, C, H, W]`` with C = 1 or 3; uint8, or float in [0, 1], or float normalised with
            ``mean``/``std`` (then give them to undo it).
        targets: ``[N, H, W]`` class ids.
        preds: ``[N, H, W]`` class ids, or logits ``[N, K, H, W]`` (argmax over K is taken).
        path: Where to write the PNG; parent folders are created.
        num_classes: Number of classes, for the legend.
        class_names: Legend labels, one per class (default: the class ids).
        mean: Per-channel mean the images were normalised with.
        std: Per-channel standard deviation the images were normalised with.
        ignore_index: Target value drawn white, not as a class.
        max_rows: Draw at most this many samples.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: shapes disagree, the image has another channel count, or only one of ``mean``/``std``
            is given.

    Example:
        >>> images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
        >>> masks = torch.zeros(2, 16, 16, dtype=torch.int64)
        >>> plot_predictions(images, masks, masks, "preds.png", num_classes=2)  # doctest: +SKIP
        PosixPath('preds.png')
    """
    images, targets, preds = (torch.as_tensor(x).detach().cpu() for x in (images, targets, preds))
    if preds.ndim == 4:
        preds = preds.argmax(dim=1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"`images` must be [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    expected = (images.shape[0], *images.shape[2:])
    for name, masks in (("targets", targets), ("preds", preds)):
        if tuple(masks.shape) != expected:
            raise ValueError(
                f"`{name}` must be [N, H, W] = {expected} to match `images` {tuple(images.shape)}, "
                f"got {tuple(masks.shape)}"
            )
    if (mean is None) != (std is None):
        raise ValueError("give both `mean` and `std` (the values the images were normalised with), or neither")
    if max_rows < 1:
        raise ValueError(f"`max_rows` must be >= 1, got {max_rows}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
    colours = np.array(palette(256), dtype=np.float32)
    rows = min(images.shape[0], max_rows)
    rgb = _to_rgb_uint8(images[:rows], mean, std)

    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    height = _PANEL_INCHES * rows + _LEGEND_INCHES
    fig = Figure(figsize=(3 * _PANEL_INCHES, height), dpi=_DPI)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.25 / height, bottom=_LEGEND_INCHES / height, hspace=0.05)
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        panels = (rgb[r], _overlay(rgb[r], targets[r], colours, ignore_index), _overlay(rgb[r], preds[r], colours))
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(("image", "truth", "prediction")[c], fontsize=9)
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"`class_names` has {len(names)} names for `num_classes={num_classes}`; give one per class")
    handles = [Patch(color=colours[k] / 255, label=names[k]) for k in range(min(num_classes, _LEGEND_CLASSES))]
    handles.append(Patch(facecolor="white", edgecolor="black", label=f"ignore ({ignore_index})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    return _save(fig, path)


def _to_rgb_uint8(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """``[N, C, H, W]`` uint8 or float → ``[N, H, W, 3]`` uint8 for display."""
    if images.is_floating_point():
        images = images.float()
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            images = images * torch.tensor(std, dtype=torch.float32).view(shape) + torch.tensor(mean).view(shape)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    images = images.to(torch.uint8).expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).numpy()


def _overlay(rgb: np.ndarray, mask: torch.Tensor, colours: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Blend class colours over the image half-and-half; background stays as is, ignore is solid white."""
    ids = mask.numpy().astype(np.int64)
    painted = ids != 0
    blended = rgb.astype(np.float32)
    blended[painted] = 0.5 * blended[painted] + 0.5 * colours[np.clip(ids[painted], 0, 255)]
    if ignore_index is not None:
        blended[ids == ignore_index] = 255.0
    return blended.round().astype(np.uint8)


def _save(fig: Any, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path
