"""CocoDataset and check_coco on small COCO files written here (polygons, both RLE forms, crowds, gaps in ids),
compared pixel for pixel with masks painted independently in NumPy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from data_layouts import random_image
from trainkit.data import CocoDataset, check_coco, collate, collate_instances
from trainkit.data.transforms import train_preset
from trainkit.errors import DataError, PairingError

pytestmark = [
    pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

H, W = 24, 32
# Listed out of order, with COCO-like gaps: classes follow ascending ids: cat=1, dog=2, person=3.
CATEGORIES = [{"id": 90, "name": "person"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}]


def rectangle(x1: int, y1: int, x2: int, y2: int) -> list[float]:
    """A polygon whose corners lie on pixel edges: it covers rows y1..y2-1 and columns x1..x2-1 exactly."""
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def painted(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE written by hand: run lengths over column-major pixels, background first."""
    counts, current, run = [], 0, 0
    for value in mask.T.reshape(-1).tolist():
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), dtype=bool)
    mask[rng.integers(2, 8) : rng.integers(14, 22), rng.integers(2, 10) : rng.integers(20, 30)] = True
    mask[rng.integers(0, H, 12), rng.integers(0, W, 12)] = True  # stray pixels: RLE keeps them exactly
    return mask


class Written:
    """A COCO dataset written to disk, with the per-annotation masks and the painted reference."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"
        (self.images / "sub").mkdir(parents=True)
        self.file = root / "instances.json"
        self.arrays: dict[int, np.ndarray] = {}
        cat = painted(2, 3, 14, 15)
        dog = painted(10, 8, 20, 20) | painted(24, 2, 30, 6)  # two polygons: one object in two parts
        person = blob(1)
        crowd = blob(2)
        self.annotations = [  # (image id, category id, segmentation, iscrowd, mask), in file order
            (5, 3, [rectangle(2, 3, 14, 15)], 0, cat),
            (5, 17, [rectangle(10, 8, 20, 20), rectangle(24, 2, 30, 6)], 0, dog),  # on top of the cat
            (42, 90, compressed_rle(person), 0, person),
            (42, 90, uncompressed_rle(crowd), 1, crowd),
            (42, 3, [rectangle(0, 0, 6, 5)], 0, painted(0, 0, 6, 5)),
        ]
        images = [(5, "a.png"), (9, "sub/b.png"), (42, "c.jpg")]  # 9 has no annotation: all background
        rng = np.random.default_rng(0)
        for image_id, name in images:
            self.arrays[image_id] = random_image(rng)
            Image.fromarray(self.arrays[image_id]).save(self.images / name, quality=95)
        self.coco = {
            "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in images],
            "annotations": [
                {"id": 100 + k, "image_id": i, "category_id": c, "segmentation": s, "iscrowd": crowd, "area": 1.0}
                for k, (i, c, s, crowd, _) in enumerate(self.annotations)
            ],
            "categories": CATEGORIES,
        }
        self.file.write_text(json.dumps(self.coco))

    def semantic(self, image_id: int, classes: dict[int, int]) -> np.ndarray:
        """The expected class ids: annotations painted in file order, later on top."""
        ids = np.zeros((H, W), dtype=np.int64)
        for i, category, _, _, mask in self.annotations:
            if i == image_id and category in classes:
                ids[mask] = classes[category]
        return ids


@pytest.fixture
def written(tmp_path: Path) -> Written:
    return Written(tmp_path)


CLASSES = {3: 1, 17: 2, 90: 3}


def test_semantic_targets_paint_annotations_in_file_order(written: Written) -> None:
    ds = CocoDataset(written.file, written.images)
    assert ds.class_names == ["background", "cat", "dog", "person"] and ds.num_classes == 4
    assert ds.category_to_class == CLASSES
    assert [s.image_id for s in ds.samples] == [5, 9, 42] and len(ds) == 3
    for index, image_id in enumerate([5, 9, 42]):
        image, mask = ds[index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), written.semantic(image_id, CLASSES))
    np.testing.assert_array_equal(ds[0][0].permute(1, 2, 0).numpy(), written.arrays[5])
    assert ds[1][1].unique().tolist() == [0]  # no annotation: background
    overlap = painted(2, 3, 14, 15) & painted(10, 8, 20, 20)
    assert overlap.any() and (ds[0][1].numpy()[overlap] == 2).all()  # the dog, drawn later, is on top


def test_a_dict_and_a_file_give_the_same_dataset(written: Written) -> None:
    from_dict = CocoDataset(written.coco, written.images)
    assert from_dict.source == "the annotation dict"
    np.testing.assert_array_equal(from_dict[2][1].numpy(), CocoDataset(written.file, written.images)[2][1].numpy())


def test_binary_targets_mark_every_chosen_category(written: Written) -> None:
    ds = CocoDataset(written.file, written.images, target="binary")
    assert ds.num_classes == 2
    for index, image_id in enumerate([5, 9, 42]):
        np.testing.assert_array_equal(ds[index][1].numpy(), (written.semantic(image_id, CLASSES) > 0).astype(int))


def test_instance_targets_keep_each_annotation_and_crowds(written: Written) -> None:
    ds = CocoDataset(written.file, written.images, target="instance")
    _, target = ds[2]
    expected = [(m, CLASSES[c], crowd) for i, c, _, crowd, m in written.annotations if i == 42]
    assert target["image_id"].item() == 42  # COCO's id, for evaluation with pycocotools
    assert target["labels"].tolist() == [label for _, label, _ in expected]
    assert target["iscrowd"].tolist() == [0, 1, 0]
    assert isinstance(target["masks"], tv_tensors.Mask) and target["masks"].dtype == torch.bool
    for k, (mask, _, _) in enumerate(expected):
        np.testing.assert_array_equal(target["masks"][k].numpy(), mask)  # own masks: overlaps are kept
        rows, cols = np.nonzero(mask)
        assert target["boxes"][k].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].dtype == torch.float32
    empty = ds[1][1]
    assert empty["masks"].shape == (0, H, W) and empty["boxes"].shape == (0, 4) and empty["labels"].tolist() == []
    images, targets = collate_instances([ds[0], ds[1], ds[2]])
    assert len(images) == 3 and [len(t["labels"]) for t in targets] == [2, 0, 3]


def test_transforms_and_collate_work_as_for_folders(written: Written) -> None:
    torch.manual_seed(0)
    ds = CocoDataset(written.file, written.images, transforms=train_preset(16, normalize=False))
    images, masks = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    assert masks.shape == (3, 16, 16) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 255}  # 255: the preset's padding
    instances = CocoDataset(written.file, written.images, target="instance", transforms=train_preset(16))
    _, target = instances[2]
    assert target["masks"].shape[-2:] == (16, 16) and len(target["boxes"]) == len(target["labels"])


def test_categories_choose_and_order_the_classes_and_ignore_draws_ignore_index(written: Written) -> None:
    ds = CocoDataset(written.file, written.images, categories=["person", 3])
    assert ds.class_names == ["background", "person", "cat"] and ds.category_to_class == {90: 1, 3: 2}
    np.testing.assert_array_equal(ds[0][1].numpy(), written.semantic(5, {90: 1, 3: 2}))  # the dog is not drawn
    ignored = CocoDataset(written.file, written.images, ignore="dog")
    assert ignored.class_names == ["background", "cat", "person"]
    np.testing.assert_array_equal(ignored[0][1].numpy(), written.semantic(5, {3: 1, 17: 255, 90: 2}))
    binary = CocoDataset(written.file, written.images, ignore="dog", target="binary")
    assert binary[0][1].unique().tolist() == [0, 1, 255]
    assert len(CocoDataset(written.file, written.images, ignore="cat", target="instance")[0][1]["labels"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"categories": ["horse"]}, r"`categories` entry 'horse' is not a category: .*\(3, 'cat'\)"),
        ({"categories": ["cat", 3]}, r"`categories` entry 3 is given twice"),
        ({"ignore": "void"}, r"`ignore` names \['void'\] that are not categories"),
        ({"target": "panoptic"}, r"`target` must be one of \('semantic', 'binary', 'instance'\)"),
        ({"categories": "cat"}, r"`categories` must be a list of category names or ids"),
        ({"ignore_index": 2}, r"3 categories take class ids 1\.\.3, which reaches `ignore_index`=2"),
    ],
)
def test_argument_errors(written: Written, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CocoDataset(written.file, written.images, **kwargs)


def _broken(written: Written, change: Any) -> Path:
    coco = json.loads(written.file.read_text())
    change(coco)
    path = written.root / "broken.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.pop("annotations"), r"has no 'annotations' list; a COCO annotation file holds"),
        (lambda c: c["annotations"][0].update(category_id=4), r"annotation 100 has category id 4, which is not in"),
        (lambda c: c["annotations"][1].update(image_id=7), r"annotation 101 refers to image id 7, which is not in"),
        (lambda c: c["annotations"][0].pop("segmentation"), r"annotation 100 has no \"segmentation\" \(a detection"),
        (
            lambda c: c["annotations"][2]["segmentation"].update(size=[W, H]),
            r"annotation 102: its RLE \"size\" \[32, 24\]",
        ),
        (lambda c: c["annotations"][3]["segmentation"]["counts"].append(5), r"counts add up to 773 pixels, the image"),
        (lambda c: c["annotations"][0].update(segmentation="x"), r"a segmentation is a list of polygons or an RLE"),
        (lambda c: c["images"][0].pop("height"), r"images\[0\] must have an integer \"id\", a \"file_name\""),
        (lambda c: c["images"].append(c["images"][0]), r"image id 5 is listed twice"),
        (lambda c: c["categories"].append({"id": 3, "name": "x"}), r"category id 3 is listed twice \('cat', 'x'\)"),
    ],
)
def test_malformed_files_name_the_entry_and_the_fix(written: Written, change: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        CocoDataset(_broken(written, change), written.images)


def test_unreadable_json_and_missing_images(written: Written) -> None:
    truncated = written.root / "truncated.json"
    truncated.write_text(written.file.read_text()[:50])
    with pytest.raises(DataError, match=r"truncated\.json is not valid JSON at line 1, column \d+; the export is"):
        CocoDataset(truncated, written.images)
    (written.images / "sub" / "b.png").unlink()
    with pytest.raises(PairingError, match=r"1 images of .*instances\.json are not in .*images: sub/b\.png; check"):
        CocoDataset(written.file, written.images)
    with pytest.warns(UserWarning, match=r"dropping images \(`strict=False`\): 1 images .* sub/b\.png"):
        ds = CocoDataset(written.file, written.images, strict=False)
    assert [s.image_id for s in ds.samples] == [5, 42] and [m.image_id for m in ds.missing] == [9]


def test_polygons_without_area_are_skipped_with_one_warning(written: Written) -> None:
    def degenerate(coco: dict[str, Any]) -> None:
        coco["annotations"][0]["segmentation"] = [[1, 1, 5, 5]]  # 2 points (pycocotools would read a box)
        coco["annotations"][1]["segmentation"].append([1, 2, 3])  # an odd part next to valid ones

    with pytest.warns(UserWarning, match=r"skipped 1 annotations whose polygons have fewer than 3 points .*: 100;"):
        ds = CocoDataset(_broken(written, degenerate), written.images)
    np.testing.assert_array_equal(ds[0][1].numpy(), written.semantic(5, {17: 2}))


def test_a_segmentation_pycocotools_cannot_decode_names_the_annotation(written: Written) -> None:
    path = _broken(written, lambda c: c["annotations"][2]["segmentation"].update(counts="z" * 40))
    with pytest.raises(DataError, match=r"annotation 102 of .*c\.jpg: pycocotools cannot decode its segmentation"):
        CocoDataset(path, written.images)[2]


@pytest.mark.parametrize(
    ("polygon", "match"),
    [
        ([1, 2, "x", 4, 5, 6], r"annotation 100: polygon coordinates must be numbers, got \[1, 2, 'x'"),
        ([1, 2, None, 4, 5, 6], r"annotation 100: polygon coordinates must be numbers"),
        ([1, 2, float("nan"), 4, 5, 6], r"annotation 100: a polygon has coordinates that are not finite or lie far"),
        ([1, 2, 1e9, 4, 5, 6], r"lie far outside the 32x24 image \(beyond 256\).*not fractions of it"),
    ],
)
def test_polygons_pycocotools_would_choke_on_are_refused(written: Written, polygon: list[Any], match: str) -> None:
    # pycocotools rasterises a NaN or 1e9 coordinate until the process is killed: refused before it is called
    coco = json.loads(written.file.read_text())
    coco["annotations"][0]["segmentation"] = [polygon]
    with pytest.raises(DataError, match=match):
        CocoDataset(coco, written.images)[0]


def test_an_image_of_another_size_than_its_entry(written: Written) -> None:
    Image.fromarray(random_image(np.random.default_rng(1), (H, W + 2))).save(written.images / "a.png")
    with pytest.raises(DataError, match=r"a\.png is 34x24 \(WxH\) but the size its annotations give \(image id 5 in"):
        CocoDataset(written.file, written.images)[0]


def test_missing_pycocotools_says_how_to_install_it(written: Written, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(
        ImportError, match=r"decoded by pycocotools, which is not installed: `pip install trainkit\[coco\]`"
    ):
        CocoDataset(written.file, written.images)


def test_check_coco_reports_the_histogram_frequencies_and_problems(written: Written) -> None:
    report = check_coco(written.file, written.images)
    expected = np.bincount(np.stack([written.semantic(i, CLASSES) for i in (5, 9, 42)]).reshape(-1))
    assert report.ok, report.errors
    assert report.class_histogram == {c: int(n) for c, n in enumerate(expected) if n}
    assert report.pairs == report.checked == 3 and report.num_classes == 4
    text = str(report)
    assert f"annotations={written.file}" in text and "suggested class weights (inverse_sqrt): [" in text
    binary = check_coco(written.file, written.images, target="binary")
    assert binary.class_histogram == {0: int(expected[0]), 1: int(expected[1:].sum())}
    assert binary.pos_weight == pytest.approx(expected[0] / expected[1:].sum(), rel=1e-5)

    (written.images / "sub" / "b.png").unlink()
    Image.fromarray(random_image(np.random.default_rng(1), (H, W + 2))).save(written.images / "a.png")
    broken = check_coco(written.file, written.images)
    errors = "\n".join(broken.errors)
    assert not broken.ok and "1 images of" in errors and "sub/b.png" in errors
    assert "size mismatch: image" in errors and "a.png is 34x24" in errors
    bad_json = written.root / "bad.json"
    bad_json.write_text("{")
    assert "is not valid JSON" in check_coco(bad_json, written.images).errors[0]
