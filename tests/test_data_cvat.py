"""CVAT's "Segmentation mask 1.1" export: labelmap.txt read as a colour map, masks of those colours as class ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_layouts import random_image, rectangles
from trainkit.data import SegmentationDataset, check, read_class_dict
from trainkit.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# As CVAT writes it: a comment header, then label:color_rgb:parts:actions (parts and actions often empty).
LABELMAP = """# label:color_rgb:parts:actions
background:0,0,0::
car:250,50,83:wheel,door:
person:51,221,255::
road marking:131,224,112::
"""
COLOURS = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255], [131, 224, 112]], dtype=np.uint8)


def test_labelmap_is_read_as_a_colour_map(tmp_path: Path) -> None:
    path = tmp_path / "labelmap.txt"
    path.write_text(LABELMAP)
    color_map, names = read_class_dict(path)
    assert names == ["background", "car", "person", "road marking"]
    assert color_map == {(0, 0, 0): 0, (250, 50, 83): 1, (51, 221, 255): 2, (131, 224, 112): 3}
    assert read_class_dict(path, ignore="road marking").color_map[(131, 224, 112)] == 255


def test_a_cvat_export_trains_as_class_ids(tmp_path: Path) -> None:
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "labelmap.txt").write_text(LABELMAP)
    rng = np.random.default_rng(0)
    ids = []
    for k in range(2):
        Image.fromarray(random_image(rng)).save(tmp_path / "JPEGImages" / f"frame_{k:06d}.jpg")
        ids.append(rectangles(rng, 4, [1, 2, 3]))
        Image.fromarray(COLOURS[ids[-1]]).save(tmp_path / "SegmentationClass" / f"frame_{k:06d}.png")
    color_map, names = read_class_dict(tmp_path / "labelmap.txt")
    ds = SegmentationDataset(
        tmp_path / "JPEGImages", tmp_path / "SegmentationClass", color_map=color_map, num_classes=len(names)
    )
    for k in range(2):
        np.testing.assert_array_equal(ds[k][1].numpy(), ids[k])
    report = check(tmp_path / "JPEGImages", tmp_path / "SegmentationClass", color_map=color_map, num_classes=4)
    assert report.ok, report.errors


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("# label:color_rgb:parts:actions\ncar:250,50::\n", r"line 2: expected `label:r,g,b:parts:actions` \(CVAT's"),
        ("# label:color_rgb:parts:actions\ncar:red::\n", r"line 2: expected `label:r,g,b:parts:actions`"),
        ("# label:color_rgb:parts:actions\ncar:1,2,3::\nbus:1,2,3::\n", r"line 3: 'bus' repeats an earlier colour"),
        ("# label:color_rgb:parts:actions\ncar:1,2,300::\n", r"line 2: 'car' has a colour outside 0\.\.255"),
        (
            "label;r;g;b\n",
            r"the header must name columns name,r,g,b .* or be `# label:color_rgb:parts:actions` for CVAT",
        ),
    ],
)
def test_labelmap_errors_name_the_line_and_the_fix(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "labelmap.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        read_class_dict(tmp_path / "labelmap.txt")
