"""Masks sent as uint8 and widened to int64 on the device: collate(compact_masks=True), widen_masks, the Trainer.

A class-id mask costs eight bytes a pixel as int64; the ids of nearly every segmentation set fit in one.
On a GPU the Trainer sends them as uint8 and widens them on the device before the step, which must see
exactly what it saw before: these tests compare with the int64 path (on the CPU, with a loader that
asks for compact masks itself).
"""

from __future__ import annotations

import functools
import warnings
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors

import data_layouts as layouts
from trainkit import Trainer
from trainkit.data import SegmentationDataset, collate, make_shapes, widen_masks
from trainkit.data.transforms import BatchNormalize
from trainkit.engine._arguments import compact_masks, widened
from trainkit.engine._step import BatchFixer
from trainkit.models import UNet

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
CPU, GPU = torch.device("cpu"), torch.device("cuda")  # GPU: decisions only, nothing runs there


def _sample(fill: int, dtype: torch.dtype = torch.int64) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    mask = torch.arange(12, dtype=torch.int64).view(3, 4) % 5 + fill
    return tv_tensors.Image(torch.zeros(3, 3, 4, dtype=torch.uint8)), tv_tensors.Mask(mask.to(dtype))


def test_collate_sends_ids_that_fit_a_byte_as_uint8_and_widen_gives_back_the_int64_batch() -> None:
    batch = [_sample(0), _sample(250), _sample(1, torch.uint8)]
    images, masks = collate(batch, compact_masks=True)
    assert type(masks) is tv_tensors.Mask and masks.dtype == torch.uint8
    expected = collate(batch)[1]
    assert expected.dtype == torch.int64
    widened_images, widened = widen_masks((images, masks))
    assert type(widened) is tv_tensors.Mask and widened.dtype == torch.int64 and torch.equal(widened, expected)
    assert widened_images is images


@pytest.mark.parametrize(
    ("samples", "why"),
    [
        ([_sample(0), _sample(252)], "an id of 256"),
        ([_sample(0), (_sample(0)[0], tv_tensors.Mask(torch.full((3, 4), -1)))], "a negative id"),
    ],
)
def test_collate_keeps_int64_when_an_id_does_not_fit_a_byte(samples: list, why: str) -> None:
    masks = collate(samples, compact_masks=True)[1]
    assert masks.dtype == torch.int64, why
    assert torch.equal(masks, collate(samples)[1])


def test_only_class_id_masks_are_compacted_and_widened() -> None:
    plain = [(torch.zeros(2), torch.tensor(3)), (torch.zeros(2), torch.tensor(4))]
    assert collate(plain, compact_masks=True)[1].dtype == torch.int64  # labels are not masks
    soft = [(torch.zeros(2), tv_tensors.Mask(torch.full((2, 2), 0.5))) for _ in range(2)]
    assert collate(soft, compact_masks=True)[1].dtype == torch.float32
    binary = [(torch.zeros(2), tv_tensors.Mask(torch.ones(2, 2, dtype=torch.bool))) for _ in range(2)]
    assert collate(binary, compact_masks=True)[1].dtype == torch.int64
    # A detection dict's uint8 instance masks are kept as collate keeps them, and widen leaves them alone.
    detection = (torch.zeros(1), {"masks": tv_tensors.Mask(torch.ones(2, 2, 2, dtype=torch.uint8))})
    assert widen_masks(detection)[1]["masks"].dtype == torch.uint8
    Pair = namedtuple("Pair", ["image", "mask"])
    named = widen_masks(Pair(torch.zeros(1), tv_tensors.Mask(torch.ones(2, dtype=torch.uint8))))
    assert type(named) is Pair and named.mask.dtype == torch.int64
    keyed = widen_masks({"image": torch.zeros(1), "mask": tv_tensors.Mask(torch.ones(2, dtype=torch.uint8))})
    assert keyed["mask"].dtype == torch.int64


def test_a_detection_dicts_masks_are_neither_narrowed_nor_widened() -> None:
    sample = (torch.zeros(1), {"masks": tv_tensors.Mask(torch.ones(2, 2, 2, dtype=torch.int64))})
    batch = collate([sample, sample], compact_masks=True)
    assert batch[1]["masks"].dtype == torch.int64 == collate([sample, sample])[1]["masks"].dtype


def test_collate_compacts_inside_workers_through_shared_memory() -> None:
    data = [_sample(k) for k in range(4)]
    loader = DataLoader(data, batch_size=2, num_workers=1, collate_fn=functools.partial(collate, compact_masks=True))
    batches = list(loader)
    assert [masks.dtype for _, masks in batches] == [torch.uint8, torch.uint8]
    assert torch.equal(torch.cat([widen_masks(b)[1] for b in batches]), collate(data)[1])


def test_the_default_step_widens_uint8_masks_after_the_copy_without_a_warning() -> None:
    fixer = BatchFixer(nn.Conv2d(3, 2, 1), nn.CrossEntropyLoss())
    images, masks = collate([_sample(0), _sample(1)], compact_masks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = fixer((images, masks))
    assert fixed[1].dtype == torch.uint8  # still compact for the host-to-device copy
    assert fixer.after_move(fixed)[1].dtype == torch.int64


def test_the_trainer_compacts_on_a_gpu_and_widens_whatever_asks_for_compact_masks() -> None:
    data = [_sample(k) for k in range(4)]
    workers = DataLoader(data, batch_size=2, num_workers=1, collate_fn=collate)
    assert compact_masks(workers, device=CPU) == (workers, False)  # the CPU would pay for the narrowing
    own = DataLoader(data, batch_size=2, num_workers=1, collate_fn=lambda b: collate(b))
    assert compact_masks(own, device=GPU) == (own, False)  # not trainkit's collate
    in_process = DataLoader(data, batch_size=2, collate_fn=collate)
    assert compact_masks(in_process, device=GPU) == (in_process, False)  # nothing travels
    loader, widen = compact_masks(workers, device=GPU)  # decided, not run, here
    assert loader.collate_fn.keywords == {"compact_masks": True} and widen
    assert loader.num_workers == 1 and loader.dataset is data
    asked = DataLoader(data, batch_size=2, collate_fn=functools.partial(collate, compact_masks=True))
    assert compact_masks(asked, device=CPU) == (asked, True)
    assert widened(None) is widen_masks
    double = widened(lambda batch: (batch[0], batch[1] * 2))
    assert double((torch.zeros(1), tv_tensors.Mask(torch.ones(2, dtype=torch.uint8))))[1].tolist() == [2, 2]


CAMVID_COLOURS = {rgb: class_id for class_id, (_, rgb) in enumerate(layouts.CAMVID_CLASSES)}
LAYOUTS = {  # builder, constructor arguments, the dtype uint8 masks come in
    "penn-fudan palette": (layouts.penn_fudan, {"mask_suffix": "_mask"}, torch.uint8),
    "oxford pets value_map": (layouts.oxford_pets, {"value_map": {1: 1, 2: 0, 3: 255}}, torch.uint8),
    "camvid colours": (layouts.camvid, {"mask_suffix": "_L", "color_map": CAMVID_COLOURS}, torch.uint8),
    "voc 255 borders": (layouts.pascal_voc, {"num_classes": 21, "strict": False}, torch.uint8),
    "carvana binary": (layouts.carvana, {"mask_suffix": "_mask", "target": "binary"}, torch.uint8),
    "pets binary, ignore 300": (
        layouts.oxford_pets,
        {"value_map": {1: 1, 2: 0, 3: 300}, "target": "binary", "ignore_index": 300},
        torch.int64,
    ),
    "16-bit ids 300..900": (layouts.tiff_stacks, {}, torch.int64),
}


@pytest.mark.filterwarnings("ignore:dropping unpaired files")
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_uint8_masks_from_the_dataset_hold_the_same_ids(tmp_path: Path, name: str) -> None:
    build, kwargs, expected = LAYOUTS[name]
    layout = build(tmp_path)
    wide = SegmentationDataset(layout.images, layout.masks, **kwargs)
    narrow = SegmentationDataset(layout.images, layout.masks, mask_dtype=torch.uint8, **kwargs)
    for index in range(len(wide)):
        mask = narrow[index][1]
        assert type(mask) is tv_tensors.Mask and mask.dtype == expected
        assert torch.equal(mask.long(), wide[index][1])
    assert "mask_dtype=torch.uint8" in repr(narrow)


def test_mask_dtype_errors() -> None:
    with pytest.raises(ValueError, match=r"`mask_dtype` must be torch.int64 \(the default\) or torch.uint8"):
        SegmentationDataset("images", "masks", mask_dtype=torch.int32)
    with pytest.raises(ValueError, match=r"`mask_dtype=torch.uint8` applies to semantic and binary targets"):
        SegmentationDataset("images", "masks", target="instance", mask_dtype=torch.uint8)


def test_the_trainer_builds_uint8_masks_in_a_copy_of_a_dataset_without_transforms(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "shapes", n=4, size=16, seed=0)
    folders = (root / "PNGImages", root / "SemanticMasks")
    plain = SegmentationDataset(*folders, mask_suffix="_mask", seed=0)
    mapped = SegmentationDataset(*folders, mask_suffix="_mask", value_map={0: 0, 1: 3, 2: 2, 3: 1})
    for dataset in (plain, mapped):
        for device, workers in ((CPU, 0), (GPU, 1)):  # building uint8 costs nothing: worth it anywhere
            loader, widen = compact_masks(
                DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate), device=device
            )
            assert loader.dataset is not dataset and loader.dataset.mask_dtype == torch.uint8 and widen
        mask = next(iter(loader))[1]
        assert mask.dtype == torch.uint8 and torch.equal(mask.long(), next(iter(DataLoader(dataset, 2)))[1])
        assert dataset.mask_dtype == torch.int64  # the user's dataset is left as it is
        dataset.set_epoch(3)
        assert loader.dataset.epoch == 3  # the copy shares the epoch the Trainer sets

    class Shifted(SegmentationDataset):  # computes on its masks: uint8 would wrap around
        def __getitem__(self, index):
            image, mask = super().__getitem__(index)
            return image, tv_tensors.Mask(torch.where(mask == 0, -100, mask - 1))

    unsafe = [
        SegmentationDataset(*folders, mask_suffix="_mask", transforms=lambda image, mask: (image, mask)),
        Shifted(*folders, mask_suffix="_mask"),
        SegmentationDataset(*folders, mask_suffix="_mask", value_map={0: 0, 1: 300, 2: 2, 3: 3}),  # ids over 255
    ]
    for dataset in unsafe:
        on_cpu = DataLoader(dataset, batch_size=2, collate_fn=collate)
        assert compact_masks(on_cpu, device=CPU) == (on_cpu, False)
        loader = compact_masks(DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate), device=GPU)[0]
        assert loader.dataset is dataset  # only the collate narrows, after the dataset's own work
        assert loader.collate_fn.keywords == {"compact_masks": True}
    shifted = compact_masks(DataLoader(unsafe[1], batch_size=4, collate_fn=collate), device=CPU)[0]
    assert next(iter(shifted))[1].min().item() == -100


def _fit(root: Path, collate_fn) -> tuple[Trainer, list[torch.Tensor]]:
    ds = SegmentationDataset(root / "PNGImages", root / "SemanticMasks", mask_suffix="_mask", seed=0)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=1, collate_fn=collate_fn)
    torch.manual_seed(0)
    model = UNet(3, 4, base_channels=4, depth=2)
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(ignore_index=255), device="cpu",
        progress=False, seed=0, batch_transform=BatchNormalize(),
    )  # fmt: skip
    trainer.fit(loader, epochs=2)
    return trainer, [p.detach().clone() for p in model.parameters()]


def test_the_trainer_trains_on_uint8_masks_exactly_as_on_int64(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "shapes", n=8, size=32, seed=0)
    plain, reference = _fit(root, lambda batch: collate(batch))  # not trainkit's collate itself: int64
    assert next(iter(plain._train_loader))[1].dtype == torch.int64
    narrowed, weights = _fit(root, functools.partial(collate, compact_masks=True))  # narrowed by the collate
    assert next(iter(narrowed._train_loader))[1].dtype == torch.uint8
    assert narrowed._train_loader.dataset.mask_dtype == torch.int64
    automatic, built = _fit(root, collate)  # no transforms: the Trainer's copy of the dataset builds uint8
    assert automatic._train_loader.dataset.mask_dtype == torch.uint8
    assert next(iter(automatic._train_loader))[1].dtype == torch.uint8
    for run in (weights, built):
        assert all(torch.equal(a, b) for a, b in zip(run, reference, strict=True))
    assert narrowed.history[-1]["train/loss"] == automatic.history[-1]["train/loss"] == plain.history[-1]["train/loss"]

    seen: list[torch.dtype] = []

    def step(batch):  # a custom step gets the widened masks too
        seen.append(batch[1].dtype)
        return nn.functional.cross_entropy(trainer_model(batch[0].float() / 255), batch[1], ignore_index=255)

    trainer_model = UNet(3, 4, base_channels=4, depth=2)
    ds = SegmentationDataset(root / "PNGImages", root / "SemanticMasks", mask_suffix="_mask", seed=0)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=functools.partial(collate, compact_masks=True))
    opt = torch.optim.SGD(trainer_model.parameters(), lr=0.1)
    trainer = Trainer(
        trainer_model, opt, device="cpu", progress=False, training_step=step, validation_step=step
    )  # fmt: skip
    trainer.fit(loader, epochs=1)
    assert seen == [torch.int64, torch.int64]
    trainer.evaluate(loader)  # a validation loader that sends uint8 masks is widened too
    assert seen == [torch.int64] * 4
