"""Pairing image files with mask files by stem, in natural order.

A mask belongs to an image when the mask's path relative to the masks folder, without extension, equals
the image's relative path without extension plus ``mask_suffix`` (``PNGImages/FudanPed00001.png`` ↔
``PedMasks/FudanPed00001_mask.png``). Extensions may differ (``.jpg`` image, ``_mask.gif`` mask). Pairs come
in natural order (``img2`` before ``img10``), never from zipping two sorted listings. Names are compared in
Unicode normal form NFC: macOS writes ``é`` as ``e`` + a combining accent (NFD), Linux and Windows keep what
they are given, so a dataset copied between them can hold two spellings of one name that look identical.
"""

from __future__ import annotations

import errno
import os
import unicodedata
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
        DataError: the folder does not exist, is not a folder, cannot be read or holds no image files, or an
            image-named entry is a broken or looping symbolic link.
    """
    root = Path(folder)
    try:
        if not root.exists():
            if root.is_symlink():
                _check_link(root, f"`{role}` folder")
            raise DataError(f"`{role}` folder {root} does not exist; check the path (relative to {Path.cwd()})")
        if not root.is_dir():
            raise DataError(f"`{role}`={root} is a file; pass the folder that contains the {role}")
        files = _scan(root, recursive=recursive, role=role)
    except PermissionError as err:  # the folder, a subfolder, or a folder on the way to it
        folder_named = Path(err.filename) if err.filename else root
        raise DataError(
            f"`{role}` folder {folder_named} cannot be read (permission denied); make it readable by the user running "
            f"trainkit (e.g. `chmod -R a+rX {folder_named}`)"
        ) from err
    if not files:
        nested = not recursive and any(_has_images(d) for d in root.iterdir() if d.is_dir() and not _skipped(d.name))
        hint = "; it has subfolders with images: pass `recursive=True`" if nested else ""
        raise DataError(
            f"`{role}` folder {root} contains no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}){' in any subfolder' if recursive else ''}{hint}"
        )
    return natsorted(files, key=lambda p: p.relative_to(root).as_posix(), alg=ns.PATH)


def _scan(root: Path, *, recursive: bool, role: str) -> list[Path]:
    """Image-named files in ``root`` (and its subfolders, not followed through links, when ``recursive``)."""
    files: list[Path] = []
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if _skipped(entry.name):  # hidden files and folders, __MACOSX
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        folders.append(Path(entry.path))
                    continue
                if not _is_image_name(entry.name):
                    continue
                if entry.is_symlink():
                    _check_link(Path(entry.path), "mask" if "mask" in role else "image")
                if entry.is_file():
                    files.append(Path(entry.path))
    return files


def _check_link(path: Path, what: str) -> None:
    """Raise a ``DataError`` saying what is wrong with a symbolic link whose target cannot be opened."""
    try:
        os.stat(path)
    except FileNotFoundError as err:
        raise DataError(
            f"{path} is a broken symbolic link: its target {os.readlink(path)} does not exist; point it at an "
            f"existing {what} (`ln -sfn TARGET {path}`) or delete it"
        ) from err
    except OSError as err:
        problem = (
            f"loops (it points to {os.readlink(path)}, which leads back to itself)"
            if err.errno == errno.ELOOP
            else f"cannot be followed ({err.strerror})"
        )
        raise DataError(
            f"{path} is a symbolic link that {problem}; point it at the real {what} (`ln -sfn TARGET {path}`) or "
            "delete it"
        ) from err


def _is_image_name(name: str) -> bool:
    return not _skipped(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _has_images(folder: Path) -> bool:
    return any(_is_image_name(name) for _, _, filenames in os.walk(folder) for name in filenames)


def _key(path: Path, root: Path) -> str:
    return _nfc(path.relative_to(root).with_suffix("").as_posix())


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


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
    mask_suffix = _nfc(mask_suffix)
    if mask_suffix and image_root.resolve() == mask_root.resolve():  # one folder holding a.png and a_mask.png
        image_files = [p for p in image_files if not _nfc(p.stem).endswith(mask_suffix)]
        mask_files = [p for p in mask_files if _nfc(p.stem).endswith(mask_suffix)]

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
    groups = "; ".join(", ".join(str(p) for p in group) + _spellings(group) for group in pairing.ambiguous[:_SHOWN])
    more = f" ... and {len(pairing.ambiguous) - _SHOWN} more groups" if len(pairing.ambiguous) > _SHOWN else ""
    return f"files share a stem, so pairing by stem is ambiguous: {groups}{more}; keep one file per stem"


def _spellings(group: list[Path]) -> str:
    if len({p.name for p in group}) > len({_nfc(p.name) for p in group}):
        return " (names that differ only in their Unicode normal form, NFC vs NFD: they look identical)"
    return ""


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
