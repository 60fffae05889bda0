"""check(): every problem of a dataset in one report, the class histogram, and a readable summary."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_layouts as layouts
from trainkit.data.check import CheckReport, check
from trainkit.data.dataset import read_class_dict

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def test_clean_dataset_is_ok_with_an_exact_histogram(tmp_path: Path) -> None:
    layout = layouts.pascal_voc(tmp_path, n=2, extra_images=0)
    report = check(layout.images, layout.masks, num_classes=21)
    values, counts = np.unique(np.stack(layout.masks_raw), return_counts=True)
    assert report.ok and report.errors == []
    assert report.pairs == report.checked == 2
    assert report.class_histogram == dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert report.channel_counts == {3: 2} and report.image_sizes == {(32, 24): 2}
    text = str(report)
    assert "pairs: 2" in text and "255 ignore:" in text and "result: OK" in text
    assert "classes with no pixel" in text  # only a few of VOC's 21 classes appear in two masks


def bad_colour_dataset(root: Path) -> tuple[layouts.Layout, dict[str, Path]]:
    """A CamVid layout with one of each problem; returns the files that must be named."""
    layout = layouts.camvid(root, n=8)
    images, masks = layout.images, layout.masks
    names = layout.names
    bad = {
        "truncated": images / f"{names[0]}.png",
        "corrupt": images / f"{names[1]}.jpg",
        "size": masks / f"{names[2]}_L.png",
        "unknown_colour": masks / f"{names[3]}_L.png",
        "beyond_classes": masks / f"{names[4]}_L.png",
        "unpaired_image": images / "0001TP_999999.png",
        "unpaired_mask": masks / "0001TP_888888_L.png",
        "duplicate": images / f"{names[6]}.png",
        "gray": images / f"{names[7]}.png",
    }
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    (images / f"{names[1]}.png").unlink()
    Image.fromarray(layout.images_hwc[1]).save(bad["corrupt"])
    jpeg = bad["corrupt"].read_bytes()
    bad["corrupt"].write_bytes(jpeg[:20] + bytes(len(jpeg) - 20))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(bad["size"])
    colours = np.array(Image.open(bad["unknown_colour"]))
    colours[0, 0] = (1, 2, 3)
    Image.fromarray(colours).save(bad["unknown_colour"])
    colours = np.array(Image.open(bad["beyond_classes"]))
    colours[0, :2] = (9, 9, 9)  # mapped to class 7 below, with num_classes=4
    Image.fromarray(colours).save(bad["beyond_classes"])
    Image.fromarray(layout.images_hwc[0]).save(bad["unpaired_image"])
    shutil.copy(masks / f"{names[0]}_L.png", bad["unpaired_mask"])
    shutil.copy(images / f"{names[5]}.png", bad["duplicate"])
    Image.fromarray(layout.images_hwc[7][:, :, 0]).save(bad["gray"])
    return layout, bad


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    layout, bad = bad_colour_dataset(tmp_path)
    color_map = {**read_class_dict(layout.class_dict).color_map, (9, 9, 9): 7}
    report = check(layout.images, layout.masks, mask_suffix="_L", color_map=color_map, num_classes=4)
    assert not report.ok
    errors = "\n".join(report.errors)
    assert f"1 image in {layout.images} has no mask: 0001TP_999999.png" in errors
    assert f"1 mask in {layout.masks} has no image: 0001TP_888888_L.png" in errors
    assert f"{bad['truncated']}: cannot decode" in errors
    assert f"{bad['corrupt']}: cannot decode" in errors
    assert f"mask {bad['size']} is 10x10" in errors
    assert f"{bad['unknown_colour']}: colours [(1, 2, 3)] are not in `color_map`" in errors
    assert f"{bad['beyond_classes']}: mask values [7] are outside `num_classes`=4" in errors
    assert len(report.errors) == 6  # pairing is one entry
    warnings = "\n".join(report.warnings)
    assert "identical images" in warnings and str(bad["duplicate"]) in warnings
    assert "converted to `channels`=3: 1 stored as L" in warnings
    assert report.duplicates == [[layout.images / f"{layout.names[5]}.png", bad["duplicate"]]]
    assert report.class_histogram[7] == 2  # the two bad pixels are counted, so the histogram shows them
    text = str(report)
    assert "ERRORS (6):" in text and "WARNINGS (2):" in text and "result: FAILED (6 errors, 2 warnings)" in text


def test_instance_ids_and_semantic_errors_without_a_colour_map(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=3)
    report = check(layout.images, layout.masks, mask_suffix="_mask", num_classes=3)
    assert report.errors == [
        f"{layout.masks / 'FudanPed00003_mask.png'}: mask values [3] are outside `num_classes`=3 "
        "(valid: 0..2, or `ignore_index`=255); fix `num_classes`, or remap the values with "
        "`value_map`/`color_map`"
    ]
    assert report.class_histogram[3] == int((layout.masks_raw[2] == 3).sum())


def test_missing_and_empty_folders_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = check(tmp_path / "empty", tmp_path / "missing")
    assert not report.ok and len(report.errors) == 2
    assert "`images` folder" in report.errors[0] and "contains no image files" in report.errors[0]
    assert "`masks` folder" in report.errors[1] and "does not exist" in report.errors[1]
    assert "result: FAILED (2 errors" in str(report)


def test_max_files_and_jpeg_mask_warning(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=3)
    mask = layout.masks / "FudanPed00001_mask.png"
    Image.open(mask).convert("L").save(layout.masks / "FudanPed00001_mask.jpg")
    mask.unlink()
    report = check(layout.images, layout.masks, mask_suffix="_mask", max_files=1)
    assert report.pairs == 3 and report.checked == 1 and "(1 checked)" in str(report)
    assert any("1 masks are JPEG files" in w for w in report.warnings)


def test_jpeg_class_masks_are_errors_that_say_the_file_is_lossy(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=2)
    mask = layout.masks / "FudanPed00002_mask.png"
    ids = np.zeros((24, 32), np.uint8)
    ids[2:14, 4:20] = 2
    ids[16:22, 3:12] = 1
    Image.fromarray(ids).save(mask.with_suffix(".jpg"), quality=95)
    mask.unlink()
    report = check(layout.images, layout.masks, mask_suffix="_mask", num_classes=3)
    assert [e for e in report.errors if "FudanPed00002_mask.jpg" in e] == [
        f"{mask.with_suffix('.jpg')}: mask values [3] are outside `num_classes`=3 (valid: 0..2, or "
        "`ignore_index`=255); the file is a lossy JPEG: its compression changes values near edges, and class-id "
        "masks must be saved losslessly (re-save the masks as PNG)"
    ]
    assert any("1 masks are JPEG files" in w and "losslessly (PNG)" in w for w in report.warnings)


opened: list[str] = []
recording: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if recording and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed: this one records only while `recording` is set


def test_each_file_is_read_once(tmp_path: Path) -> None:
    """Hash, pixel format and decode share one read of each image (GIF and BMP go through Pillow)."""
    layout = layouts.penn_fudan(tmp_path, n=3)
    for name, fmt in (("FudanPed00002", "GIF"), ("FudanPed00003", "BMP")):
        png = layout.images / f"{name}.png"
        Image.open(png).save(png.with_suffix(f".{fmt.lower()}"), format=fmt)
        png.unlink()
    opened.clear()
    recording.append(True)
    try:
        report = check(layout.images, layout.masks, mask_suffix="_mask")
    finally:
        recording.clear()
    assert report.ok and report.checked == 3 and report.pixel_formats == {"RGB": 2, "P": 1}
    files = [*layout.images.iterdir(), *layout.masks.iterdir()]
    assert sorted(p for p in opened if Path(p).parent in (layout.images, layout.masks)) == sorted(map(str, files))


def test_an_unreadable_masks_folder_is_an_error_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = layouts.penn_fudan(tmp_path, n=1)
    scandir = os.scandir

    def denied(path: os.PathLike[str] | str = ".") -> object:
        if Path(path) == layout.masks:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    report = check(layout.images, layout.masks, mask_suffix="_mask")
    assert report.errors == [
        f"`masks` folder {layout.masks} cannot be read (permission denied); make it readable by the user running "
        f"trainkit (e.g. `chmod -R a+rX {layout.masks}`)"
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"channels": 5}, r"`channels` must be"), ({"max_files": 0}, r"`max_files` must be a positive integer")],
)
def test_argument_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check(tmp_path, tmp_path, **kwargs)


def test_report_lists_at_most_twenty_lines_per_section() -> None:
    report = CheckReport(Path("i"), Path("m"), errors=[f"e{k}" for k in range(25)])
    text = str(report)
    assert "  - e19" in text and "  - e20" not in text and "... and 5 more (see `report.errors`)" in text


def test_class_frequencies_and_suggested_weights(tmp_path: Path) -> None:
    layout = layouts.pascal_voc(tmp_path, n=2, extra_images=0)
    report = check(layout.images, layout.masks, num_classes=21)
    stacked = np.stack(layout.masks_raw)
    counts = {int(c): int((stacked == c).sum()) for c in np.unique(stacked) if c != 255}
    total = sum(counts.values())
    assert report.class_frequencies == pytest.approx({c: n / total for c, n in counts.items()})
    # inverse_sqrt by hand: 1 / sqrt(frequency) for the classes with pixels, scaled to mean 1 over them; others 0
    expected = np.zeros(21)
    present = list(counts)
    expected[present] = [1 / np.sqrt(counts[c] / total) for c in present]
    expected[present] /= expected[present].mean()
    weights = report.suggested_weights()
    assert weights is not None
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-5)
    text = str(report)
    cells = ", ".join(f"{c}: {100 * n / total:.1f}%" for c, n in counts.items())
    assert f"  class frequencies (ignore excluded): {cells}\n" in text
    assert "  suggested class weights (inverse_sqrt): [" + ", ".join(f"{w:.2f}" for w in expected) + "]" in text
    assert report.pos_weight is None  # binary only
