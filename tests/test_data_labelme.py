"""labelme_to_coco on LabelMe JSON files written here (one per image, as LabelMe saves them), read by CocoDataset."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data_layouts import random_image
from trainkit.data import CocoDataset, labelme_to_coco
from trainkit.errors import DataError

pytestmark = [
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

H, W = 24, 32


def shape(label: str, points: list[list[float]], kind: str | None = "polygon", group: int | None = None) -> dict:
    return {"label": label, "points": points, "group_id": group, "description": "", "shape_type": kind, "flags": {}}


def box(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def png_base64(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")  # a bool array saves as a 1-bit PNG, as LabelMe's
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def save_page(folder: Path, name: str, image_path: str, shapes: list[dict], rng: np.random.Generator) -> None:
    image_file = folder / image_path.replace("\\", "/")
    image_file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_image(rng)).save(image_file)
    page = {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    (folder / f"{name}.json").write_text(json.dumps(page, indent=2))


CROP = np.array(
    [[0, 1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1, 0]],
    bool,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "labelme"
    root.mkdir()
    save_page(
        root,
        "img1",
        "img1.png",
        [
            shape("cat", [[14, 15], [2, 3]], "rectangle"),  # opposite corners, in any order
            shape("dog", [[10, 8], [20, 8], [20, 20], [10, 20]], None),  # old files: no shape_type means polygon
            shape("dog", [[24, 2], [30, 2], [30, 6], [24, 6]], "polygon", group=1),
            shape("dog", [[0, 18], [6, 18], [6, 24], [0, 24]], "polygon", group=1),  # one object, two parts
            shape("cat", [[1, 1], [9, 9]], "line"),
            shape("cat", [[5, 5]], "point"),
            shape("_background_", [[0, 0], [32, 0], [32, 24], [0, 24]]),
        ],
        rng,
    )
    mask_shape = shape("person", [[3, 4], [9, 8]], "mask")
    mask_shape["mask"] = png_base64(CROP)
    save_page(root, "img2", "img2.png", [shape("cat", [[16, 12], [22, 12]], "circle"), mask_shape], rng)
    save_page(root, "img10", "pics\\img10.png", [], rng)  # Windows separators; natural order: after img2
    return root


def test_conversion_gives_coco_that_cocodataset_draws_exactly(folder: Path) -> None:
    with pytest.warns(UserWarning, match=r"skipped shapes without area \(line: 1, point: 1\); lines and points"):
        coco = labelme_to_coco(folder)
    assert coco["categories"] == [
        {"id": k, "name": n, "supercategory": ""} for k, n in enumerate(["cat", "dog", "person"], 1)
    ]
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [
        (1, "img1.png"),
        (2, "img2.png"),
        (3, "pics/img10.png"),
    ]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2, 1, 3]
    assert len(coco["annotations"][2]["segmentation"]) == 2  # the grouped dog: one annotation, two polygons
    json.dumps(coco)  # plain JSON, for other COCO tools

    ds = CocoDataset(coco, folder)
    expected = np.zeros((H, W), dtype=np.int64)
    expected[box(2, 3, 14, 15)] = 1
    expected[box(10, 8, 20, 20) | box(24, 2, 30, 6) | box(0, 18, 6, 24)] = 2
    np.testing.assert_array_equal(ds[0][1].numpy(), expected)
    assert ds[2][1].unique().tolist() == [0]

    mask = ds[1][1].numpy()
    person = np.zeros((H, W), dtype=bool)
    person[4:9, 3:10] = CROP
    np.testing.assert_array_equal(mask == 3, person)  # the mask shape, placed at its first point, pixel for pixel
    rows, cols = np.mgrid[:H, :W]
    disc = (cols + 0.5 - 16) ** 2 + (rows + 0.5 - 12) ** 2 <= 36  # pixel centres within the radius
    drawn = (mask == 1) | ((mask == 3) & disc)  # the person is drawn after (on top of) the cat
    assert (drawn & disc).sum() / (drawn | disc).sum() > 0.9 and drawn[12, 16]

    instances = CocoDataset(coco, folder, target="instance")
    assert instances[0][1]["labels"].tolist() == [1, 2, 2]
    np.testing.assert_array_equal(instances[0][1]["masks"][2].numpy(), box(24, 2, 30, 6) | box(0, 18, 6, 24))


def test_labels_set_the_class_order_and_must_name_every_label(folder: Path) -> None:
    with pytest.warns(UserWarning):
        coco = labelme_to_coco(folder, labels=["_background_", "person", "dog", "cat"])  # LabelMe's labels.txt
    assert [c["name"] for c in coco["categories"]] == ["person", "dog", "cat"]
    with pytest.raises(
        DataError, match=r"labels \['dog', 'person'\] \(e\.g\. in .*img1\.json\) are not in `labels` \['cat'\]"
    ):
        labelme_to_coco(folder, labels=["cat"])


def test_box_and_area_for_other_coco_tools(folder: Path) -> None:
    with pytest.warns(UserWarning):
        annotations = labelme_to_coco(folder)["annotations"]
    assert annotations[0]["bbox"] == [2.0, 3.0, 12.0, 12.0] and annotations[0]["area"] == 144.0
    assert annotations[4]["area"] == float(CROP.sum()) and annotations[4]["bbox"] == [3.0, 4.0, 7.0, 5.0]


@pytest.mark.parametrize(
    ("page", "match"),
    [
        ({"images": []}, r"bad\.json is not a LabelMe file \(no \"shapes\" list\)"),
        ({"shapes": [], "imagePath": "a.png"}, r"\"imagePath\", \"imageHeight\" and \"imageWidth\" are missing"),
        (
            {
                "shapes": [shape("cat", [[1, 1], [3, 3]], "ellipse")],
                "imagePath": "a.png",
                "imageHeight": H,
                "imageWidth": W,
            },
            r"shapes\[0\] has shape_type 'ellipse'; LabelMe's area shapes are polygon, rectangle, circle and mask",
        ),
        (
            {"shapes": [shape("cat", [[1, 1]], "circle")], "imagePath": "a.png", "imageHeight": H, "imageWidth": W},
            r"shapes\[0\] is a circle with 1 point\(s\); it needs 2",
        ),
        (
            {
                "shapes": [{"label": "cat", "points": [[1, "a"]]}],
                "imagePath": "a.png",
                "imageHeight": H,
                "imageWidth": W,
            },
            r"shapes\[0\] needs a \"label\" and \"points\" \[\[x, y\], \.\.\.\]",
        ),
    ],
)
def test_malformed_files_are_named(tmp_path: Path, page: dict[str, Any], match: str) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(page))
    with pytest.raises(DataError, match=match):
        labelme_to_coco(tmp_path)


def test_an_empty_folder_and_a_missing_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holds no \.json files \(pass `recursive=True` for subfolders\)"):
        labelme_to_coco(tmp_path)
    with pytest.raises(DataError, match=r"LabelMe folder .*nope does not exist"):
        labelme_to_coco(tmp_path / "nope")
