"""``labelme_to_coco``: a folder of LabelMe JSON files (one per image) as a COCO annotation dict.

LabelMe writes, next to each image, ``<stem>.json`` with ``imagePath`` (relative to the JSON file),
``imageHeight``, ``imageWidth`` and ``shapes``: ``{"label", "points": [[x, y], ...], "shape_type", "group_id"}``.
The conversion gives :class:`~trainkit.data.CocoDataset` (or any COCO tool) the same annotations:

==============  ===========================================================================================
``shape_type``  becomes
==============  ===========================================================================================
``polygon``     a polygon (missing ``shape_type``, as in old LabelMe files, means polygon)
``rectangle``   the polygon of its corners (the two points are opposite corners)
``circle``      a polygon of one vertex every ~2 pixels of its circumference (centre, then a point on it)
``mask``        an uncompressed RLE of the base64 PNG ``mask``, placed at the first point (LabelMe >= 5.3)
``line``,       skipped, with one warning: they have no area
``linestrip``,
``point(s)``
==============  ===========================================================================================

Shapes of one file with the same ``label`` and ``group_id`` (not null) are one object (one annotation with
several parts), as LabelMe's own ``labelme2coco`` groups them. Class ids: ``labels`` in order, or the labels
found, sorted; shapes labelled ``_background_`` (LabelMe's name for class 0) are not drawn. Images and
annotations are numbered 1, 2, ... in natural order of the JSON files; coordinates are taken as they are
stored, in the image as LabelMe shows it (turned by its EXIF orientation tag).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from natsort import natsorted, ns
from PIL import Image

from trainkit.data._coco_index import mask_api
from trainkit.data._encoding import runs
from trainkit.errors import DataError

__all__ = ["BACKGROUND_LABEL", "labelme_to_coco"]

BACKGROUND_LABEL = "_background_"
"""LabelMe's label for class 0 (its ``labels.txt`` convention): such shapes are not drawn."""

_AREA_LESS = ("line", "linestrip", "point", "points")


def labelme_to_coco(
    folder: str | os.PathLike[str], *, labels: Sequence[str] | None = None, recursive: bool = False
) -> dict[str, Any]:
    """Convert the LabelMe JSON files of ``folder`` into a COCO annotation dict (see the module docstring).

    Args:
        folder: The folder of LabelMe JSON files (and, usually, their images).
        labels: Class names in class-id order (1, 2, ...), e.g. the lines of LabelMe's ``labels.txt``;
            default: every label found, sorted. ``_background_`` is never a class.
        recursive: Also read JSON files in subfolders.

    Returns:
        ``{"images", "annotations", "categories"}``, with ``file_name`` relative to ``folder``: pass it to
        ``CocoDataset(coco, images=folder)``, or ``json.dump`` it for other tools.

    Raises:
        DataError: the folder holds no JSON file, a file is not LabelMe's, a shape is malformed or of an
            unknown type, or a label is missing from ``labels``.

    Example:
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> shape = {"label": "cat", "points": [[2, 1], [6, 4]], "shape_type": "rectangle", "group_id": None}
        >>> page = {"imagePath": "a.png", "imageHeight": 8, "imageWidth": 10, "shapes": [shape]}
        >>> _ = (folder / "a.json").write_text(json.dumps(page))
        >>> coco = labelme_to_coco(folder)
        >>> coco["categories"], coco["images"][0]["file_name"], coco["annotations"][0]["segmentation"]
        ([{'id': 1, 'name': 'cat', 'supercategory': ''}], 'a.png', [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]])
        >>> (folder / "a.json").unlink(); folder.rmdir()
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"LabelMe folder {root} does not exist or is not a folder; check the path")
    files = natsorted(
        (p for p in (root.rglob("*.json") if recursive else root.glob("*.json")) if not p.name.startswith(".")),
        key=lambda p: p.relative_to(root).as_posix(),
        alg=ns.PATH,
    )
    if not files:
        hint = " (pass `recursive=True` for subfolders)" if not recursive else ""
        raise DataError(f"LabelMe folder {root} holds no .json files{hint}; LabelMe saves one next to each image")
    pages = [(path, _read_page(path)) for path in files]
    found = sorted({s["label"] for _, page in pages for s in page["shapes"]} - {BACKGROUND_LABEL})
    names = [name for name in (found if labels is None else labels) if name != BACKGROUND_LABEL]
    unknown = sorted(set(found) - set(names))
    if unknown:
        first = next(path for path, page in pages if any(s["label"] in unknown for s in page["shapes"]))
        raise DataError(
            f"labels {unknown} (e.g. in {first}) are not in `labels` {list(labels or [])}; add them to `labels`"
        )
    class_of = {name: k for k, name in enumerate(names, start=1)}
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": k, "name": name, "supercategory": ""} for name, k in class_of.items()],
    }
    skipped: Counter[str] = Counter()
    for image_id, (path, page) in enumerate(pages, start=1):
        image_path = (path.parent / page["imagePath"].replace("\\", "/")).as_posix()
        coco["images"].append(
            {
                "id": image_id,
                "file_name": Path(os.path.relpath(image_path, root)).as_posix(),
                "height": page["imageHeight"],
                "width": page["imageWidth"],
            }
        )
        for parts, label in _objects(path, page, skipped):
            segmentation = _segmentation(parts, page["imageHeight"], page["imageWidth"])
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": class_of[label],
                    "segmentation": segmentation,
                    "iscrowd": 0,
                    **_box_and_area(parts),
                }
            )
    if skipped:
        counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(skipped.items()))
        warnings.warn(
            f"LabelMe folder {root}: skipped shapes without area ({counts}); lines and points are not segmentation",
            UserWarning,
            stacklevel=2,
        )
    return coco


def _read_page(path: Path) -> dict[str, Any]:
    try:
        page = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read it as JSON ({err}); re-save it from LabelMe") from err
    if not isinstance(page, dict) or not isinstance(page.get("shapes"), list):
        raise DataError(
            f'{path} is not a LabelMe file (no "shapes" list); keep only LabelMe JSON files in the folder, or give '
            "COCO files to `CocoDataset`"
        )
    size_ok = all(isinstance(page.get(k), int) and page[k] > 0 for k in ("imageHeight", "imageWidth"))
    if not isinstance(page.get("imagePath"), str) or not size_ok:
        raise DataError(
            f'{path}: "imagePath", "imageHeight" and "imageWidth" are missing or not valid; open and save the file '
            "in a current LabelMe"
        )
    for k, shape in enumerate(page["shapes"]):
        if not (isinstance(shape, dict) and isinstance(shape.get("label"), str) and _is_points(shape.get("points"))):
            raise DataError(f'{path}: shapes[{k}] needs a "label" and "points" [[x, y], ...], got {shape!r:.100}')
    return page


def _is_points(points: Any) -> bool:
    return isinstance(points, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in points
    )


def _objects(path: Path, page: dict[str, Any], skipped: Counter[str]) -> list[tuple[list[Any], str]]:
    """The file's objects in shape order: the parts of each (polygons or full-size bool masks) and its label."""
    objects: dict[Any, tuple[list[Any], str]] = {}
    for k, shape in enumerate(page["shapes"]):
        kind = shape.get("shape_type") or "polygon"
        if kind in _AREA_LESS:
            skipped[kind] += 1
            continue
        if shape["label"] == BACKGROUND_LABEL:
            continue
        part = _part(path, k, kind, shape, page["imageHeight"], page["imageWidth"])
        group = shape.get("group_id")
        key = (shape["label"], group) if group is not None else k
        objects.setdefault(key, ([], shape["label"]))[0].append(part)
    return list(objects.values())


def _part(path: Path, k: int, kind: str, shape: dict[str, Any], height: int, width: int) -> Any:
    points = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
    if kind == "polygon":
        return points.reshape(-1).tolist()
    if kind in ("rectangle", "circle") and len(points) < 2:
        raise DataError(f"{path}: shapes[{k}] is a {kind} with {len(points)} point(s); it needs 2")
    if kind == "rectangle":
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    if kind == "circle":
        (cx, cy), edge = points[0], points[1]
        radius = float(np.hypot(*(edge - points[0])))
        n = max(16, math.ceil(math.pi * radius))  # a vertex every ~2 px: the chords stay within 1/(2r) px of the circle
        angles = np.arange(n) * (2 * math.pi / n)
        return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1).reshape(-1).tolist()
    if kind == "mask":
        return _mask_part(path, k, shape, points, height, width)
    raise DataError(
        f"{path}: shapes[{k}] has shape_type {kind!r}; LabelMe's area shapes are polygon, rectangle, circle and mask "
        "(line, linestrip and point(s) are skipped): fix the shape"
    )


def _mask_part(path: Path, k: int, shape: dict[str, Any], points: np.ndarray, height: int, width: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or ""))) as png:
            crop = np.asarray(png.convert("L")) > 0
    except Exception as err:
        raise DataError(f'{path}: shapes[{k}] is a mask whose "mask" is not a base64 PNG ({err}); redraw it') from err
    full = np.zeros((height, width), dtype=bool)
    x0, y0 = np.rint(points[0]).astype(int).tolist()
    rows, cols = min(crop.shape[0], height - y0), min(crop.shape[1], width - x0)
    if x0 >= 0 and y0 >= 0 and rows > 0 and cols > 0:
        full[y0 : y0 + rows, x0 : x0 + cols] = crop[:rows, :cols]
    return full


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a bool mask: run lengths over column-major pixels, starting with background."""
    values, lengths = runs(mask.reshape(-1, order="F"))
    counts = lengths.tolist()
    if values.size and values[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _segmentation(parts: list[Any], height: int, width: int) -> Any:
    """Polygons as COCO polygons; with a mask among the parts, everything as one RLE (COCO cannot mix them)."""
    if all(isinstance(part, list) for part in parts):
        return [[float(v) for v in part] for part in parts]
    full = np.zeros((height, width), dtype=bool)
    polygons = [part for part in parts if isinstance(part, list) and len(part) >= 6]
    if polygons:
        api = mask_api()
        full |= api.decode(api.merge(api.frPyObjects(polygons, height, width))).astype(bool)
    for part in parts:
        if isinstance(part, np.ndarray):
            full |= part
    return _rle(full)


def _box_and_area(parts: list[Any]) -> dict[str, Any]:
    """COCO's ``bbox`` (xywh) and ``area`` (shoelace for polygons, pixels for masks), for other COCO tools."""
    xs: list[float] = []
    ys: list[float] = []
    area = 0.0
    for part in parts:
        if isinstance(part, np.ndarray):
            rows, cols = np.nonzero(part)
            if rows.size:
                xs += [float(cols.min()), float(cols.max() + 1)]
                ys += [float(rows.min()), float(rows.max() + 1)]
            area += float(part.sum())
        elif len(part) >= 2:
            x, y = np.asarray(part[0::2], dtype=np.float64), np.asarray(part[1::2], dtype=np.float64)
            xs += [float(x.min()), float(x.max())]
            ys += [float(y.min()), float(y.max())]
            area += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    if not xs:
        return {"bbox": [0.0, 0.0, 0.0, 0.0], "area": 0.0}
    return {"bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "area": area}
