"""collate / collate_instances: structure, stacking and the dtype rules."""

from __future__ import annotations

import importlib
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

import data_layouts as layouts
from trainkit.data.collate import collate, collate_instances
from trainkit.data.dataset import SegmentationDataset
from trainkit.errors import DataError

# `trainkit.data.collate` the attribute is the function; the module is reached through sys.modules.
collate_module = importlib.import_module("trainkit.data.collate")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def image(fill: int = 0, size: tuple[int, int] = (4, 6)) -> tv_tensors.Image:
    return tv_tensors.Image(torch.full((3, *size), fill, dtype=torch.uint8))


def test_tuples_of_tv_tensors_keep_types_and_uint8_images() -> None:
    batch = [(image(k), tv_tensors.Mask(torch.full((4, 6), k, dtype=torch.uint8))) for k in range(3)]
    images, masks = collate(batch)
    assert isinstance(images, tv_tensors.Image) and images.dtype == torch.uint8 and images.shape == (3, 3, 4, 6)
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.int64 and masks.shape == (3, 4, 6)
    assert masks[:, 0, 0].tolist() == [0, 1, 2] and images[:, 0, 0, 0].tolist() == [0, 1, 2]


def test_numpy_float64_and_integer_targets() -> None:
    batch = [(np.full((2, 2, 3), 0.5), np.full((2, 2), k, dtype=np.uint8)) for k in range(2)]
    images, targets = collate(batch)
    assert isinstance(images, torch.Tensor) and images.dtype == torch.float32 and images.shape == (2, 2, 2, 3)
    assert targets.dtype == torch.int64 and targets.tolist() == [[[0, 0], [0, 0]], [[1, 1], [1, 1]]]


def test_bool_targets_become_int64_but_float_targets_stay_float() -> None:
    bool_targets = collate([(torch.zeros(2), torch.tensor([True, False]))] * 2)[1]
    assert bool_targets.dtype == torch.int64 and bool_targets.tolist() == [[1, 0], [1, 0]]
    soft = collate([(torch.zeros(2), torch.tensor([0.0, 1.0], dtype=torch.float64))] * 2)[1]
    assert soft.dtype == torch.float32  # BCEWithLogitsLoss targets: float, not class ids


def test_float_mask_with_whole_numbers_becomes_int64_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collate_module, "_warned_float_masks", False)
    batch = [(image(), tv_tensors.Mask(torch.full((4, 6), 2.0))) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"float class ids; converted to int64"):
        masks = collate(batch)[1]
    assert masks.dtype == torch.int64 and int(masks.max()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collate(batch)  # the warning is given once
    soft = collate([(image(), tv_tensors.Mask(torch.full((4, 6), 0.25)))] * 2)[1]
    assert soft.dtype == torch.float32  # fractional masks are not class ids


def test_dicts_lists_numbers_strings_and_namedtuples() -> None:
    Sample = namedtuple("Sample", ["image", "mask"])
    batch = [
        {"image": image(k), "mask": np.full((4, 6), k, np.int32), "name": f"s{k}", "weight": 0.5, "id": k, "flag": True}
        for k in range(2)
    ]
    out = collate(batch)
    assert out["image"].shape == (2, 3, 4, 6) and out["mask"].dtype == torch.int64
    assert out["name"] == ["s0", "s1"] and out["weight"].dtype == torch.float32 and out["id"].tolist() == [0, 1]
    assert out["flag"].dtype == torch.bool
    named = collate([Sample(image(1), torch.ones(4, 6, dtype=torch.int16))] * 2)
    assert isinstance(named, Sample) and named.mask.dtype == torch.int64
    as_list = collate([[image(), torch.zeros(4, 6, dtype=torch.int32)]] * 2)
    assert isinstance(as_list, list) and as_list[1].dtype == torch.int64


def test_mismatched_shapes_name_the_samples_and_suggest_a_resize() -> None:
    batch = [(image(size=(4, 6)), torch.zeros(4, 6)), (image(size=(4, 6)), torch.zeros(4, 6))]
    batch.append((image(size=(8, 6)), torch.zeros(8, 6)))
    with pytest.raises(
        DataError, match=r"sample\[0\].*\[3, 4, 6\] \(samples 0, 1\); \[3, 8, 6\] \(sample 2\).*train_preset"
    ):
        collate(batch)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ([], r"`collate` got an empty batch"),
        ([{"a": 1}, {"b": 1}], r"sample 0 has keys \['a'\] but sample 1 has \['b'\]"),
        ([(1, 2), (1,)], r"sample 0 has 2 fields but sample 1 has length 1"),
    ],
)
def test_collate_structure_errors(batch: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        collate(batch)


def test_collate_inside_a_worker_writes_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collate_module, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    images, masks = collate([(image(k), tv_tensors.Mask(torch.full((4, 6), k, dtype=torch.uint8))) for k in range(2)])
    assert images.is_shared() and masks.is_shared() and masks.dtype == torch.int64
    assert images[:, 0, 0, 0].tolist() == [0, 1] and masks[:, 0, 0].tolist() == [0, 1]


def test_collate_instances_keeps_lists_and_fixes_dtypes() -> None:
    targets = [
        {
            "masks": tv_tensors.Mask(torch.zeros(n, 4, 6, dtype=torch.bool)),
            "boxes": np.zeros((n, 4)),
            "labels": np.ones(n, dtype=np.int32),
            "area": np.ones(n),
        }
        for n in (1, 3)
    ]
    images, out = collate_instances([(image(), targets[0]), (image(size=(8, 8)), targets[1])])
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 4, 6), (3, 8, 8)]
    assert images[0].dtype == torch.uint8
    assert [t["masks"].dtype for t in out] == [torch.bool, torch.bool] and out[1]["masks"].shape[0] == 3
    assert [t["boxes"].dtype for t in out] == [torch.float32] * 2
    assert [t["labels"].dtype for t in out] == [torch.int64] * 2 and [t["area"].dtype for t in out] == [
        torch.float32
    ] * 2
    with pytest.raises(ValueError, match=r"`collate_instances` expects samples that are tuples/lists"):
        collate_instances([image()])
    with pytest.raises(ValueError, match=r"`collate_instances` got an empty batch"):
        collate_instances([])


def test_dataset_through_a_dataloader(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=3)
    semantic = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask")
    images, masks = next(iter(DataLoader(semantic, batch_size=3, collate_fn=collate)))
    assert images.shape == (3, 3, 24, 32) and images.dtype == torch.uint8 and masks.dtype == torch.int64
    np.testing.assert_array_equal(masks.numpy(), np.stack(layout.masks_raw))
    instance = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="instance")
    images, targets = next(iter(DataLoader(instance, batch_size=3, collate_fn=collate_instances)))
    assert [t["masks"].shape[0] for t in targets] == [1, 2, 3] and [t["image_id"].item() for t in targets] == [0, 1, 2]


def test_collate_instances_in_a_worker_packs_each_dtype_into_one_shared_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(collate_module, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    samples = []
    for n in (1, 2):
        boxes = tv_tensors.BoundingBoxes(torch.full((n, 4), float(n)), format="XYXY", canvas_size=(4, 6))
        masks = tv_tensors.Mask(torch.ones(n, 4, 6, dtype=torch.bool))
        samples.append((image(n), {"masks": masks, "boxes": boxes, "labels": torch.arange(n), "image_id": n}))
    images, targets = collate_instances(samples)
    assert all(t.is_shared() for t in [*images, *(v for tg in targets for v in tg.values() if torch.is_tensor(v))])
    storages = {t["labels"].untyped_storage().data_ptr() for t in targets}
    assert len(storages) == 1  # one block for all int64 tensors of the batch
    assert isinstance(images[1], tv_tensors.Image) and int(images[1].max()) == 2
    assert isinstance(targets[1]["boxes"], tv_tensors.BoundingBoxes) and tuple(targets[1]["boxes"].canvas_size) == (
        4,
        6,
    )
    assert targets[1]["boxes"].tolist() == [[2.0] * 4] * 2 and targets[1]["labels"].tolist() == [0, 1]
    assert targets[0]["masks"].dtype == torch.bool and int(targets[1]["masks"].sum()) == 48
    assert targets[1]["image_id"] == 2  # non-tensors pass through


@pytest.mark.slow
def test_instance_batches_from_workers_equal_those_of_the_main_process(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=4)
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", target="instance")
    single = list(DataLoader(ds, batch_size=2, collate_fn=collate_instances))
    workers = list(DataLoader(ds, batch_size=2, collate_fn=collate_instances, num_workers=2))
    for (images_a, targets_a), (images_b, targets_b) in zip(single, workers, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(images_a, images_b, strict=True))
        for a, b in zip(targets_a, targets_b, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            assert type(b["boxes"]) is tv_tensors.BoundingBoxes and type(b["masks"]) is tv_tensors.Mask
