"""``trainkit predict``: a mask per image at the image's own size, from the model run at its training scale.

Each image is resized to the scale the training crops were cut at, predicted whole or by sliding windows
(``tile``) and averaged over test-time augmentations (``tta``) (:mod:`trainkit.cli._predict_forward`); its
logits are resized back to the image's size and turned into class ids (and, when asked, probabilities) a
band of rows at a time; the mask, optional probability map and overlay are written in the chosen encoding
(:mod:`trainkit.cli._predict_outputs`), with ``labels.txt`` beside them. The folder is streamed through
:func:`trainkit.predict_iter`, one image at a time, so memory stays flat over a folder of any length.

Nothing is overwritten by mistake: an output folder that is the images folder is refused, and so are
images whose outputs would share a path (``a.png`` and ``a.jpg``), before anything is written. An image
that cannot be read is reported and skipped; the others are still predicted. Every file is written to a
temporary file in its folder and renamed into place, so no half-written file is ever left, and
``skip_existing`` continues an interrupted prediction where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import unicodedata
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from trainkit.cli._predict_forward import TTA_MODES, Forward, bilinear_bands, size_multiple, training_scale_size
from trainkit.cli._predict_outputs import (
    ENCODINGS,
    LABELS,
    OVERLAYS,
    PROBABILITIES,
    PROBABILITY_FORMATS,
    MaskFormat,
    open_probabilities,
    overlay,
    require_tifffile,
    write_atomically,
)
from trainkit.cli.recipe import load_model, normalizer
from trainkit.utils.outputs import argmax_classes

__all__ = ["PredictResult", "class_ids", "predict_folder"]


class PredictResult(NamedTuple):
    """What :func:`predict_folder` wrote, the images it could not read (with the reason), and those it skipped."""

    masks: list[Path]
    overlays: list[Path]
    failed: list[tuple[Path, str]]
    probabilities: list[Path]
    skipped: list[Path]


def predict_folder(
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str = "auto",
    overlays: bool = False,
    batch_size: int = 4,
    exif_orientation: bool | None = None,
    tile: tuple[int, int] | None = None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    tta: str | None = None,
    encoding: str = "ids",
    probabilities: str | None = None,
    skip_existing: bool = False,
    progress: bool = False,
    on_failure: Callable[[Path, str], None] | None = None,
) -> PredictResult:
    """Predict a mask for every image in ``images`` and write it to ``out``, at the image's own size.

    Args:
        checkpoint: a checkpoint that records its spec (``trainkit train``, ``demo``, or see docs/models.md).
        images: the folder of images (its top level; hidden files are skipped).
        out: the output folder, created; not ``images`` itself.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        overlays: also write ``out/overlays/<stem>.png``, the mask over the image.
        batch_size: windows a forward pass (with ``tile``).
        exif_orientation: turn photos by their EXIF orientation tag, as viewers show them (``True``), or read
            them as stored (``False``); ``None``: as the checkpoint's training images were read (turned, unless
            trained with ``--no-exif-orientation``).
        tile: ``(height, width)`` of the sliding windows an image larger than it is predicted by (at the training
            scale); ``None``: every image in one pass.
        overlap: between windows, a fraction of the window in ``[0, 1)``.
        blend: ``"gaussian"`` or ``"constant"`` weighing of overlapping windows.
        tta: ``"flip"`` (the image and its mirror) or ``"flip+scale"`` (also at 0.75 and 1.25 times), or ``None``.
        encoding: ``"ids"`` (palette PNG ``<stem>.png``) or ``"training"`` (as the training masks: 0/255 for a
            binary run, the colour map's colours, named ``<stem><mask_suffix>.png``).
        probabilities: also write ``out/probabilities/<stem>.npy`` (or ``.tif`` with the ``tiff`` extra),
            float32 ``[K, H, W]`` softmax (one channel: sigmoid) probabilities.
        skip_existing: leave out the images whose outputs are all in ``out`` already (an interrupted run).
        progress: show a progress bar on a terminal (stderr).
        on_failure: called with the path and the reason for each image that cannot be read, as it happens.

    Returns:
        The masks, overlays and probability maps written, in natural order of the image names, the images that
        failed and those skipped.

    Raises:
        ValueError: ``out`` is (or holds an output folder in) the ``images`` folder, ``out`` is a file, two images
            would write the same output, or an option is out of range; nothing is written then.
        OSError: an output cannot be written (full disk, permissions); the files written so far are complete.

    Example:
        >>> result = predict_folder("runs/demo/checkpoints/best.pt", "photos", "masks_out")  # doctest: +SKIP
        >>> len(result.masks), result.failed  # doctest: +SKIP
        (12, [])
    """
    from tqdm import tqdm

    from trainkit.data._pairing import list_image_files
    from trainkit.engine.loops import predict_iter
    from trainkit.utils.device import resolve_device

    _check_options(tile, overlap, blend, tta, encoding, probabilities)
    files = list_image_files(images, recursive=False, role="--images")  # natural order, hidden files skipped
    folders = _output_folders(Path(images), Path(out), overlays, probabilities)
    _refuse_shared_outputs(files, Path(out))
    if probabilities == "tif":
        require_tifffile()
    dev = resolve_device(device)
    model, spec = load_model(checkpoint, device=dev)
    _check_tile(model, spec.model.name, tile)
    turn = spec.preprocessing.exif_orientation if exif_orientation is None else exif_orientation
    fmt = MaskFormat.of(spec, encoding)
    for folder in folders.values():
        _make_folder(folder)
    _save(folders["masks"] / LABELS, lambda tmp: tmp.write_text(fmt.label_map()), 0, len(files))
    outputs = _Outputs(folders, fmt, spec.colors(), probabilities)
    result = PredictResult([], [], [], [], [])
    todo: list[Path] = []
    for path in files:
        (result.skipped if skip_existing and outputs.done(path) else todo).append(path)
    bar = tqdm(total=len(files), initial=len(result.skipped), unit="image", file=sys.stderr, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))  # fmt: skip
    pending: deque[tuple[Path, torch.Tensor]] = deque()  # the images whose logits are still to come, in order

    def batches() -> Iterator[torch.Tensor]:
        for path in todo:
            image = _read(path, spec.model.in_channels, turn, result.failed, on_failure, bar)
            if image is None:
                continue
            pending.append((path, image))
            size = training_scale_size(image.shape[-2], image.shape[-1], spec.preprocessing.size)  # type: ignore[arg-type]
            yield _resize(image, size)[None]

    forward = Forward(model, tile=tile, overlap=overlap, blend=blend, sw_batch_size=batch_size, tta=tta)
    with bar:
        for logits in predict_iter(forward, batches(), device=dev, batch_transform=normalizer(spec)):
            path, image = pending.popleft()
            outputs.write(path, image, logits[0], result, len(files))
            bar.update(1)
    return result


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """The class id of each pixel: the largest of ``[N, C, H, W]`` logits, or ``logit > 0`` for one channel.

    Example:
        >>> class_ids(torch.tensor([[[[0.5, -1.0]], [[2.0, -3.0]]]])).tolist()
        [[[1, 0]]]
        >>> class_ids(torch.tensor([[[[0.5, -1.0]]]])).tolist()  # one binary logit
        [[[1, 0]]]
    """
    return argmax_classes(logits) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()


class _Outputs:
    """The files of one image: its mask, and its probability map and overlay when asked; each written whole."""

    def __init__(self, folders: dict[str, Path], fmt: MaskFormat, colours: list[Any], probabilities: str | None):
        self.folders, self.fmt, self.colours, self.probabilities = folders, fmt, colours, probabilities

    def paths(self, path: Path) -> dict[str, Path]:
        paths = {"masks": self.folders["masks"] / self.fmt.file_name(path.stem)}
        if "overlays" in self.folders:
            paths["overlays"] = self.folders["overlays"] / f"{path.stem}.png"
        if "probabilities" in self.folders:
            paths["probabilities"] = self.folders["probabilities"] / f"{path.stem}.{self.probabilities}"
        return paths

    def done(self, path: Path) -> bool:
        return all(target.is_file() for target in self.paths(path).values())

    def write(self, path: Path, image: torch.Tensor, logits: torch.Tensor, result: PredictResult, total: int) -> None:
        """Resize ``[K, h, w]`` logits to the image a band at a time, and write the outputs of ``path``."""
        from trainkit.inference import to_class_ids, to_probabilities

        height, width = image.shape[-2:]
        paths = self.paths(path)
        ids = np.empty((height, width), dtype=np.uint8)
        target = paths.get("probabilities")
        try:
            opened = (
                open_probabilities(target, (logits.shape[0], height, width), self.probabilities)  # type: ignore[arg-type]
                if target is not None
                else contextlib.nullcontext(None)
            )
            with opened as maps:
                for row, band in bilinear_bands(logits, (height, width)):
                    ids[row : row + band.shape[1]] = to_class_ids(band).numpy()
                    if maps is not None:
                        maps[:, row : row + band.shape[1]] = to_probabilities(band).numpy()
        except OSError as err:
            raise _write_error(err, target, len(result.masks), total) from err
        if target is not None:
            result.probabilities.append(target)
        mask = self.fmt.image(ids)
        result.masks.append(_save(paths["masks"], _png(mask), len(result.masks), total))
        if "overlays" in paths:
            painted = overlay(image, ids, self.colours)
            result.overlays.append(_save(paths["overlays"], _png(painted), len(result.masks), total))


def _check_options(
    tile: Any, overlap: Any, blend: str, tta: str | None, encoding: str, probabilities: str | None
) -> None:
    from trainkit.inference import BLENDS

    if tile is not None and (len(tile) != 2 or min(tile) < 1):
        raise ValueError(f"`tile` must be (height, width) of positive ints, got {tile!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"`overlap` must be a fraction of the window in [0, 1), got {overlap!r}")
    for name, value, allowed in (("blend", blend, BLENDS), ("tta", tta, (None, *TTA_MODES)),
                                 ("encoding", encoding, ENCODINGS),
                                 ("probabilities", probabilities, (None, *PROBABILITY_FORMATS))):  # fmt: skip
        if value not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def _check_tile(model: torch.nn.Module, name: str, tile: tuple[int, int] | None) -> None:
    """Refuse windows the model cannot take (smp encoders need multiples of their output stride)."""
    multiple = size_multiple(model)
    if tile is None or (tile[0] % multiple == 0 and tile[1] % multiple == 0):
        return
    fit = "x".join(str(-(-side // multiple) * multiple) for side in tile)
    raise ValueError(
        f"--tile {tile[0]}x{tile[1]} does not fit {name}: its encoder needs a height and width divisible by "
        f"{multiple}; use --tile {fit}"
    )


def _output_folders(images: Path, out: Path, overlays: bool, probabilities: str | None) -> dict[str, Path]:
    """The output folders by role (``masks`` is ``out``), after refusing any that is the images folder or a file."""
    folders = {"masks": out}
    if overlays:
        folders["overlays"] = out / OVERLAYS
    if probabilities is not None:
        folders["probabilities"] = out / PROBABILITIES
    for role, folder in folders.items():
        if _same_folder(folder, images):
            what = "--out" if role == "masks" else f"--out/{folder.name}"
            raise ValueError(
                f"{what} {folder} is the --images folder {images}: the {role} would be written among the "
                "images (and replace any file of the same name); choose another --out folder"
            )
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out {folder} is a file; give a folder for the masks (it is created)")
    return folders


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:  # a symlink loop: not a folder that can be written anyway
        return False


def _refuse_shared_outputs(files: list[Path], out: Path) -> None:
    """Refuse images whose outputs would share a path: one stem, or stems equal but for case or Unicode form."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in files:  # macOS and Windows file names ignore case and Unicode normalisation: one file there
        groups[unicodedata.normalize("NFC", path.stem).casefold()].append(path)
    shared = [group for group in groups.values() if len(group) > 1]
    if not shared:
        return
    shown = "; ".join(f"{' + '.join(p.name for p in group)} -> {group[0].stem}.png" for group in shared[:10])
    more = f"; and {len(shared) - 10} more" if len(shared) > 10 else ""
    raise ValueError(
        f"{sum(map(len, shared))} images would write the same mask in {out} as another, replacing it: {shown}{more}. "
        "Rename them so that every stem is unique (names that differ only in case count as one), or predict "
        "them from separate folders"
    )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"--out {folder} is a file; give a folder for the masks (it is created)") from None
    except OSError as err:
        raise OSError(err.errno, f"cannot create the output folder {folder} ({err.strerror})") from err


def _read(
    path: Path,
    channels: int,
    exif_orientation: bool,
    failed: list[tuple[Path, str]],
    on_failure: Callable[[Path, str], None] | None,
    bar: Any,
) -> torch.Tensor | None:
    """The image as ``[channels, H, W]`` uint8, or ``None`` when it cannot be read (added to ``failed``)."""
    from trainkit.data import read_image
    from trainkit.errors import DataError

    try:
        return read_image(path, channels=channels, exif_orientation=exif_orientation)
    except (DataError, OSError) as err:
        reason = str(err) if isinstance(err, DataError) else f"cannot read it ({err.strerror or err})"
        reason = reason if str(path) in reason else f"{path}: {reason}"
        failed.append((path, reason))
        if on_failure is not None:
            with bar.external_write_mode(file=sys.stderr):  # the line above the progress bar, not through it
                on_failure(path, reason)
        bar.update(1)
        return None


def _png(image: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            image.save(handle, format="PNG")

    return write


def _save(target: Path, write: Callable[[Path], object], written: int, total: int) -> Path:
    """``write_atomically``, its ``OSError`` naming the file and how many masks were written before."""
    try:
        return write_atomically(target, write)
    except OSError as err:
        raise _write_error(err, target, written, total) from err


def _write_error(err: OSError, target: Path | None, written: int, total: int) -> OSError:
    where = f"{target} " if target is not None else ""
    return OSError(
        err.errno,
        f"cannot write {where}({err.strerror or err}); {written} of {total} masks were written before, each complete",
    )


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.resize(image, list(size), antialias=True)
