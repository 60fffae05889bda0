"""Turning stored mask values into class ids: colour lookup, value remapping, ``num_classes`` validation.

Both lookups are vectorised: ``value_map`` is a table indexed by the raw value; ``color_map`` packs
``(r, g, b)`` into one integer and finds it among the sorted packed keys with ``searchsorted``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from trainkit.errors import MaskValueError

__all__ = ["MaskEncoding"]

_SHOWN = 8  # offending values named in a message


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _listed(values: torch.Tensor) -> str:
    shown = values[:_SHOWN].tolist()
    return str(shown) + (f" ... ({len(values)} distinct)" if len(values) > _SHOWN else "")


class MaskEncoding:
    """How a dataset's masks encode classes; turns a decoded mask into a tensor of class ids.

    Args:
        color_map: ``{(r, g, b): class_id}`` for colour-coded masks, or ``None``.
        value_map: ``{raw_value: class_id}`` for remapped values (trimaps ``{1: 1, 2: 0, 3: 255}``), or ``None``.
        ignore_index: Class id of "don't care" pixels; raw pixels with this value pass through unmapped.
        num_classes: When given, class ids must lie in ``[0, num_classes)`` or equal ``ignore_index``.

    Raises:
        ValueError: both maps given, or a map or number of the wrong form.
    """

    def __init__(
        self,
        *,
        color_map: Mapping[tuple[int, int, int], int] | None = None,
        value_map: Mapping[int, int] | None = None,
        ignore_index: int | None = 255,
        num_classes: int | None = None,
    ) -> None:
        if color_map is not None and value_map is not None:
            raise ValueError("give either `color_map` (colour masks) or `value_map` (single-channel masks), not both")
        if ignore_index is not None and (not _is_int(ignore_index) or ignore_index < 0):
            raise ValueError(f"`ignore_index` must be an integer >= 0 or None, got {ignore_index!r}")
        if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
            raise ValueError(f"`num_classes` must be a positive integer or None, got {num_classes!r}")
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.color_map = None if color_map is None else self._check_color_map(color_map)
        self.value_map = None if value_map is None else self._check_value_map(value_map)
        self._colour_keys: torch.Tensor | None = None
        self._colour_ids: torch.Tensor | None = None
        self._table: torch.Tensor | None = None
        if self.color_map is not None:
            packed = torch.tensor([(r << 16) | (g << 8) | b for r, g, b in self.color_map], dtype=torch.int32)
            self._colour_keys, order = packed.sort()
            self._colour_ids = torch.tensor(list(self.color_map.values()), dtype=torch.int64)[order]
        if self.value_map is not None:
            size = max(*self.value_map, ignore_index if ignore_index is not None else 0) + 1
            self._table = torch.full((size,), -1, dtype=torch.int64)
            if ignore_index is not None:
                self._table[ignore_index] = ignore_index
            for raw, class_id in self.value_map.items():
                self._table[raw] = class_id

    @property
    def mapped(self) -> bool:
        """Whether a ``color_map`` or ``value_map`` translates stored values into class ids."""
        return self.color_map is not None or self.value_map is not None

    @staticmethod
    def _check_color_map(color_map: Mapping[tuple[int, int, int], int]) -> dict[tuple[int, int, int], int]:
        if not isinstance(color_map, Mapping) or not color_map:
            raise ValueError(f"`color_map` must be a non-empty dict {{(r, g, b): class_id}}, got {color_map!r}")
        checked: dict[tuple[int, int, int], int] = {}
        for colour, class_id in color_map.items():
            rgb = tuple(colour) if isinstance(colour, (tuple, list)) else ()
            if len(rgb) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in rgb):
                raise ValueError(f"`color_map` keys must be (r, g, b) tuples of 0..255, got {colour!r}")
            if not _is_int(class_id) or class_id < 0:
                raise ValueError(f"`color_map` values must be class ids >= 0, got {class_id!r} for {colour!r}")
            checked[(int(rgb[0]), int(rgb[1]), int(rgb[2]))] = int(class_id)
        return checked

    @staticmethod
    def _check_value_map(value_map: Mapping[int, int]) -> dict[int, int]:
        if not isinstance(value_map, Mapping) or not value_map:
            raise ValueError(f"`value_map` must be a non-empty dict {{raw_value: class_id}}, got {value_map!r}")
        for raw, class_id in value_map.items():
            if not _is_int(raw) or not 0 <= raw < 2**24:
                raise ValueError(f"`value_map` keys must be raw mask values in [0, 2**24), got {raw!r}")
            if not _is_int(class_id) or class_id < 0:
                raise ValueError(f"`value_map` values must be class ids >= 0, got {class_id!r} for {raw!r}")
        return {int(raw): int(class_id) for raw, class_id in value_map.items()}

    def class_ids(self, raw: np.ndarray, path: Path) -> torch.Tensor:
        """Class ids ``[H, W]`` from a decoded mask (``[H, W, 3]`` when a ``color_map`` is set).

        Without a map the stored values are the ids, in their stored integer dtype (uint8 stays uint8, so
        comparisons downstream stay cheap); a map gives int64.

        Raises:
            MaskValueError: colours or values missing from the map, a colour mask without ``color_map``, or
                non-integer values; the message names the file.
        """
        if self._colour_keys is not None and self._colour_ids is not None:
            return self._lookup_colours(raw, path, self._colour_keys, self._colour_ids)
        if raw.ndim == 3:
            colours = np.unique(raw.reshape(-1, raw.shape[2])[:: max(1, raw.shape[0] * raw.shape[1] // 4096)], axis=0)
            raise MaskValueError(
                f"{path}: the mask stores RGB colours (e.g. {[tuple(c) for c in colours[:3].tolist()]}); "
                "pass `color_map={(r, g, b): class_id, ...}` (or `read_class_dict(...)`), or save masks as "
                "palette/grayscale PNGs of class ids"
            )
        ids = torch.from_numpy(raw if raw.flags.writeable else raw.copy())
        if ids.is_floating_point():
            if not torch.equal(ids, ids.round()):
                raise MaskValueError(
                    f"{path}: mask values are fractional ({ids.dtype}); class ids must be integers. "
                    "For soft masks use `target='binary'` with `threshold=`"
                )
            ids = ids.to(torch.int64)
        elif ids.dtype == torch.uint16 or ids.dtype == torch.uint32:
            ids = ids.to(torch.int64)  # few torch ops support uint16/uint32
        return ids if self._table is None else self._lookup_values(ids, path, self._table)

    def _lookup_values(self, ids: torch.Tensor, path: Path, table: torch.Tensor) -> torch.Tensor:
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= len(table):
            table = torch.cat([table, torch.full((max(high + 1 - len(table), 0),), -1, dtype=torch.int64)])
        mapped = table[ids.clamp(min=0).long()]
        unknown = mapped < 0
        if low < 0:
            unknown |= ids < 0
        if unknown.any():
            values = torch.unique(ids[unknown])
            raise MaskValueError(
                f"{path}: mask values {_listed(values)} are not keys of `value_map` {self.value_map}; "
                f"add them to `value_map` (map them to `ignore_index`={self.ignore_index} to ignore them)"
            )
        return mapped

    def _lookup_colours(self, raw: np.ndarray, path: Path, keys: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        if raw.ndim != 3 or raw.shape[2] < 3:
            raise MaskValueError(f"{path}: `color_map` needs an RGB mask, got shape {tuple(raw.shape)}")
        rgb = torch.from_numpy(np.ascontiguousarray(raw[:, :, :3])).to(torch.int32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        position = torch.searchsorted(keys, packed).clamp_(max=len(keys) - 1)
        unknown = keys[position] != packed
        if unknown.any():
            values = torch.unique(packed[unknown])
            colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in values[:_SHOWN].tolist()]
            more = f" ... ({len(values)} distinct)" if len(values) > _SHOWN else ""
            raise MaskValueError(
                f"{path}: colours {colours}{more} are not in `color_map` ({int(unknown.sum())} pixels); "
                "add them to `color_map` (map them to `ignore_index` to ignore them)"
            )
        return class_ids[position]

    def check_classes(self, ids: torch.Tensor, path: Path) -> None:
        """Raise when class ids fall outside ``[0, num_classes)`` (``ignore_index`` allowed).

        Raises:
            MaskValueError: naming the file and the offending values.
        """
        if self.num_classes is None or ids.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(ids))
        if low >= 0 and high < self.num_classes:
            return
        bad = (ids < 0) | (ids >= self.num_classes)
        if self.ignore_index is not None:
            bad &= ids != self.ignore_index
        if bad.any():
            raise MaskValueError(
                f"{path}: mask values {_listed(torch.unique(ids[bad]))} are outside `num_classes`={self.num_classes} "
                f"(valid: 0..{self.num_classes - 1}, or `ignore_index`={self.ignore_index}); "
                "fix `num_classes`, or remap the values with `value_map`/`color_map`"
            )
