"""A synthetic segmentation dataset of shapes on textured backgrounds, in the Penn-Fudan folder layout.

Everything in trainkit can run offline on it: semantic training (circle / square / triangle), binary and
instance training (one id per shape, as Penn-Fudan's ``PedMasks``). Classes differ by geometry only: colours
are drawn from one distribution for every class, so a model has to look at shape.

Example:
    >>> root = make_shapes("data/shapes", n=8, size=64, seed=0)  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['PNGImages', 'PedMasks', 'SemanticMasks', 'classes.json', 'instances']
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TypeGuard

import numpy as np
from PIL import Image

from trainkit.utils.plots import palette

__all__ = ["SHAPE_CLASSES", "make_shapes"]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
"""The shapes :func:`make_shapes` can draw; class ids follow the order of its ``classes`` argument."""

_SUBFOLDERS = ("PNGImages", "PedMasks", "SemanticMasks", "instances")
_MIN_VISIBLE = 0.5  # a shape may hide at most half of any shape drawn before it
_PLACEMENT_TRIES = 8
_MIN_CONTRAST = 90.0  # least RGB distance between a shape's colour and the background's base colour


def make_shapes(
    root: str | Path,
    n: int = 200,
    size: int | Sequence[int] = 64,
    seed: int = 0,
    *,
    classes: Sequence[str] = SHAPE_CLASSES,
    max_shapes: int = 4,
    exist_ok: bool = False,
) -> Path:
    """Write ``n`` images of random shapes with instance masks, semantic masks and class sidecars.

    Layout written under ``root`` (stems ``shape_000``, ``shape_001``, ... zero-padded to at least 3 digits)::

        PNGImages/shape_000.png            RGB image
        PedMasks/shape_000_mask.png        palette ("P") instance mask: 0 background, shapes 1..K
        SemanticMasks/shape_000_mask.png   palette ("P") class mask: 0 background, class ids 1..len(classes)
        instances/shape_000.json           {"<object id>": <class id>, ...}, e.g. {"1": 2, "2": 1}
        classes.json                       {"background": 0, "circle": 1, "square": 2, "triangle": 3}

    Class ids: 0 is background and ``classes[k]`` is ``k + 1``; with the default ``classes`` that is
    0 background, 1 circle, 2 square (rotated squares and mild rectangles), 3 triangle (rotated equilateral).
    Each image has 1..``max_shapes`` shapes of random size, position, rotation and colour, drawn in id order,
    later shapes on top; a shape is only placed where it leaves every earlier shape at least half visible.
    Shape ``1`` of image ``i`` has class ``classes[i % len(classes)]``, so every class appears once
    ``n >= len(classes)``. Backgrounds are smooth random colour fields with finer texture, and every pixel
    gets Gaussian noise. Image ``i`` depends only on ``(seed, i)``: the files are byte-identical for a seed,
    whatever ``n``.

    Args:
        root: Folder to write into (created if missing).
        n: Number of images.
        size: Image side, or ``(height, width)``; at least 16.
        seed: Non-negative random seed.
        classes: Which shapes to draw, a non-empty subset of ``SHAPE_CLASSES`` in the order of their ids.
        max_shapes: Most shapes in one image.
        exist_ok: Rewrite a dataset already in ``root`` (its ``shape_*`` files are removed first);
            otherwise that is an error, so a different dataset is never mixed with an old one.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an argument is out of range or ``classes`` names an unknown shape.
        FileExistsError: ``root`` already holds a dataset and ``exist_ok`` is False.

    Example:
        >>> root = make_shapes(tmp_path / "shapes", n=4, size=32)  # doctest: +SKIP
        >>> json.loads((root / "classes.json").read_text())  # doctest: +SKIP
        {'background': 0, 'circle': 1, 'square': 2, 'triangle': 3}
    """
    height, width = _check_args(n, size, seed, classes, max_shapes)
    root = Path(root)
    existing = [p for folder in _SUBFOLDERS if (root / folder).is_dir() for p in (root / folder).glob("shape_*")]
    if existing and not exist_ok:
        raise FileExistsError(
            f"{root} already holds a dataset ({len(existing)} `shape_*` files); pick an empty folder or pass "
            "`exist_ok=True` to rewrite it"
        )
    for path in existing:
        path.unlink(missing_ok=True)
    for folder in _SUBFOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    class_ids = {"background": 0, **{name: k + 1 for k, name in enumerate(classes)}}
    (root / "classes.json").write_text(json.dumps(class_ids, indent=2) + "\n")

    mask_palette = [channel for colour in palette(256) for channel in colour]
    digits = max(3, len(str(n - 1)))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, instances, semantic, labels = _draw_sample(rng, ys, xs, classes, max_shapes, first=i % len(classes))
        stem = f"shape_{i:0{digits}d}"
        Image.fromarray(image).save(root / "PNGImages" / f"{stem}.png")
        for folder, mask in (("PedMasks", instances), ("SemanticMasks", semantic)):
            encoded = Image.frombytes("P", (width, height), mask.tobytes())
            encoded.putpalette(mask_palette)
            encoded.save(root / folder / f"{stem}_mask.png")
        sidecar = {str(obj_id): class_id for obj_id, class_id in enumerate(labels, start=1)}
        (root / "instances" / f"{stem}.json").write_text(json.dumps(sidecar) + "\n")
    return root


def _check_args(
    n: int, size: int | Sequence[int], seed: int, classes: Sequence[str], max_shapes: int
) -> tuple[int, int]:
    def is_int(value: object) -> TypeGuard[int]:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(n) or n < 1:
        raise ValueError(f"`n` (number of images) must be a positive int, got {n!r}")
    if is_int(size):
        hw = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(is_int(s) for s in size):
        hw = (size[0], size[1])
    else:
        raise ValueError(f"`size` must be an int or (height, width), got {size!r}")
    if min(hw) < 16:
        raise ValueError(f"`size` must be at least 16 pixels a side for shapes to be recognisable, got {size!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    if isinstance(classes, str) or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"`classes` must be a non-empty list of distinct names from {SHAPE_CLASSES}, got {classes!r}")
    unknown = [name for name in classes if name not in SHAPE_CLASSES]
    if unknown:
        raise ValueError(f"`classes` names unknown shapes {unknown}; choose from {SHAPE_CLASSES}")
    if not is_int(max_shapes) or not 1 <= max_shapes <= 254:
        raise ValueError(f"`max_shapes` must be an int in 1..254, got {max_shapes!r}")
    return hw


def _draw_sample(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, classes: Sequence[str], max_shapes: int, first: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """One image (uint8 [H, W, 3]), its instance and semantic masks (uint8 [H, W]) and each object's class id."""
    height, width = ys.shape
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    image = base + 45 * _smooth_noise(rng, 4, height, width) + 15 * _smooth_noise(rng, 12, height, width)
    instances = np.zeros((height, width), dtype=np.uint8)
    semantic = np.zeros((height, width), dtype=np.uint8)
    areas: list[int] = []
    labels: list[int] = []
    for j in range(int(rng.integers(1, max_shapes + 1))):
        class_index = first if j == 0 else int(rng.integers(len(classes)))
        placed = _place_shape(rng, ys, xs, classes[class_index], instances, areas)
        if placed is None:
            continue  # no placement left the earlier shapes visible enough: draw fewer shapes
        region, shade = placed
        colour = _shape_colour(rng, base)
        image[region] = colour + shade[region][:, None] * 30
        areas.append(int(region.sum()))
        labels.append(class_index + 1)
        instances[region] = len(labels)
        semantic[region] = class_index + 1
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8), instances, semantic, labels


def _place_shape(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, shape: str, instances: np.ndarray, areas: list[int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """A boolean region for ``shape`` hiding at most half of each earlier shape, and a shading ramp; or None."""
    height, width = ys.shape
    side = min(height, width)
    for _ in range(_PLACEMENT_TRIES):
        radius = rng.uniform(0.11, 0.22) * side
        cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
        angle = rng.uniform(0, 2 * math.pi)
        # Coordinates in the shape's own rotated frame.
        u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
        v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
        if shape == "circle":
            region = u**2 + v**2 <= radius**2
        elif shape == "square":
            half = radius * 0.85
            region = (np.abs(u) <= half) & (np.abs(v) <= half * rng.uniform(0.7, 1.0))
        else:  # triangle: inside all three edges of an equilateral triangle with circumradius 1.2 * radius
            apothem = 0.6 * radius
            region = np.ones_like(u, dtype=bool)
            for k in range(3):
                theta = 2 * math.pi * k / 3
                region &= u * math.cos(theta) + v * math.sin(theta) <= apothem
        visible = np.bincount(instances[~region], minlength=len(areas) + 1)[1:]
        if np.all(visible >= _MIN_VISIBLE * np.asarray(areas)):  # always true for the first shape
            return region, u / radius
    return None


def _shape_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A random colour, the same distribution for every class, far enough from the background's base colour."""
    candidates = rng.uniform(0, 255, size=(16, 3)).astype(np.float32)
    far = np.linalg.norm(candidates - base, axis=1) >= _MIN_CONTRAST
    return candidates[int(np.argmax(far))] if far.any() else 255 - base


def _smooth_noise(rng: np.random.Generator, cells: int, height: int, width: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], [H, W, 3]: a random ``cells`` x ``cells`` grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
    # Bilinear upsampling is separable: one interpolation matrix per axis, applied in a single contraction.
    rows, cols = _interpolation_matrix(height, cells), _interpolation_matrix(width, cells)
    return np.einsum("hc,cdk,wd->hwk", rows, grid, cols, optimize=True)


def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """``[size, cells]`` weights that linearly interpolate ``cells`` evenly spaced values at ``size`` points."""
    position = np.linspace(0, cells - 1, size)
    low = np.minimum(position.astype(int), cells - 2)
    weight = (position - low).astype(np.float32)
    matrix = np.zeros((size, cells), dtype=np.float32)
    matrix[np.arange(size), low] = 1 - weight
    matrix[np.arange(size), low + 1] = weight
    return matrix
