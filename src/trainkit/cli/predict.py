"""``trainkit predict``: one palette-encoded mask PNG per image, same stem, plus optional overlays.

Nothing is overwritten by mistake: an output folder that is the images folder is refused, and so are
images whose outputs would share a path (``a.png`` and ``a.jpg``), before anything is written. An image
that cannot be read is reported and skipped; the others are still predicted. Every file is written to a
temporary file in its folder and renamed into place, so no half-written PNG is ever left.
"""

from __future__ import annotations

import os
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from trainkit.cli.recipe import load_model, normalizer

__all__ = ["PredictResult", "class_ids", "predict_folder"]

OVERLAYS = "overlays"  # the subfolder of `out` the overlays go to, `<stem>.png` like the masks


class PredictResult(NamedTuple):
    """What :func:`predict_folder` wrote, and the images it could not read (with the reason)."""

    masks: list[Path]
    overlays: list[Path]
    failed: list[tuple[Path, str]]


def predict_folder(
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str = "auto",
    overlays: bool = False,
    batch_size: int = 8,
    exif_orientation: bool = True,
    on_failure: Callable[[Path, str], None] | None = None,
) -> PredictResult:
    """Predict a mask for every image in ``images`` and write ``out/<stem>.png`` (palette PNG of class ids).

    Images are resized to the training size for the model and the predicted mask is resized back
    (nearest) to the image's own size, so masks line up with their images pixel for pixel. The palette
    holds the checkpoint's colour map (the training masks' colours), or trainkit's colours. With
    ``overlays``, ``out/overlays/<stem>.png`` shows the mask over the image. The model's main output is
    taken by :func:`trainkit.utils.outputs.main_output` (torchvision's ``"out"``...).

    Args:
        checkpoint: a checkpoint that records its spec (``trainkit train``, ``demo``, or see docs/models.md).
        images: the folder of images (its top level; hidden files are skipped).
        out: the output folder, created; not ``images`` itself.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        overlays: also write the overlays.
        batch_size: images a forward pass.
        exif_orientation: turn photos by their EXIF orientation tag, as viewers (and the training data) show them.
        on_failure: called with the path and the reason for each image that cannot be read, as it happens.

    Returns:
        The masks and overlays written, in natural order of the image names, and the images that failed.

    Raises:
        ValueError: ``out`` is (or holds the overlays in) the ``images`` folder, ``out`` is a file, or two
            images would write the same output; nothing is written then.
        OSError: an output cannot be written (full disk, permissions); the files written so far are complete.

    Example:
        >>> result = predict_folder("runs/demo/checkpoints/best.pt", "photos", "masks_out")  # doctest: +SKIP
        >>> len(result.masks), result.failed  # doctest: +SKIP
        (12, [])
    """
    from PIL import Image

    from trainkit.data._pairing import list_image_files
    from trainkit.utils.device import resolve_device
    from trainkit.utils.outputs import main_output

    files = list_image_files(images, recursive=False, role="--images")  # natural order, hidden files skipped
    folders = _output_folders(Path(images), Path(out), overlays)
    _refuse_shared_outputs(files, Path(out))
    dev = resolve_device(device)
    model, spec = load_model(checkpoint, device=dev)
    size = spec.preprocessing.size
    for folder in folders:
        _make_folder(folder)
    colours = np.asarray(spec.colors(), dtype=np.uint8).reshape(-1).tolist()
    normalize = normalizer(spec)
    result = PredictResult([], [], [])
    for start in range(0, len(files), batch_size):
        chunk = _read_chunk(files[start : start + batch_size], spec.model.in_channels, exif_orientation, result.failed,
                            on_failure)  # fmt: skip
        if not chunk:
            continue
        batch = torch.stack([_resize(img, size) for _, img in chunk]).to(dev)
        with torch.inference_mode():
            labels = class_ids(main_output(model(normalize(batch)))).cpu()
        for (path, img), label in zip(chunk, labels, strict=True):
            mask = _resize_mask(label, (img.shape[-2], img.shape[-1]))
            pil = Image.fromarray(mask.numpy().astype(np.uint8))  # "L", becomes "P" with the palette
            pil.putpalette(colours)
            result.masks.append(_save_png(pil, folders[0] / f"{path.stem}.png", result, len(files)))
            if overlays:
                painted = _overlay(img, mask, colours)
                result.overlays.append(_save_png(painted, folders[1] / f"{path.stem}.png", result, len(files)))
    return result


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """The class id of each pixel: the largest of ``[N, C, H, W]`` logits, or ``logit > 0`` for one channel.

    Example:
        >>> class_ids(torch.tensor([[[[0.5, -1.0]], [[2.0, -3.0]]]])).tolist()
        [[[1, 0]]]
        >>> class_ids(torch.tensor([[[[0.5, -1.0]]]])).tolist()  # one binary logit
        [[[1, 0]]]
    """
    return logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()


def _output_folders(images: Path, out: Path, overlays: bool) -> list[Path]:
    """``[out]`` or ``[out, out/overlays]``, after refusing any that is the images folder or a file."""
    folders = [out, out / OVERLAYS] if overlays else [out]
    for folder in folders:
        if _same_folder(folder, images):
            what, outputs = ("--out", "masks") if folder == out else (f"--out/{OVERLAYS}", "overlays")
            raise ValueError(
                f"{what} {folder} is the --images folder {images}: the {outputs} would be written among the "
                "images (and replace any PNG of the same name); choose another --out folder"
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


def _read_chunk(
    paths: list[Path],
    channels: int,
    exif_orientation: bool,
    failed: list[tuple[Path, str]],
    on_failure: Callable[[Path, str], None] | None,
) -> list[tuple[Path, torch.Tensor]]:
    """The images of ``paths`` that decode, as ``[channels, H, W]`` uint8; the others are added to ``failed``."""
    from trainkit.data import read_image
    from trainkit.errors import DataError

    chunk = []
    for path in paths:
        try:
            chunk.append((path, read_image(path, channels=channels, exif_orientation=exif_orientation)))
        except (DataError, OSError) as err:
            reason = str(err) if isinstance(err, DataError) else f"cannot read it ({err.strerror or err})"
            reason = reason if str(path) in reason else f"{path}: {reason}"
            failed.append((path, reason))
            if on_failure is not None:
                on_failure(path, reason)
    return chunk


def _save_png(image: Any, target: Path, result: PredictResult, total: int) -> Path:
    """Write ``image`` as ``target`` atomically: a temporary file in the same folder, then ``os.replace``."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")  # hidden: never listed as an image
    try:
        # No fsync: the rename already keeps a crash or kill from leaving a partial PNG under the real name,
        # and a sync per mask would slow a folder of thousands for the sake of a power cut.
        with open(tmp, "wb") as handle:
            image.save(handle, format="PNG")
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        raise OSError(
            err.errno,
            f"cannot write {target} ({err.strerror or err}); {len(result.masks)} of {total} masks were written "
            "before, each complete",
        ) from err
    return target


def _resize(image: torch.Tensor, size: Any) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.resize(image, list(size), antialias=True)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    return F.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST)[0]


def _overlay(image: torch.Tensor, mask: torch.Tensor, colours: list[int]) -> Any:
    from PIL import Image

    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
    table = np.asarray(colours, dtype=np.float32).reshape(-1, 3)
    painted = table[mask.numpy()]
    alpha = np.where(mask.numpy()[..., None] > 0, 0.5, 0.0)
    return Image.fromarray((rgb * (1 - alpha) + painted * alpha).astype(np.uint8))
