"""``trainkit predict``: one palette-encoded mask PNG per image, same stem, plus optional overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit.cli.recipe import load_recipe_model

__all__ = ["predict_folder"]


def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    overlays: bool = False,
    batch_size: int = 8,
) -> list[Path]:
    """Predict a mask for every image in ``images`` and write ``out/<stem>.png`` (palette PNG of class ids).

    Images are resized to the training size for the model and the predicted mask is resized back
    (nearest) to the image's own size, so masks line up with their images pixel for pixel.

    Returns:
        The mask paths written, in natural order of the image names.

    Example:
        >>> predict_folder("runs/demo/checkpoints/best.pt", "photos", "masks_out")  # doctest: +SKIP
    """
    from PIL import Image

    from trainkit.data._decode import read_image
    from trainkit.data._pairing import list_image_files
    from trainkit.data.transforms import BatchNormalize
    from trainkit.utils.device import resolve_device
    from trainkit.utils.plots import palette

    dev = resolve_device(device)
    model, settings = load_recipe_model(checkpoint, device=dev)
    data = settings["data"]
    files = list_image_files(images, recursive=False, role="--images")  # natural order, hidden files skipped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    colours = np.asarray(palette(256), dtype=np.uint8).reshape(-1).tolist()
    normalize = BatchNormalize(data["mean"], data["std"])
    written = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        originals = [read_image(p, channels=3) for p in chunk]
        batch = torch.stack([_resize(img, data["size"]) for img in originals]).to(dev)
        with torch.inference_mode():
            labels = model(normalize(batch)).argmax(1).cpu()
        for path, img, label in zip(chunk, originals, labels, strict=True):
            mask = _resize_mask(label, (img.shape[-2], img.shape[-1]))
            target = out / f"{path.stem}.png"
            pil = Image.fromarray(mask.numpy().astype(np.uint8))  # "L", becomes "P" with the palette
            pil.putpalette(colours)
            pil.save(target)
            written.append(target)
            if overlays:
                _overlay(img, mask, colours).save(out / f"{path.stem}_overlay.png")
    return written


def _resize(image: torch.Tensor, size: list[int] | tuple[int, int]) -> torch.Tensor:
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
