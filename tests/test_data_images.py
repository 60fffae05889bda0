"""ImageDataset: a folder of images without masks, listed and decoded as SegmentationDataset does, with paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainkit.data import DataError, DecodeError, ImageDataset, SegmentationDataset, collate, make_shapes

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def _save(path: Path, size: tuple[int, int] = (6, 4), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_natural_order_and_the_hidden_file_rules(tmp_path: Path) -> None:
    for name in ("img10.png", "img2.jpg", "img1.png", ".hidden.png", "._img3.png", "__MACOSX/img4.png", "notes.txt"):
        _save(tmp_path / name) if name.endswith((".png", ".jpg")) else (tmp_path / name).write_text("x")
    _save(tmp_path / "sub" / "img5.png")
    assert [p.name for p in ImageDataset(tmp_path).files] == ["img1.png", "img2.jpg", "img10.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in ImageDataset(tmp_path, recursive=True).files] == [
        "img1.png", "img2.jpg", "img10.png", "sub/img5.png",
    ]  # fmt: skip


def test_samples_are_the_image_and_its_path_and_batch_with_collate(tmp_path: Path) -> None:
    _save(tmp_path / "b.png", (6, 4), "L")
    _save(tmp_path / "a.png", (6, 4), "RGBA")
    ds = ImageDataset(tmp_path)
    image, path = ds[0]
    assert (image.dtype, tuple(image.shape), path) == (torch.uint8, (3, 4, 6), str(tmp_path / "a.png"))
    images, paths = collate([ds[0], ds[1]])
    assert tuple(images.shape) == (2, 3, 4, 6) and paths == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert tuple(ImageDataset(tmp_path, channels=1)[0][0].shape) == (1, 4, 6)
    assert tuple(ImageDataset(tmp_path, channels=4)[1][0].shape) == (4, 4, 6)
    assert "2 images" in repr(ds)


def test_images_decode_exactly_as_in_segmentation_dataset(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "shapes", n=3, size=32, seed=0)
    labelled = SegmentationDataset(root / "PNGImages", root / "SemanticMasks", mask_suffix="_mask")
    unlabelled = ImageDataset(root / "PNGImages")
    assert unlabelled.files == [image for image, _ in labelled.samples]
    for i in range(3):
        assert torch.equal(unlabelled[i][0], labelled[i][0])


def test_photos_are_turned_by_their_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise", as a phone held upright writes it
    stored = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "portrait.png", exif=exif)
    shown = ImageDataset(tmp_path)[0][0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))
    np.testing.assert_array_equal(ImageDataset(tmp_path, exif_orientation=False)[0][0].permute(1, 2, 0).numpy(), stored)


def test_transform_is_applied_to_each_image(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", (6, 4))
    image, _ = ImageDataset(tmp_path, transform=lambda x: x[:, :2])[0]
    assert tuple(image.shape) == (3, 2, 6)


def test_errors_name_the_folder_or_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"`images` folder .*missing does not exist; check the path"):
        ImageDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "empty" / "nested" / "a.png")
    with pytest.raises(
        DataError, match=r"contains no image files .*it has subfolders with images: pass `recursive=True`"
    ):
        ImageDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"`channels` must be 1 \(gray\), 3 \(RGB\) or 4 \(RGBA\), got 2"):
        ImageDataset(tmp_path / "empty", channels=2, recursive=True)
    with pytest.raises(TypeError, match=r"`transform` must be callable\(image\) -> image"):
        ImageDataset(tmp_path / "empty", recursive=True, transform="resize")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DecodeError, match=r"broken\.png"):
        ImageDataset(tmp_path / "bad")[0]
