"""Colour maps of colour-coded masks: CamVid's ``class_dict.csv`` and CVAT's ``labelmap.txt``.

Both list one class a line with its colour; the class id is the line's position among the classes:

=====================  ==================================================  =========================
file                   lines                                               written by
=====================  ==================================================  =========================
``class_dict.csv``     header ``name,r,g,b`` (any order), then             CamVid, many Kaggle sets
                       ``Sky,128,128,128``
``labelmap.txt``       header ``# label:color_rgb:parts:actions``, then    CVAT's "Segmentation mask"
                       ``car:255,0,0::``                                   and Pascal VOC exports
=====================  ==================================================  =========================

The format is read from the first line (a ``#`` comment or a ``:``-separated line is a label map), not
from the file name.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

from trainkit.errors import DataError

__all__ = ["ClassDict", "read_class_dict"]


class ClassDict(NamedTuple):
    """What :func:`read_class_dict` returns: the ``color_map`` and the class names in id order.

    Example:
        >>> color_map, names = ClassDict({(0, 0, 0): 0, (255, 0, 0): 1}, ["background", "car"])
        >>> color_map[(255, 0, 0)], names[1]
        (1, 'car')
    """

    color_map: dict[tuple[int, int, int], int]
    names: list[str]


def read_class_dict(
    path: str | os.PathLike[str], *, ignore: str | tuple[str, ...] = (), ignore_index: int = 255
) -> ClassDict:
    """Read a colour map: CamVid's ``class_dict.csv`` (``name,r,g,b``) or CVAT's ``labelmap.txt``.

    Class ids follow the line order; classes named in ``ignore`` map to ``ignore_index`` and take no id. A
    CVAT label map's ``parts`` and ``actions`` fields are not used.

    Args:
        path: The CSV or label map file.
        ignore: Class name(s) to map to ``ignore_index`` (e.g. ``"Void"``).
        ignore_index: The id given to ignored colours.

    Raises:
        DataError: a missing file, a header that is neither ``name,r,g,b`` nor a label map's, bad numbers or a
            repeated colour.

    Example:
        >>> import tempfile
        >>> labelmap = Path(tempfile.mkdtemp()) / "labelmap.txt"
        >>> _ = labelmap.write_text("# label:color_rgb:parts:actions\\nbackground:0,0,0::\\ncar:255,0,0::\\n")
        >>> read_class_dict(labelmap)
        ClassDict(color_map={(0, 0, 0): 0, (255, 0, 0): 1}, names=['background', 'car'])
        >>> read_class_dict(labelmap, ignore="background").color_map
        {(0, 0, 0): 255, (255, 0, 0): 0}
        >>> labelmap.unlink(); labelmap.parent.rmdir()
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as err:
        raise DataError(f"cannot read class dict {path}: {err}") from err
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    is_labelmap = first.startswith("#") or ":" in first  # a CSV header never holds ":"
    entries = _labelmap_entries(path, lines) if is_labelmap else _csv_entries(path, lines)
    return _class_dict(path, entries, ignore, ignore_index)


_Entry = tuple[int, str, tuple[int, int, int]]  # line number, class name, colour


def _csv_entries(path: Path, lines: list[str]) -> list[_Entry]:
    rows = list(csv.reader(lines))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if not {"name", "r", "g", "b"} <= set(header):
        raise DataError(
            f"{path}: the header must name columns name,r,g,b (any order) for a class_dict.csv, or be "
            f"`# label:color_rgb:parts:actions` for CVAT's labelmap.txt; got {rows[0] if rows else []}"
        )
    col = {name: header.index(name) for name in ("name", "r", "g", "b")}
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            colour = (int(row[col["r"]]), int(row[col["g"]]), int(row[col["b"]]))
            entries.append((line, row[col["name"]].strip(), colour))
        except (IndexError, ValueError) as err:
            raise DataError(f"{path}, line {line}: expected name,r,g,b with integer colours, got {row}") from err
    return entries


def _labelmap_entries(path: Path, lines: list[str]) -> list[_Entry]:
    entries = []
    for line, text in enumerate(lines, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split(":")
        # label:color_rgb:parts:actions; a label may itself hold ":", so the last three fields are counted from the end
        name, rgb = (":".join(fields[:-3]), fields[-3]) if len(fields) >= 4 else (fields[0], ",".join(fields[1:2]))
        try:
            r, g, b = (int(c) for c in rgb.split(","))
        except ValueError as err:
            raise DataError(
                f"{path}, line {line}: expected `label:r,g,b:parts:actions` (CVAT's labelmap.txt) with an integer "
                f"colour, got {text!r}; fix the line or export the label map from CVAT again"
            ) from err
        entries.append((line, name.strip(), (r, g, b)))
    return entries


def _class_dict(path: Path, entries: list[_Entry], ignore: str | tuple[str, ...], ignore_index: int) -> ClassDict:
    ignored = {ignore} if isinstance(ignore, str) else set(ignore)
    color_map: dict[tuple[int, int, int], int] = {}
    names: list[str] = []
    for line, name, colour in entries:
        if not all(0 <= c <= 255 for c in colour) or colour in color_map:
            problem = "repeats an earlier colour" if colour in color_map else "has a colour outside 0..255"
            raise DataError(f"{path}, line {line}: {name!r} {problem} {colour}")
        if name in ignored:
            color_map[colour] = ignore_index
        else:
            color_map[colour] = len(names)
            names.append(name)
    unknown = ignored - {name for _, name, _ in entries}
    if unknown:
        raise DataError(f"{path}: `ignore` names {sorted(unknown)} are not classes in the file")
    return ClassDict(color_map, names)
