"""The message for an image and a mask (or annotations) of different sizes, naming EXIF rotation when it is the cause.

Phones store a portrait photo as landscape pixels plus an EXIF orientation tag that tells viewers to turn it;
annotation tools draw on the turned image. So a mask that fits its image only with width and height swapped
was drawn on the image as shown while the image is read as stored (or the reverse), or the tag was lost when
the image was re-saved after annotating. Resizing such a mask, the usual advice for a size mismatch, would
squash it; the fix is to read the image the way the mask was drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainkit.data._decode import orientation_tag

__all__ = ["TURNS", "size_mismatch"]

TURNS: dict[int, str] = {
    2: "mirrored left-right",
    3: "turned 180 degrees",
    4: "mirrored top-bottom",
    5: "mirrored and turned 90 degrees",
    6: "turned 90 degrees clockwise",
    7: "mirrored and turned 270 degrees",
    8: "turned 90 degrees counter-clockwise",
}
"""What each EXIF orientation value (other than 1, as stored) tells a viewer to do."""

_NO_RESIZE = "do not resize the mask: that would squash it"


def size_mismatch(
    image: Path,
    image_hw: tuple[int, int],
    mask: str,
    mask_hw: tuple[int, int],
    *,
    image_data: np.ndarray,
    exif_orientation: bool,
    mask_fix: str = "resize the mask to the image (nearest neighbour) or fix the pairing",
) -> str:
    """Why an image of ``image_hw`` (as read) and a mask of ``mask_hw`` differ, and the fix.

    Args:
        image: The image file.
        image_hw: The image's ``(H, W)`` as decoded (turned by its EXIF tag when ``exif_orientation``).
        mask: What the mask is, for the message, e.g. ``"its mask masks/a.png"``.
        mask_hw: The mask's ``(H, W)``.
        image_data: The image file's bytes, to read its EXIF orientation tag.
        exif_orientation: Whether the image was turned by its tag.
        mask_fix: The fix when the sizes differ otherwise than by a swap.

    Example:
        >>> no_exif = np.zeros(4, np.uint8)
        >>> size_mismatch(Path("a.png"), (24, 32), "its mask b.png", (10, 10), image_data=no_exif,
        ...               exif_orientation=True)  # doctest: +ELLIPSIS
        'image a.png is 32x24 (WxH) but its mask b.png is 10x10; resize the mask to the image (nearest ...'
        >>> size_mismatch(Path("a.png"), (24, 32), "its mask b.png", (32, 24), image_data=no_exif,
        ...               exif_orientation=True)  # doctest: +ELLIPSIS
        'image a.png is 32x24 (WxH) but its mask b.png is 24x32: width and height are swapped, so the mask ...'
    """
    (h, w), (mh, mw) = image_hw, mask_hw
    if (mh, mw) != (w, h) or h == w:
        return f"image {image} is {w}x{h} (WxH) but {mask} is {mw}x{mh}; {mask_fix}"
    tag = orientation_tag(image_data)
    if tag >= 5 and exif_orientation:
        return (
            f"image {image} is stored as {h}x{w} (WxH) pixels with EXIF orientation {tag} ({TURNS[tag]}), so viewers "
            f"and trainkit show it as {w}x{h}; {mask} is {mw}x{mh}, the stored size: it was made on the stored pixels, "
            "not on the image as viewers show it. Read the images as stored: `--no-exif-orientation` (trainkit "
            f"train, lr-find, evaluate, check) or `exif_orientation=False`; {_NO_RESIZE}"
        )
    if tag >= 5:
        return (
            f"image {image} is stored as {w}x{h} (WxH) pixels, and its EXIF orientation {tag} ({TURNS[tag]}) makes "
            f"viewers show it as {h}x{w}, the size of {mask}: the mask was drawn on the image as viewers show it. "
            "Read them that way: leave out `--no-exif-orientation`, or keep `exif_orientation=True` (the default); "
            f"{_NO_RESIZE}"
        )
    return (
        f"image {image} is {w}x{h} (WxH) but {mask} is {mw}x{mh}: width and height are swapped, so the mask fits the "
        "image turned by 90 degrees. Annotation tools draw on a photo as viewers show it, turned by its EXIF "
        "orientation tag, and this image file has none (it is lost when an image is re-saved or converted after "
        f"annotating): use the original image files, with their EXIF, or turn the masks back; {_NO_RESIZE}"
    )
