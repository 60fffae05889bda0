"""Tests for trainkit.data.synthetic.make_shapes: determinism, layout, consistent masks and sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainkit.data.synthetic import SHAPE_CLASSES, make_shapes


def read_sample(root: Path, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    image = np.asarray(Image.open(root / "PNGImages" / f"{stem}.png"))
    instances = np.asarray(Image.open(root / "PedMasks" / f"{stem}_mask.png"))
    semantic = np.asarray(Image.open(root / "SemanticMasks" / f"{stem}_mask.png"))
    labels = {int(k): v for k, v in json.loads((root / "instances" / f"{stem}.json").read_text()).items()}
    return image, instances, semantic, labels


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_other_images(tmp_path) -> None:
    first = all_files(make_shapes(tmp_path / "a", n=6, size=32, seed=3))
    second = all_files(make_shapes(tmp_path / "b", n=6, size=32, seed=3))
    other = all_files(make_shapes(tmp_path / "c", n=6, size=32, seed=4))
    shorter = all_files(make_shapes(tmp_path / "d", n=2, size=32, seed=3))
    assert first == second
    assert first.keys() == other.keys()
    images = [name for name in first if name.startswith("PNGImages")]
    assert all(first[name] != other[name] for name in images)
    assert all(shorter[name] == first[name] for name in shorter if name != "classes.json")  # image i needs only i


def test_penn_fudan_layout_and_palette_masks(tmp_path) -> None:
    root = make_shapes(tmp_path / "shapes", n=3, size=(40, 56), seed=0)
    assert root == tmp_path / "shapes"
    assert sorted(p.name for p in (root / "PNGImages").iterdir()) == ["shape_000.png", "shape_001.png", "shape_002.png"]
    assert sorted(p.name for p in (root / "PedMasks").iterdir()) == [f"shape_00{i}_mask.png" for i in range(3)]
    assert sorted(p.name for p in (root / "SemanticMasks").iterdir()) == [f"shape_00{i}_mask.png" for i in range(3)]
    assert sorted(p.name for p in (root / "instances").iterdir()) == [f"shape_00{i}.json" for i in range(3)]
    assert json.loads((root / "classes.json").read_text()) == {"background": 0, "circle": 1, "square": 2, "triangle": 3}
    with Image.open(root / "PNGImages" / "shape_000.png") as image:
        assert image.mode == "RGB" and image.size == (56, 40)
    for folder in ("PedMasks", "SemanticMasks"):
        with Image.open(root / folder / "shape_000_mask.png") as mask:
            assert mask.mode == "P" and mask.size == (56, 40)
            assert mask.getpalette()[:6] == [0, 0, 0, 128, 0, 0]


def test_instance_ids_sidecars_and_semantic_masks_agree(tmp_path) -> None:
    root = make_shapes(tmp_path / "shapes", n=12, size=48, seed=1)
    seen_classes: set[int] = set()
    for i in range(12):
        image, instances, semantic, labels = read_sample(root, f"shape_{i:03d}")
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        ids = sorted(set(np.unique(instances).tolist()) - {0})
        assert ids == list(range(1, len(labels) + 1)) == sorted(labels)
        lookup = np.zeros(256, dtype=np.uint8)
        for obj_id, class_id in labels.items():
            lookup[obj_id] = class_id
        assert np.array_equal(semantic, lookup[instances])  # 0 stays 0, each object gets its class
        assert labels[1] == i % 3 + 1  # object 1 cycles through the classes
        for obj_id in ids:
            ys, xs = np.nonzero(instances == obj_id)
            assert len(ys) >= 20 and np.ptp(ys) >= 3 and np.ptp(xs) >= 3  # no slivers: valid boxes
        seen_classes |= set(labels.values())
    assert seen_classes == {1, 2, 3}


def test_every_class_appears_in_a_tiny_dataset(tmp_path) -> None:
    root = make_shapes(tmp_path / "shapes", n=3, size=32, seed=9, max_shapes=1)
    found = {read_sample(root, f"shape_{i:03d}")[3][1] for i in range(3)}
    assert found == {1, 2, 3}


def test_shape_colour_does_not_give_away_the_class(tmp_path) -> None:
    root = make_shapes(tmp_path / "shapes", n=60, size=48, seed=0)
    colours, classes = [], []
    for i in range(60):
        image, instances, _, labels = read_sample(root, f"shape_{i:03d}")
        for obj_id, class_id in labels.items():
            colours.append(image[instances == obj_id].mean(axis=0))
            classes.append(class_id)
    features, targets = np.array(colours), np.array(classes)
    # Leave-one-out nearest neighbour on the mean colour: near chance (1/3), far from what geometry allows.
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    accuracy = (targets[distances.argmin(axis=1)] == targets).mean()
    assert len(targets) > 100 and accuracy < 0.5, accuracy
    # Nearest class-mean colour does no better.
    centroids = np.stack([features[targets == c].mean(axis=0) for c in (1, 2, 3)])
    nearest = np.linalg.norm(features[:, None] - centroids[None], axis=-1).argmin(axis=1) + 1
    assert (nearest == targets).mean() < 0.5


def test_classes_subset_renumbers_ids(tmp_path) -> None:
    root = make_shapes(tmp_path / "tri", n=4, size=32, classes=("triangle", "circle"))
    assert json.loads((root / "classes.json").read_text()) == {"background": 0, "triangle": 1, "circle": 2}
    values = set()
    for i in range(4):
        values |= set(np.unique(read_sample(root, f"shape_{i:03d}")[2]).tolist())
    assert values == {0, 1, 2}


def test_existing_dataset_needs_exist_ok_and_is_rewritten_whole(tmp_path) -> None:
    root = make_shapes(tmp_path / "shapes", n=5, size=32)
    with pytest.raises(FileExistsError, match=r"already holds a dataset \(20 `shape_\*` files\).*`exist_ok=True`"):
        make_shapes(root, n=2, size=32)
    make_shapes(root, n=2, size=32, exist_ok=True)
    assert sorted(p.name for p in (root / "PNGImages").iterdir()) == ["shape_000.png", "shape_001.png"]
    assert len(list((root / "instances").iterdir())) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, r"`n` \(number of images\) must be a positive int, got 0"),
        ({"size": 8}, "`size` must be at least 16 pixels a side"),
        ({"size": "64"}, r"`size` must be an int or \(height, width\)"),
        ({"seed": -1}, "`seed` must be a non-negative int, got -1"),
        ({"classes": "circle"}, "`classes` must be a non-empty list of distinct names"),
        ({"classes": ("circle", "circle")}, "`classes` must be a non-empty list of distinct names"),
        ({"classes": ("circle", "hexagon")}, r"unknown shapes \['hexagon'\]"),
        ({"max_shapes": 0}, r"`max_shapes` must be an int in 1..254, got 0"),
    ],
)
def test_make_shapes_rejects_bad_arguments(tmp_path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_shapes(tmp_path / "x", **{"n": 2, "size": 32, **kwargs})
    assert not (tmp_path / "x").exists()


def test_shape_classes_constant() -> None:
    assert SHAPE_CLASSES == ("circle", "square", "triangle")
