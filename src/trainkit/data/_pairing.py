"""Pairing image files with mask files by stem, in natural order.

A mask belongs to an image when the mask's path relative to the masks folder, without extension, equals
the image's relative path without extension plus ``mask_suffix`` (``PNGImages/FudanPed00001.png`` ↔
``PedMasks/FudanPed00001_mask.png``). Extensions may differ (``.jpg`` image, ``_mask.gif`` mask). Pairs come
in natural order (``img2`` before ``img10``), never from zipping two sorted listings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from natsort import natsorted, ns

from trainkit.data._decode import IMAGE_EXTENSIONS
from trainkit.errors import DataError, PairingError

__all__ = ["Pairing", "ambiguous_message", "find_pairs", "list_image_files", "pair_files", "unpaired_message"]

_SHOWN = 5  # unpaired files named in a message before "... and N more"


@dataclass
class Pairing:
    """The outcome of matching two folders: pairs plus everything that did not pair.

    Attributes:
        pairs: ``(image_path, mask_path)`` in natural order of the image's relative path.
        unpaired_images: Images with no mask, natural order.
        unpaired_masks: Masks with no image (or without ``mask_suffix``), natural order.
        ambiguous: Groups of files in one folder that share a stem (``a.png`` and ``a.jpg``).
    """

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    ambiguous: list[list[Path]] = field(default_factory=list)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"  # hidden files, macOS resource forks and archives


def list_image_files(folder: str | os.PathLike[str], *, recursive: bool, role: str = "images") -> list[Path]:
    """Image files in ``folder`` (or below it with ``recursive=True``), natural order; other files ignored.

    Raises:
        DataError: the folder does not exist, is not a folder, or holds no image files.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"`{role}` folder {root} does not exist; check the path (relative to {Path.cwd()})")
    if not root.is_dir():
        raise DataError(f"`{role}`={root} is a file; pass the folder that contains the {role}")
    if recursive:
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not _skipped(d)]  # prune hidden folders and __MACOSX
            files.extend(Path(dirpath, name) for name in filenames if _is_image_name(name))
    else:
        files = [Path(entry.path) for entry in os.scandir(root) if entry.is_file() and _is_image_name(entry.name)]
    if not files:
        nested = not recursive and any(_has_images(d) for d in root.iterdir() if d.is_dir() and not _skipped(d.name))
        hint = "; it has subfolders with images: pass `recursive=True`" if nested else ""
        raise DataError(
            f"`{role}` folder {root} contains no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}){' in any subfolder' if recursive else ''}{hint}"
        )
    return natsorted(files, key=lambda p: p.relative_to(root).as_posix(), alg=ns.PATH)


def _is_image_name(name: str) -> bool:
    return not _skipped(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _has_images(folder: Path) -> bool:
    return any(_is_image_name(name) for _, _, filenames in os.walk(folder) for name in filenames)


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def find_pairs(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    mask_suffix: str = "",
    recursive: bool = False,
) -> Pairing:
    """Match image files with mask files by stem; report what did not match instead of raising.

    Raises:
        DataError: a folder does not exist or holds no image files.
    """
    image_root, mask_root = Path(images), Path(masks)
    image_files = list_image_files(image_root, recursive=recursive, role="images")
    mask_files = list_image_files(mask_root, recursive=recursive, role="masks")
    if mask_suffix and image_root.resolve() == mask_root.resolve():  # one folder holding a.png and a_mask.png
        image_files = [p for p in image_files if not p.stem.endswith(mask_suffix)]
        mask_files = [p for p in mask_files if p.stem.endswith(mask_suffix)]

    result = Pairing()
    by_image: dict[str, list[Path]] = {}
    for path in image_files:
        by_image.setdefault(_key(path, image_root), []).append(path)
    by_mask: dict[str, list[Path]] = {}
    for path in mask_files:
        key = _key(path, mask_root)
        if mask_suffix and not key.endswith(mask_suffix):
            result.unpaired_masks.append(path)
            continue
        by_mask.setdefault(key[: len(key) - len(mask_suffix)], []).append(path)

    result.ambiguous = [group for group in (*by_image.values(), *by_mask.values()) if len(group) > 1]
    for key, group in by_image.items():  # insertion order is the natural order of image files
        if key in by_mask:
            result.pairs.append((group[0], by_mask[key][0]))
        else:
            result.unpaired_images.extend(group)
    result.unpaired_masks = natsorted(
        [*result.unpaired_masks, *(p for key, group in by_mask.items() if key not in by_image for p in group)],
        key=lambda p: p.relative_to(mask_root).as_posix(),
        alg=ns.PATH,
    )
    return result


def _named(paths: Sequence[Path], root: Path) -> str:
    shown = ", ".join(p.relative_to(root).as_posix() for p in paths[:_SHOWN])
    return shown + (f" ... and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def unpaired_message(pairing: Pairing, images: Path, masks: Path, mask_suffix: str) -> str:
    """One sentence per problem: which images have no mask and which masks have no image."""
    parts = []
    if pairing.unpaired_images:
        n = len(pairing.unpaired_images)
        parts.append(
            f"{_plural(n, 'image')} in {images} {'has' if n == 1 else 'have'} no mask: "
            f"{_named(pairing.unpaired_images, images)}"
        )
    if pairing.unpaired_masks:
        n = len(pairing.unpaired_masks)
        parts.append(
            f"{_plural(n, 'mask')} in {masks} {'has' if n == 1 else 'have'} no image: "
            f"{_named(pairing.unpaired_masks, masks)}"
        )
    rule = f"a mask's stem is the image's stem + `mask_suffix`={mask_suffix!r}"
    hint = _suffix_hint(pairing, images, masks) if not pairing.pairs else ""
    return "; ".join(parts) + f" ({rule}{hint})"


def _suffix_hint(pairing: Pairing, images: Path, masks: Path) -> str:
    """When nothing paired, guess the suffix from the first mask whose stem starts with an image stem."""
    stems = sorted({_key(p, images) for p in pairing.unpaired_images}, key=len, reverse=True)
    for mask in pairing.unpaired_masks[:50]:
        key = _key(mask, masks)
        for stem in stems:
            if key.startswith(stem) and key != stem:
                return f"; did you mean `mask_suffix={key[len(stem) :]!r}`?"
    return ""


def ambiguous_message(pairing: Pairing) -> str:
    """Name the files that share a stem, so pairing cannot tell which one is meant."""
    groups = "; ".join(", ".join(str(p) for p in group) for group in pairing.ambiguous[:_SHOWN])
    more = f" ... and {len(pairing.ambiguous) - _SHOWN} more groups" if len(pairing.ambiguous) > _SHOWN else ""
    return f"files share a stem, so pairing by stem is ambiguous: {groups}{more}; keep one file per stem"


def pair_files(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    mask_suffix: str = "",
    recursive: bool = False,
    strict: bool = True,
) -> list[tuple[Path, Path]]:
    """Pairs of ``(image_path, mask_path)``; unpaired files raise, or are dropped with one warning.

    Raises:
        PairingError: unpaired files with ``strict=True``, or files that share a stem, or no pair at all.
        DataError: a folder does not exist or holds no image files.
    """
    image_root, mask_root = Path(images), Path(masks)
    pairing = find_pairs(image_root, mask_root, mask_suffix=mask_suffix, recursive=recursive)
    if pairing.ambiguous:
        raise PairingError(ambiguous_message(pairing))
    unpaired = pairing.unpaired_images or pairing.unpaired_masks
    if unpaired and (strict or not pairing.pairs):
        fix = "; rename the files, set `mask_suffix`, or pass `strict=False` to drop unpaired files"
        raise PairingError(unpaired_message(pairing, image_root, mask_root, mask_suffix) + (fix if strict else ""))
    if unpaired:
        message = unpaired_message(pairing, image_root, mask_root, mask_suffix)
        warnings.warn(f"dropping unpaired files (`strict=False`): {message}", stacklevel=3)
    return pairing.pairs
