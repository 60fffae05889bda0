"""Photos as cameras write them: images turned by their EXIF orientation tag, masks as stored, and the error for
a mask that fits its image only turned (the cause named instead of "resize the mask")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_layouts import random_image
from trainkit.data import CocoDataset, SegmentationDataset, check, read_image
from trainkit.data._decode import read_mask
from trainkit.errors import DataError

pytestmark = [
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

H, W = 24, 32  # as stored
# What a viewer does for each EXIF orientation value (the EXIF 2.3 specification's table), on [H, W, C] arrays.
SHOWN: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # turned 90 degrees clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, k=1),  # turned 90 degrees counter-clockwise
}


def save_tagged(path: Path, array: np.ndarray, orientation: int, **options: object) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".webp", {"lossless": True})])
def test_images_are_turned_as_viewers_show_them(tmp_path: Path, orientation: int, suffix: str, options: dict) -> None:
    stored = random_image(np.random.default_rng(orientation), (H, W))
    path = tmp_path / f"photo{suffix}"
    save_tagged(path, stored, orientation, **options)
    np.testing.assert_array_equal(read_image(path).permute(1, 2, 0).numpy(), SHOWN[orientation](stored))
    np.testing.assert_array_equal(read_image(path, exif_orientation=False).permute(1, 2, 0).numpy(), stored)


def test_jpeg_photos_are_turned(tmp_path: Path) -> None:
    stored = random_image(np.random.default_rng(0), (H, W))
    save_tagged(tmp_path / "photo.jpg", stored, 6, quality=100)
    image = read_image(tmp_path / "photo.jpg").permute(1, 2, 0).numpy().astype(int)
    assert image.shape == (W, H, 3) and np.abs(image - SHOWN[6](stored)).mean() < 3


def portrait_dataset(root: Path, *, mask_as_shown: bool, tag: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A phone photo stored landscape with ``tag``, and its mask drawn as shown (or on the stored pixels)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = random_image(np.random.default_rng(1), (H, W))
    save_tagged(root / "images" / "IMG_0001.png", stored, tag)
    mask = np.zeros((W, H) if mask_as_shown else (H, W), dtype=np.uint8)
    mask[3:9, 2:7] = 1
    mask[0, 0] = 2  # the top-left of the mask as drawn
    Image.fromarray(mask, mode="L").save(root / "masks" / "IMG_0001.png", exif=Image.Exif())  # stored as drawn
    return stored, mask


def test_masks_drawn_on_the_shown_photo_line_up(tmp_path: Path) -> None:
    stored, mask = portrait_dataset(tmp_path, mask_as_shown=True)
    image, target = SegmentationDataset(tmp_path / "images", tmp_path / "masks")[0]
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), SHOWN[6](stored))
    np.testing.assert_array_equal(target.numpy(), mask)
    assert check(tmp_path / "images", tmp_path / "masks").ok


def test_a_mask_tagged_like_its_photo_is_read_as_stored(tmp_path: Path) -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[1:5, 2:9] = 1
    save_tagged(tmp_path / "m.png", mask, 6)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_a_mask_made_on_the_stored_pixels_names_exif_and_the_fix(tmp_path: Path) -> None:
    stored, _ = portrait_dataset(tmp_path, mask_as_shown=False)
    ds = SegmentationDataset(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(
        DataError,
        match=r"IMG_0001\.png is stored as 32x24 \(WxH\) pixels with EXIF orientation 6 \(turned 90 degrees "
        r"clockwise\), so viewers and trainkit show it as 24x32; its mask .* is 32x24, the stored size: it was made on "
        r"the stored pixels.*Read the images as stored: `--no-exif-orientation` \(trainkit train, lr-find, evaluate, "
        r"check\) or `exif_orientation=False`; do not resize the mask",
    ):
        ds[0]
    image, _ = SegmentationDataset(tmp_path / "images", tmp_path / "masks", exif_orientation=False)[0]
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), stored)
    errors = check(tmp_path / "images", tmp_path / "masks").errors
    assert len(errors) == 1 and errors[0].startswith("size mismatch: image") and "EXIF orientation 6" in errors[0]
    assert check(tmp_path / "images", tmp_path / "masks", exif_orientation=False).ok


def test_reading_as_stored_a_photo_whose_mask_was_drawn_turned(tmp_path: Path) -> None:
    portrait_dataset(tmp_path, mask_as_shown=True, tag=8)
    ds = SegmentationDataset(tmp_path / "images", tmp_path / "masks", exif_orientation=False)
    match = (
        r"EXIF orientation 8 \(turned 90 degrees counter-clockwise\) makes viewers show it as 24x32, the size of its "
        r"mask .*Read them that way: leave out `--no-exif-orientation`, or keep `exif_orientation=True` \(the default\)"
    )
    with pytest.raises(DataError, match=match):
        ds[0]


def test_a_turned_mask_of_a_photo_without_its_tag_names_the_lost_exif(tmp_path: Path) -> None:
    portrait_dataset(tmp_path, mask_as_shown=True, tag=1)  # the tag was stripped when the photo was re-saved
    with pytest.raises(DataError, match=r"is 32x24 \(WxH\) but its mask .* is 24x32: width and height are swapped.*"
                       r"this image file has none .*use the original image files, with their EXIF"):  # fmt: skip
        SegmentationDataset(tmp_path / "images", tmp_path / "masks")[0]


def test_other_size_mismatches_keep_the_resize_advice(tmp_path: Path) -> None:
    portrait_dataset(tmp_path, mask_as_shown=True)
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(tmp_path / "masks" / "IMG_0001.png")
    with pytest.raises(DataError, match=r"is 24x32 \(WxH\) but its mask .* is 12x10; resize the mask to the image"):
        SegmentationDataset(tmp_path / "images", tmp_path / "masks")[0]


def test_coco_annotations_of_the_stored_pixels_name_exif(tmp_path: Path) -> None:
    stored = random_image(np.random.default_rng(2), (H, W))
    save_tagged(tmp_path / "IMG_0002.png", stored, 6)
    coco = {
        "images": [{"id": 1, "file_name": "IMG_0002.png", "height": H, "width": W}],  # the stored size
        "annotations": [],
        "categories": [{"id": 1, "name": "leaf"}],
    }
    with pytest.raises(DataError, match=r"EXIF orientation 6 .* the size its annotations give \(image id 1 in the "
                       r"annotation dict\) is 32x24, the stored size.*`exif_orientation=False`"):  # fmt: skip
        CocoDataset(coco, tmp_path)[0]
    assert CocoDataset(coco, tmp_path, exif_orientation=False)[0][0].shape == (3, H, W)
