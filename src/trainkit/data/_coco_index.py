"""Reading a COCO annotation file into per-image records, and drawing an image's annotations with pycocotools.

The file's structure is checked once, when it is read (its keys, ids, the form of each segmentation, RLE
sizes), so a malformed export fails at construction with the annotation named; polygons and RLE are decoded per
sample, by pycocotools (``pip install trainkit[coco]``), imported on first use.

A ``segmentation`` is one of (COCO's "data format" page):

* polygons: ``[[x1, y1, x2, y2, ...], ...]``, one list per part of the object, in pixel-edge coordinates
  (a pixel ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``);
* uncompressed RLE: ``{"size": [height, width], "counts": [n0, n1, ...]}``, run lengths over the column-major
  pixels starting with background (what COCO uses for ``iscrowd=1``);
* compressed RLE: the same with ``counts`` a string (``pycocotools.mask.encode``'s output, ``bytes`` decoded).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from trainkit.data._encoding import is_int
from trainkit.errors import DataError

__all__ = ["CocoImage", "CocoIndex", "Region", "draw_regions", "mask_api", "missing_message", "read_coco"]

# pycocotools 2.0 predates NumPy 2: every decode warns that its masks' __array__ takes no copy keyword.
PYCOCOTOOLS_DEPRECATION = "__array__ implementation doesn't accept a copy keyword"
warnings.filterwarnings("ignore", message=PYCOCOTOOLS_DEPRECATION, category=DeprecationWarning)

_SHOWN = 5
_FAR = 8  # polygon coordinates beyond this many image sizes are a broken export


def mask_api() -> ModuleType:
    """``pycocotools.mask``, or an ``ImportError`` that says how to install it.

    Example:
        >>> mask_api().__name__
        'pycocotools.mask'
    """
    try:
        from pycocotools import mask
    except ImportError as err:
        raise ImportError(
            "COCO annotations (polygons and RLE) are decoded by pycocotools, which is not installed: "
            "`pip install trainkit[coco]` (or `pip install pycocotools`)"
        ) from err
    return mask


class Region(NamedTuple):
    """One annotation of an image: its class id (or ``ignore_index``), segmentation and crowd flag."""

    annotation_id: Any
    class_id: int
    segmentation: Any
    iscrowd: int


class CocoImage(NamedTuple):
    """One image of a COCO file: its path, COCO id, size as annotated and annotations in file order.

    Example:
        >>> image = CocoImage(Path("train/a.jpg"), 7, 480, 640, ())
        >>> image.path.name, image.image_id, (image.height, image.width)
        ('a.jpg', 7, (480, 640))
    """

    path: Path
    image_id: int
    height: int
    width: int
    regions: tuple[Region, ...]


@dataclass
class CocoIndex:
    """What :func:`read_coco` found: classes, images (with and without a file) and skipped polygons."""

    source: str
    class_names: list[str]
    category_to_class: dict[int, int]
    images: list[CocoImage] = field(default_factory=list)
    missing: list[CocoImage] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)  # ids of annotations left without a polygon of 3+ points


def _load(annotations: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(annotations, Mapping):
        return annotations, "the annotation dict"
    path = Path(annotations)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except OSError as err:
        raise DataError(f"cannot read the annotation file {path} ({err.strerror or err}); check the path") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise DataError(
            f"{path} is not valid JSON{where}; the export is truncated or not JSON: export it again"
        ) from err
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not a COCO object; give the COCO annotation file")
    return data, str(path)


def read_coco(
    annotations: str | os.PathLike[str] | Mapping[str, Any],
    images: Path,
    *,
    categories: Sequence[str | int] | None,
    ignore: str | Sequence[str],
    ignore_index: int | None,
) -> CocoIndex:
    """Read and check a COCO annotation file (or dict); images are looked up under ``images``.

    Raises:
        DataError: the file is unreadable or not COCO, or an entry is malformed (named, with the fix).
    """
    data, source = _load(annotations)
    lists = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if lists:
        raise DataError(
            f'{source} has no {", ".join(repr(k) for k in lists)} list; a COCO annotation file holds "images", '
            '"annotations" and "categories" lists (an image-info file of a test split has no annotations): give '
            "the instances file of the split"
        )
    names = _categories(data["categories"], source)
    mapping, class_names = _classes(names, categories, ignore, ignore_index, source)
    index = CocoIndex(source, class_names, mapping)
    records: dict[int, dict[str, Any]] = {}
    for position, entry in enumerate(data["images"]):
        ok = isinstance(entry, dict) and is_int(entry.get("id")) and isinstance(entry.get("file_name"), str)
        if not ok or not all(is_int(entry.get(k)) and entry[k] > 0 for k in ("height", "width")):
            raise DataError(
                f'{source}: images[{position}] must have an integer "id", a "file_name" and positive integer '
                f'"height" and "width", got {entry!r}; fix the entry or export the file again'
            )
        if entry["id"] in records:
            raise DataError(f"{source}: image id {entry['id']} is listed twice; give each image its own id")
        records[entry["id"]] = entry
    regions: dict[int, list[Region]] = {image_id: [] for image_id in records}
    for position, ann in enumerate(data["annotations"]):
        region = _region(ann, position, records, names, mapping, source, index.skipped)
        if region is not None:
            regions[ann["image_id"]].append(region)
    for image_id, entry in records.items():
        path = images / entry["file_name"].replace("\\", "/")
        image = CocoImage(path, image_id, entry["height"], entry["width"], tuple(regions[image_id]))
        (index.images if path.is_file() else index.missing).append(image)
    return index


def _categories(entries: list[Any], source: str) -> dict[int, str]:
    names: dict[int, str] = {}
    for position, cat in enumerate(entries):
        if not (isinstance(cat, dict) and is_int(cat.get("id")) and isinstance(cat.get("name"), str)):
            raise DataError(f'{source}: categories[{position}] must have an integer "id" and a "name", got {cat!r}')
        if cat["id"] in names:
            raise DataError(
                f"{source}: category id {cat['id']} is listed twice ({names[cat['id']]!r}, {cat['name']!r}); "
                "give each category its own id"
            )
        names[cat["id"]] = cat["name"]
    return names


def _classes(
    names: dict[int, str],
    categories: Sequence[str | int] | None,
    ignore: str | Sequence[str],
    ignore_index: int | None,
    source: str,
) -> tuple[dict[int, int], list[str]]:
    """``{category id: class id}`` (1..K, or ``ignore_index``) and the class names, background first."""
    ignored = [ignore] if isinstance(ignore, str) else list(ignore)
    listed = f"categories of {source}: {sorted(names.items())[:20]}"
    unknown = [name for name in ignored if name not in names.values()]
    if unknown:
        raise DataError(f"`ignore` names {unknown} that are not categories; {listed}")
    if ignored and ignore_index is None:
        raise ValueError("`ignore` draws categories as `ignore_index`, which is None: give `ignore_index` (e.g. 255)")
    ignore_ids = [cat_id for cat_id, name in names.items() if name in ignored]
    if categories is None:
        chosen = sorted(cat_id for cat_id in names if cat_id not in ignore_ids)
    else:
        chosen = []
        for wanted in categories:
            ids = [cat_id for cat_id, name in names.items() if name == wanted] if isinstance(wanted, str) else [wanted]
            if len(ids) != 1 or ids[0] not in names:
                problem = "names several categories" if len(ids) > 1 else "is not a category"
                raise DataError(f"`categories` entry {wanted!r} {problem}: give category ids or unique names; {listed}")
            if ids[0] in chosen or ids[0] in ignore_ids:
                raise DataError(f"`categories` entry {wanted!r} is given twice, or also in `ignore`: give it once")
            chosen.append(ids[0])
    if ignore_index is not None and len(chosen) >= ignore_index:
        raise DataError(
            f"{len(chosen)} categories take class ids 1..{len(chosen)}, which reaches `ignore_index`={ignore_index}: "
            "choose fewer with `categories=[...]` or raise `ignore_index`"
        )
    mapping = {cat_id: k for k, cat_id in enumerate(chosen, start=1)}
    if ignore_index is not None:  # None with `ignore` was refused above
        mapping.update(dict.fromkeys(ignore_ids, ignore_index))
    return mapping, ["background", *(names[cat_id] for cat_id in chosen)]


def _region(
    ann: Any,
    position: int,
    records: dict[int, dict[str, Any]],
    names: dict[int, str],
    mapping: dict[int, int],
    source: str,
    skipped: list[Any],
) -> Region | None:
    """One annotation as a :class:`Region`; ``None`` when its category is not chosen or its polygons are empty."""
    if not isinstance(ann, dict):
        raise DataError(f"{source}: annotations[{position}] must be an object, got {ann!r}")
    name = f"{source}: annotation {ann.get('id', f'[{position}]')}"
    if ann.get("image_id") not in records:
        raise DataError(f'{name} refers to image id {ann.get("image_id")!r}, which is not in "images"; fix the file')
    if ann.get("category_id") not in names:
        raise DataError(
            f'{name} has category id {ann.get("category_id")!r}, which is not in "categories"; fix the file'
        )
    if ann["category_id"] not in mapping:
        return None
    if "segmentation" not in ann:
        raise DataError(
            f'{name} has no "segmentation" (a detection export holds boxes only): export polygons or masks '
            "(in CVAT: COCO 1.0 with polygons or masks; in Label Studio: COCO with polygon labels)"
        )
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise DataError(f'{name} has "iscrowd" {iscrowd!r}; it must be 0 or 1')
    entry = records[ann["image_id"]]
    segmentation = _segmentation(ann["segmentation"], entry["height"], entry["width"], name)
    if segmentation is None:
        skipped.append(ann.get("id", f"[{position}]"))
        return None
    return Region(ann.get("id"), mapping[ann["category_id"]], segmentation, int(iscrowd))


def _segmentation(segm: Any, height: int, width: int, name: str) -> Any:
    """The segmentation with polygons of fewer than 3 points dropped (``None`` when none is left)."""
    if isinstance(segm, list):
        if not all(isinstance(poly, list) for poly in segm):
            raise DataError(f"{name}: polygons must be lists [x1, y1, x2, y2, ...], got {segm!r:.80}; fix the export")
        polygons = [poly for poly in segm if len(poly) >= 6 and len(poly) % 2 == 0]
        return polygons or None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size, counts = segm["size"], segm["counts"]
        if not (isinstance(size, (list, tuple)) and list(size) == [height, width]):
            raise DataError(
                f'{name}: its RLE "size" {size!r} differs from the image\'s [height, width] [{height}, {width}] in '
                '"images"; the mask was encoded for another image size: fix the export'
            )
        if isinstance(counts, list):
            if sum(counts) != height * width or not all(is_int(n) and n >= 0 for n in counts):
                raise DataError(
                    f"{name}: its uncompressed RLE counts add up to {sum(counts)} pixels, the image has "
                    f"{height} x {width} = {height * width}; fix the export"
                )
        elif not isinstance(counts, str):
            raise DataError(f'{name}: RLE "counts" must be a list of run lengths or a string, got {counts!r:.80}')
        return segm
    raise DataError(
        f'{name}: a segmentation is a list of polygons or an RLE object with "size" and "counts", got '
        f"{segm!r:.80}; fix the export"
    )


def draw_regions(regions: Sequence[Region], height: int, width: int, *, image: Path, source: str) -> np.ndarray:
    """The bool masks ``[N, height, width]`` of ``regions``, decoded by pycocotools.

    Raises:
        DataError: pycocotools cannot decode a segmentation (named, with its image).
    """
    api = mask_api()
    masks = np.zeros((len(regions), height, width), dtype=bool)
    for k, region in enumerate(regions):
        segm = region.segmentation
        try:
            if isinstance(segm, list):
                segm = _checked_polygons(segm, height, width, f"{source}: annotation {region.annotation_id}")
                rle = api.merge(api.frPyObjects(segm, height, width))
            elif isinstance(segm["counts"], list):
                rle = api.frPyObjects(segm, height, width)
            else:
                rle = segm
            decoded = api.decode(rle)
            if decoded.max(initial=0) > 1:  # pycocotools reads some corrupt strings without raising
                raise ValueError("the decoded mask holds values other than 0 and 1: the RLE string is corrupt")
            masks[k] = decoded
        except DataError:
            raise
        except Exception as err:
            raise DataError(
                f"{source}: annotation {region.annotation_id} of {image}: pycocotools cannot decode its segmentation "
                f"({type(err).__name__}: {err}); fix or delete the annotation"
            ) from err
    return masks


def _checked_polygons(polygons: list[list[Any]], height: int, width: int, name: str) -> list[list[float]]:
    """The polygons as floats, refused when not finite or far outside the image.

    pycocotools rasterises a polygon's outline point by point, so a NaN or a coordinate of 1e9 (a broken export)
    makes it allocate until the process is killed instead of raising.
    """
    limit = _FAR * max(height, width)
    checked = []
    for polygon in polygons:
        try:
            values = np.asarray(polygon)
        except ValueError:  # ragged: lists inside the polygon
            values = np.asarray([None])
        if values.dtype.kind not in "iuf" or values.ndim != 1:
            raise DataError(f"{name}: polygon coordinates must be numbers, got {polygon!r:.80}; fix the export")
        if not np.isfinite(values).all() or np.abs(values).max() > limit:
            raise DataError(
                f"{name}: a polygon has coordinates that are not finite or lie far outside the {width}x{height} image "
                f"(beyond {limit}), e.g. {polygon[:6]!r}; fix the export (coordinates are pixels of the image, "
                "not fractions of it)"
            )
        checked.append(values.tolist())
    return checked


def missing_message(missing: Sequence[CocoImage], source: str, images: Path) -> str:
    """Name the images of the file that are not under ``images`` (first few and a count)."""
    shown = ", ".join(str(image.path.relative_to(images).as_posix()) for image in missing[:_SHOWN])
    more = f" ... and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    return f"{len(missing)} images of {source} are not in {images}: {shown}{more}"
