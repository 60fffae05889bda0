"""SegmentationDataset on the layouts of public datasets, checked pixel-exactly against the generating arrays."""

from __future__ import annotations

import os
import pickle
import random
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

import data_layouts as layouts
from trainkit.data._seeding import sample_rng, sample_seed, set_epoch
from trainkit.data.dataset import ClassDict, SegmentationDataset, read_class_dict
from trainkit.errors import DataError, DecodeError, MaskValueError, PairingError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- layouts


def test_penn_fudan_instance_targets_match_the_generating_ids(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=3)
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="instance")
    assert len(ds) == 3
    assert [p.stem for p, _ in ds.samples] == layout.names
    assert [m.name for _, m in ds.samples] == [f"{n}_mask.png" for n in layout.names]
    for index, (array, ids) in enumerate(zip(layout.images_hwc, layout.masks_raw, strict=True)):
        image, target = ds[index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        np.testing.assert_array_equal(hwc(image), array)
        objects = [k for k in np.unique(ids) if k != 0]
        assert len(objects) == index + 1
        assert isinstance(target["masks"], tv_tensors.Mask) and target["masks"].dtype == torch.bool
        expected_boxes = []
        for k, obj in enumerate(objects):  # independent, loop-based reference: the notes' tutorial code
            np.testing.assert_array_equal(target["masks"][k].numpy(), ids == obj)
            rows, cols = np.where(ids == obj)
            expected_boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        boxes = target["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
        assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (24, 32)
        assert boxes.tolist() == expected_boxes
        assert target["labels"].tolist() == [1] * len(objects) and target["labels"].dtype == torch.int64
        widths, heights = np.diff(np.array(expected_boxes)[:, [0, 2]]), np.diff(np.array(expected_boxes)[:, [1, 3]])
        assert target["area"].tolist() == (widths * heights).ravel().tolist()
        assert target["area"].dtype == torch.float32
        assert target["iscrowd"].tolist() == [0] * len(objects) and target["iscrowd"].dtype == torch.int64
        assert target["image_id"].item() == index and target["image_id"].dtype == torch.int64


def test_instance_labels_map_objects_and_drop_ignore(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=3)
    ds = SegmentationDataset(
        layout.images, layout.masks, mask_suffix="_mask", target="instance", instance_labels={1: 2, 2: 5, 3: 7}
    )
    assert ds[2][1]["labels"].tolist() == [2, 5, 7]
    with pytest.raises(MaskValueError, match=r"FudanPed00003_mask\.png: object ids \[3\] are not keys"):
        SegmentationDataset(
            layout.images, layout.masks, mask_suffix="_mask", target="instance", instance_labels={1: 1, 2: 1}
        )[2]
    ignored = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="instance", ignore_index=2)
    assert ignored[2][1]["masks"].shape[0] == 2  # objects 1 and 3; 2 is "ignore"


def test_negative_index_is_the_same_sample(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=3)
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="instance")
    assert ds[-1][1]["image_id"].item() == 2 and torch.equal(ds[-1][1]["masks"], ds[2][1]["masks"])
    with pytest.raises(IndexError):
        ds[3]


def test_penn_fudan_semantic_target_is_the_raw_ids(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=2)
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask")
    mask = ds[1][1]
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and tuple(mask.shape) == (24, 32)
    np.testing.assert_array_equal(mask.numpy(), layout.masks_raw[1])


@pytest.mark.parametrize("foreground", [1, 255])
def test_carvana_gif_masks_give_binary_targets(tmp_path: Path, foreground: int) -> None:
    layout = layouts.carvana(tmp_path, foreground=foreground)
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="binary")
    assert [p.suffix for p, m in ds.samples] == [".jpg", ".jpg"] and ds.samples[0][1].suffix == ".gif"
    for index in range(len(ds)):
        image, mask = ds[index]
        assert tuple(image.shape) == (3, 24, 32) and image.dtype == torch.uint8
        assert np.abs(hwc(image).astype(int) - layout.images_hwc[index]).mean() < 5  # JPEG: approximately
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), (layout.masks_raw[index] > 0).astype(np.int64))


def test_binary_threshold(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    values = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))
    Image.fromarray(np.zeros((4, 32, 3), np.uint8)).save(tmp_path / "i" / "a.png")
    Image.fromarray(values, mode="L").save(tmp_path / "m" / "a.png")
    mask = SegmentationDataset(tmp_path / "i", tmp_path / "m", target="binary", threshold=127)[0][1]
    np.testing.assert_array_equal(mask.numpy(), (values > 127).astype(np.int64))


def test_oxford_pet_trimaps_through_value_map(tmp_path: Path) -> None:
    layout = layouts.oxford_pets(tmp_path)
    ds = SegmentationDataset(layout.images, layout.masks, value_map={1: 1, 2: 0, 3: 255})
    assert [p.stem for p, _ in ds.samples] == layout.names  # the .mat file is ignored
    lookup = np.array([0, 1, 0, 255])  # raw 1 pet -> 1, 2 background -> 0, 3 border -> ignore
    for index in range(len(ds)):
        mask = ds[index][1]
        np.testing.assert_array_equal(mask.numpy(), lookup[layout.masks_raw[index]])
    np.testing.assert_array_equal(hwc(ds[2][0]), layout.images_hwc[2])  # PNG bytes named .jpg: exact
    binary = SegmentationDataset(layout.images, layout.masks, value_map={1: 1, 2: 0, 3: 255}, target="binary")
    np.testing.assert_array_equal(binary[0][1].numpy(), lookup[layout.masks_raw[0]])  # ignore kept


def test_value_map_rejects_unmapped_values(tmp_path: Path) -> None:
    layout = layouts.oxford_pets(tmp_path)
    ds = SegmentationDataset(layout.images, layout.masks, value_map={1: 1, 2: 0})
    with pytest.raises(MaskValueError, match=r"Abyssinian_1\.png: mask values \[3\] are not keys of `value_map`"):
        ds[0]


def test_camvid_colour_masks_through_class_dict(tmp_path: Path) -> None:
    layout = layouts.camvid(tmp_path)
    color_map, names = read_class_dict(layout.class_dict)
    assert names == ["Sky", "Building", "Road", "Void"]
    assert color_map == {(128, 128, 128): 0, (128, 0, 0): 1, (128, 64, 128): 2, (0, 0, 0): 3}
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_L", color_map=color_map, num_classes=len(names))
    for index in range(len(ds)):
        image, mask = ds[index]
        np.testing.assert_array_equal(hwc(image), layout.images_hwc[index])
        np.testing.assert_array_equal(mask.numpy(), layout.masks_raw[index])
    void_ignored = read_class_dict(layout.class_dict, ignore="Void")
    assert isinstance(void_ignored, ClassDict) and void_ignored.names == ["Sky", "Building", "Road"]
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_L", color_map=void_ignored.color_map)
    np.testing.assert_array_equal(ds[0][1].numpy(), np.where(layout.masks_raw[0] == 3, 255, layout.masks_raw[0]))


def test_unknown_colour_names_the_file_and_the_colour(tmp_path: Path) -> None:
    layout = layouts.camvid(tmp_path)
    color_map = {(128, 128, 128): 0, (128, 0, 0): 1, (0, 0, 0): 3}  # Road (128, 64, 128) missing
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_L", color_map=color_map)
    with pytest.raises(MaskValueError, match=r"0001TP_006690_L\.png: colours \[\(128, 64, 128\)\] are not in"):
        ds[0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("label,r,g,b\nSky,1,2,3\n", r"header must name columns name,r,g,b"),
        ("name,r,g,b\nSky,1,2\n", r"line 2: expected name,r,g,b"),
        ("name,r,g,b\nSky,1,2,3\nRoad,1,2,3\n", r"line 3: 'Road' repeats an earlier colour"),
        ("name,r,g,b\nSky,1,2,300\n", r"colour outside 0\.\.255"),
    ],
)
def test_read_class_dict_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "class_dict.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_class_dict(tmp_path / "class_dict.csv")


def test_read_class_dict_unknown_ignore_name(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("name,r,g,b\nSky,1,2,3\n")
    with pytest.raises(DataError, match=r"`ignore` names \['Void'\] are not classes"):
        read_class_dict(tmp_path / "c.csv", ignore="Void")


def test_pascal_voc_palette_with_255_borders(tmp_path: Path) -> None:
    layout = layouts.pascal_voc(tmp_path, n=2, extra_images=2)
    with pytest.raises(PairingError, match=r"2 images in .*JPEGImages have no mask: 2007_000034\.jpg, 2007_000035"):
        SegmentationDataset(layout.images, layout.masks, num_classes=21)
    with pytest.warns(UserWarning, match=r"dropping unpaired files .*2 images"):
        ds = SegmentationDataset(layout.images, layout.masks, num_classes=21, strict=False)
    assert [p.stem for p, _ in ds.samples] == layout.names
    for index in range(len(ds)):
        mask = ds[index][1]
        np.testing.assert_array_equal(mask.numpy(), layout.masks_raw[index])
        assert 255 in mask.unique().tolist()  # the border passes through as ignore_index


def test_natural_order_trap(tmp_path: Path) -> None:
    layout = layouts.natural_order_trap(tmp_path)
    with pytest.raises(PairingError, match=r"1 mask in .*masks has no image: img13\.png"):
        SegmentationDataset(layout.images, layout.masks)
    with pytest.warns(UserWarning, match=r"img13\.png") as caught:
        ds = SegmentationDataset(layout.images, layout.masks, strict=False)
    assert len(caught) == 1
    assert len(ds) == 12
    assert [p.stem for p, _ in ds.samples] == [f"img{k}" for k in range(1, 13)]
    for index in range(12):
        image, mask = ds[index]
        assert mask.unique().tolist() == [index + 1]  # mask k holds value k: paired by stem, not by position
        np.testing.assert_array_equal(hwc(image), layout.images_hwc[index])


def test_lzw_tiff_stacks_use_the_first_page(tmp_path: Path) -> None:
    layout = layouts.tiff_stacks(tmp_path)
    ds = SegmentationDataset(layout.images, layout.masks, channels=1, num_classes=1000)
    for index in range(len(ds)):
        image, mask = ds[index]
        assert tuple(image.shape) == (1, 24, 32)
        np.testing.assert_array_equal(image[0].numpy(), layout.images_hwc[index])
        np.testing.assert_array_equal(mask.numpy(), layout.masks_raw[index].astype(np.int64))
    assert int(ds[0][1].max()) in (300, 600, 900)  # 16-bit values survive


def test_recursive_pairs_by_relative_path(tmp_path: Path) -> None:
    for split in ("a", "b"):
        for folder in ("images", "masks"):
            (tmp_path / folder / split).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / split / "x.png")
        Image.fromarray(np.full((4, 4), ord(split), np.uint8)).save(tmp_path / "masks" / split / "x_m.png")
    with pytest.raises(DataError, match=r"contains no image files .*pass `recursive=True`"):
        SegmentationDataset(tmp_path / "images", tmp_path / "masks", mask_suffix="_m")
    ds = SegmentationDataset(tmp_path / "images", tmp_path / "masks", mask_suffix="_m", recursive=True)
    assert [(p.parent.name, m.parent.name) for p, m in ds.samples] == [("a", "a"), ("b", "b")]
    assert ds[1][1].unique().tolist() == [ord("b")]


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=2)
    (layout.images / ".DS_Store").write_bytes(b"\0")
    (layout.images / "._FudanPed00001.png").write_bytes(b"\0")  # macOS resource fork
    (layout.masks / "readme.txt").write_text("masks")
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask")
    assert len(ds) == 2


def test_same_folder_with_suffix(tmp_path: Path) -> None:
    for name in ("a", "b"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / f"{name}_mask.png")
    ds = SegmentationDataset(tmp_path, tmp_path, mask_suffix="_mask")
    assert [(p.name, m.name) for p, m in ds.samples] == [("a.png", "a_mask.png"), ("b.png", "b_mask.png")]


# ---------------------------------------------------------------- bad inputs


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path / "ok", n=1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"`images` folder .*empty contains no image files"):
        SegmentationDataset(tmp_path / "empty", layout.masks)
    with pytest.raises(DataError, match=r"`masks` folder .*nowhere does not exist"):
        SegmentationDataset(layout.images, tmp_path / "nowhere")


def test_wrong_suffix_gets_a_hint(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=2)
    with pytest.raises(PairingError, match=r"did you mean `mask_suffix='_mask'`"):
        SegmentationDataset(layout.images, layout.masks)


def test_files_sharing_a_stem_are_ambiguous(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=1)
    Image.fromarray(layout.images_hwc[0]).save(layout.images / "FudanPed00001.jpg")
    with pytest.raises(PairingError, match=r"share a stem.*FudanPed00001\.(png|jpg), .*FudanPed00001\.(png|jpg)"):
        SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", strict=False)


def test_truncated_png_and_corrupt_jpeg_name_the_file(tmp_path: Path) -> None:
    layout = layouts.carvana(tmp_path, n=2)
    first = layout.images / f"{layout.names[0]}.jpg"
    data = first.read_bytes()
    first.write_bytes(data[:20] + bytes(len(data) - 20))  # markers and entropy data wiped
    mask = layout.masks / f"{layout.names[1]}_mask.gif"
    mask.write_bytes(mask.read_bytes()[:40])
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="binary")
    with pytest.raises(DecodeError, match=rf"{layout.names[0]}\.jpg: cannot decode"):
        ds[0]
    with pytest.raises(DecodeError, match=rf"{layout.names[1]}_mask\.gif: cannot decode"):
        ds[1]


def test_mask_of_another_size_names_both_files(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=1)
    layouts.save_palette(layout.masks / "FudanPed00001_mask.png", np.zeros((20, 30), np.uint8))
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask")
    with pytest.raises(
        DataError, match=r"image .*FudanPed00001\.png is 32x24 .*mask .*FudanPed00001_mask\.png is 30x20"
    ):
        ds[0]


def test_values_beyond_num_classes_name_the_file_and_values(tmp_path: Path) -> None:
    layout = layouts.pascal_voc(tmp_path, n=2, extra_images=0)
    ds = SegmentationDataset(layout.images, layout.masks, num_classes=2)
    bad = sorted(set(np.unique(layout.masks_raw[0]).tolist()) - {0, 1, 255})
    with pytest.raises(MaskValueError, match=rf"2007_000032\.png: mask values {re.escape(str(bad))} are outside"):
        ds[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": "panoptic"}, ValueError, r"`target` must be one of"),
        ({"channels": 2}, ValueError, r"`channels` must be 1 \(gray\), 3 \(RGB\) or 4"),
        ({"threshold": 0.5}, ValueError, r"`threshold` applies to `target='binary'` only"),
        ({"instance_labels": {1: 1}}, ValueError, r"`instance_labels` applies to `target='instance'` only"),
        ({"transforms": 3}, TypeError, r"`transforms` must be callable"),
        ({"color_map": {(1, 2): 0}}, ValueError, r"`color_map` keys must be \(r, g, b\)"),
        ({"color_map": {(1, 2, 3): 0}, "value_map": {1: 0}}, ValueError, r"either `color_map`.*or `value_map`"),
        ({"value_map": {-1: 0}}, ValueError, r"`value_map` keys must be raw mask values"),
        ({"num_classes": 0}, ValueError, r"`num_classes` must be a positive integer"),
        ({"ignore_index": -1}, ValueError, r"`ignore_index` must be an integer >= 0"),
        ({"target": "instance", "instance_labels": {1: 5}, "num_classes": 3}, ValueError, r"class 5, but"),
    ],
)
def test_argument_errors(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    layout = layouts.penn_fudan(tmp_path, n=1)
    with pytest.raises(error, match=match):
        SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", **kwargs)


# ---------------------------------------------------------------- lossy (JPEG) masks


def _blocks(k: int, high: int) -> np.ndarray:
    """A 32x32 mask of two rectangles of value ``high`` on 0, different for each ``k``."""
    mask = np.zeros((32, 32), np.uint8)
    mask[4 + k : 20 + k, 6:26] = high
    mask[22:30, 3 + k : 12 + k] = high
    return mask


def _folders_with_masks(root: Path, masks: list[np.ndarray], name: str = "a{k}.jpg", **save: object) -> Path:
    """images/a{k}.png and masks/<name> written from ``masks`` (``save`` options go to Pillow); returns root."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, mask in enumerate(masks):
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / f"a{k}.png")
        Image.fromarray(mask).save(root / "masks" / name.format(k=k), **save)
    return root


def _lossy_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "(lossy)" in str(w.message)]


def test_binary_jpeg_masks_are_thresholded_at_mid_range_with_one_warning(tmp_path: Path) -> None:
    sources = [_blocks(k, 255) for k in range(3)]
    root = _folders_with_masks(tmp_path, sources)
    noisy = np.array(Image.open(root / "masks" / "a0.jpg"))
    assert ((noisy > 0) != (sources[0] > 0)).sum() > 100  # "any non-zero" would be wrong around every edge
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = SegmentationDataset(root / "images", root / "masks", target="binary")
        targets = [ds[k][1] for k in range(3)] + [ds[0][1]]
        copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker gets: it does not warn again
        copy[1]
    (message,) = _lossy_warnings(caught)
    assert re.search(
        r"3 of 3 masks are JPEG files \(lossy\): compression noise .* `target='binary'` takes values above "
        r"mid-range \(> 127 for 8-bit\) as foreground .*pass `threshold=`.*re-save the masks as PNG",
        message,
    )
    for target, source in zip(targets, [*sources, sources[0]], strict=True):
        np.testing.assert_array_equal(target.numpy(), (source > 0).astype(np.int64))


def test_jpeg_content_under_another_name_is_found_by_content(tmp_path: Path) -> None:
    source = _blocks(0, 255)
    root = _folders_with_masks(tmp_path, [source, source], name="a{k}.png", format="JPEG")
    ds = SegmentationDataset(root / "images", root / "masks", target="binary")
    with pytest.warns(UserWarning, match=r"masks such as .*a0\.png are JPEG files \(lossy\)") as caught:
        targets = [ds[0][1], ds[1][1]]
    assert len(_lossy_warnings(caught.list)) == 1
    for target in targets:
        np.testing.assert_array_equal(target.numpy(), (source > 0).astype(np.int64))


def test_an_explicit_threshold_wins_and_lossless_masks_keep_any_non_zero(tmp_path: Path) -> None:
    jpeg = _folders_with_masks(tmp_path / "jpeg", [_blocks(0, 255)])
    noisy = np.array(Image.open(jpeg / "masks" / "a0.jpg"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = SegmentationDataset(jpeg / "images", jpeg / "masks", target="binary", threshold=10)
        np.testing.assert_array_equal(ds[0][1].numpy(), (noisy > 10).astype(np.int64))
        ones = _folders_with_masks(tmp_path / "png", [_blocks(0, 1), _blocks(1, 255)], name="a{k}.png")
        ds = SegmentationDataset(ones / "images", ones / "masks", target="binary")
        np.testing.assert_array_equal(ds[0][1].numpy(), _blocks(0, 1).astype(np.int64))  # 0/1 masks: any non-zero
        np.testing.assert_array_equal(ds[1][1].numpy(), _blocks(1, 1).astype(np.int64))
    assert _lossy_warnings(caught) == []


def test_class_id_masks_saved_as_jpeg_say_the_file_is_lossy(tmp_path: Path) -> None:
    classes = _blocks(0, 2)
    classes[22:30, 3:12] = 1
    root = _folders_with_masks(tmp_path, [classes], quality=95)
    assert np.array(Image.open(root / "masks" / "a0.jpg")).max() > 2  # compression noise beyond the classes
    lossy = r"the file is a lossy JPEG: .*class-id masks must be saved losslessly \(re-save the masks as PNG\)"
    with pytest.warns(UserWarning, match=r"1 of 1 masks are JPEG files \(lossy\).*re-save the masks losslessly"):
        ds = SegmentationDataset(root / "images", root / "masks", num_classes=3)
    with pytest.raises(MaskValueError, match=rf"a0\.jpg: mask values \[3.*\] are outside `num_classes`=3 .*; {lossy}"):
        ds[0]
    with pytest.warns(UserWarning, match=r"\(lossy\)"):
        mapped = SegmentationDataset(root / "images", root / "masks", value_map={0: 0, 1: 1, 2: 2})
    with pytest.raises(MaskValueError, match=rf"a0\.jpg: mask values \[3.*\] are not keys of `value_map` .*; {lossy}"):
        mapped[0]


# ---------------------------------------------------------------- folders and names that are not what they seem


def _symlink(target: str, link: Path) -> None:
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError) as err:  # e.g. Windows without the privilege
        pytest.skip(f"cannot create symbolic links here: {err}")


@pytest.mark.parametrize("recursive", [False, True])
def test_an_image_link_that_loops_says_so(tmp_path: Path, recursive: bool) -> None:
    root = _folders_with_masks(tmp_path, [_blocks(0, 1)], name="a{k}.png")
    _symlink("b.png", root / "images" / "b.png")  # a link to itself
    with pytest.raises(DataError, match=r"b\.png is a symbolic link that loops .*point it at the real image") as err:
        SegmentationDataset(root / "images", root / "masks", recursive=recursive)
    assert type(err.value) is DataError


@pytest.mark.parametrize("recursive", [False, True])
def test_an_image_link_that_dangles_says_so(tmp_path: Path, recursive: bool) -> None:
    root = _folders_with_masks(tmp_path, [_blocks(0, 1), _blocks(1, 1)], name="a{k}.png")
    (root / "images" / "a1.png").unlink()
    _symlink(str(tmp_path / "gone" / "a1.png"), root / "images" / "a1.png")
    with pytest.raises(
        DataError, match=r"a1\.png is a broken symbolic link: its target .*gone.a1\.png does not exist; point it at"
    ) as err:
        SegmentationDataset(root / "images", root / "masks", recursive=recursive, strict=False)
    assert type(err.value) is DataError  # not "mask has no image"


def _unreadable(folder: Path) -> None:
    """Remove every permission of ``folder``; skip when this process can read it anyway (root, or no POSIX modes)."""
    if os.name != "posix":
        pytest.skip("folder permissions are POSIX modes")
    folder.chmod(0)
    try:
        os.listdir(folder)
    except PermissionError:
        return
    folder.chmod(0o755)
    who = "root (with CAP_DAC_OVERRIDE) reads" if os.geteuid() == 0 else "this file system lets this user read"
    pytest.skip(f"{who} any folder: the permission is not enforced")


def test_an_unreadable_masks_folder_is_named(tmp_path: Path) -> None:
    root = _folders_with_masks(tmp_path, [_blocks(0, 1)], name="a{k}.png")
    _unreadable(root / "masks")
    try:
        with pytest.raises(DataError, match=r"`masks` folder .*masks cannot be read \(permission denied\); make it"):
            SegmentationDataset(root / "images", root / "masks")
    finally:
        (root / "masks").chmod(0o755)


def deny(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``os.scandir(folder)`` fail as an unreadable folder does (also when running as root)."""
    scandir = os.scandir

    def denied(path: os.PathLike[str] | str = ".") -> object:
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)


@pytest.mark.parametrize("recursive", [False, True])
def test_a_folder_that_cannot_be_listed_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recursive: bool
) -> None:
    root = _folders_with_masks(tmp_path, [_blocks(0, 1)], name="a{k}.png")
    (root / "masks" / "sub").mkdir()
    deny(monkeypatch, root / "masks" / "sub" if recursive else root / "masks")
    with pytest.raises(DataError, match=r"`masks` folder .*masks(.sub)? cannot be read \(permission denied\)"):
        SegmentationDataset(root / "images", root / "masks", recursive=recursive)


def test_names_that_differ_only_in_unicode_normalisation_pair(tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    root = _folders_with_masks(tmp_path, [_blocks(0, 1)], name="a{k}.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / f"{nfc}.png")
    Image.fromarray(_blocks(1, 3)).save(root / "masks" / f"{nfd}_mask.png")
    (root / "masks" / "a0.png").rename(root / "masks" / "a0_mask.png")
    if f"{nfd}_mask.png" not in os.listdir(root / "masks"):
        pytest.skip("this file system normalises names itself")
    ds = SegmentationDataset(root / "images", root / "masks", mask_suffix="_mask")
    assert [(p.name, m.name) for p, m in ds.samples] == [("a0.png", "a0_mask.png"), (f"{nfc}.png", f"{nfd}_mask.png")]
    np.testing.assert_array_equal(ds[1][1].numpy(), _blocks(1, 3))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / f"{nfd}.png")  # both spellings
    with pytest.raises(PairingError, match=r"share a stem.*café\.png.*differ only in their Unicode normal form"):
        SegmentationDataset(root / "images", root / "masks", mask_suffix="_mask")


# ---------------------------------------------------------------- seeding (the mechanism: tests/test_engine_loaders.py)


def test_the_seed_argument_is_deprecated_and_draws_stay_global(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=2)
    with pytest.warns(DeprecationWarning, match=r"`SegmentationDataset\(seed=...\)` is deprecated and has no effect"):
        ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", transforms=RandomJoint(), seed=3)
    torch.manual_seed(0)
    random.seed(0)
    a = ds[0]
    torch.manual_seed(0)
    random.seed(0)
    b = ds[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the draws come from the global RNGs


class RandomJoint:
    """A random joint transform: crop and flip image and mask together, plus a draw from Python's random."""

    def __init__(self) -> None:
        self.geometry = v2.Compose([v2.RandomCrop((16, 16)), v2.RandomHorizontalFlip()])

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.geometry(image, mask)
        return image, mask + 10 * random.randint(0, 1000)  # the extra draw shows Python's random is seeded too


def test_sample_rng_restores_state_and_seeds_per_sample() -> None:
    torch.manual_seed(5)
    outer = torch.get_rng_state()
    with sample_rng(1, 2, 3):
        a = (torch.rand(2), random.random(), np.random.rand())
    with sample_rng(1, 2, 3):
        b = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert torch.equal(torch.get_rng_state(), outer)
    seeds = {sample_seed(1, epoch, index) for epoch in range(10) for index in range(100)}
    assert len(seeds) == 1000


class EpochAware(torch.utils.data.Dataset):
    epoch = -1

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return i

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def test_set_epoch_reaches_datasets_inside_wrappers_and_samplers() -> None:
    ds_a, ds_b = EpochAware(), EpochAware()

    class EpochSampler(torch.utils.data.SequentialSampler):
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    combined = ConcatDataset([Subset(ds_a, [0, 1]), ds_b])
    sampler = EpochSampler(combined)
    set_epoch(DataLoader(combined, sampler=sampler), 4)
    assert ds_a.epoch == 4 and ds_b.epoch == 4 and sampler.epoch == 4
    set_epoch(ds_a, 5)
    assert ds_a.epoch == 5
    with pytest.raises(ValueError, match=r"`epoch` must be an integer >= 0, got -1"):
        set_epoch(ds_a, -1)
    with pytest.raises(ValueError, match=r"`epoch` must be an integer >= 0, got 1.5"):
        set_epoch(ds_a, 1.5)  # type: ignore[arg-type]


def test_public_names_of_trainkit_data() -> None:
    import trainkit.data as data

    for name in ("SegmentationDataset", "read_class_dict", "collate", "collate_instances", "check", "CheckReport"):
        assert name in data.__all__ and callable(getattr(data, name))
    assert data.set_epoch is set_epoch and data.sample_rng is sample_rng and data.PairingError is PairingError
    assert callable(data.make_shapes) and callable(data.transforms.train_preset)


def test_getitem_runs_with_one_intra_op_thread_and_restores_the_setting(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=1)
    seen = []

    def spy(image, target):
        seen.append(torch.get_num_threads())
        return image, target

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", transforms=spy)[0]
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
