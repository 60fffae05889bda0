"""The checkpoint spec: plain data that rebuilds the model, read back from new and from older checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainkit
from trainkit.errors import CheckpointError
from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing, from_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
# Written by `trainkit train` of trainkit 0.1.0 (before specs): extra["recipe"] holds the UNet's config.
RECIPE_CHECKPOINT = FIXTURES / "recipe_unet_0.1.0.pt"
TINY_UNET = ModelSpec("unet", num_classes=2, options={"base_channels": 4, "depth": 2})


def test_the_imagenet_defaults_are_the_data_presets_ones() -> None:
    from trainkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    assert Preprocessing(8).mean == IMAGENET_MEAN and Preprocessing(8).std == IMAGENET_STD


def test_a_spec_survives_a_checkpoint_and_rebuilds_the_model(tmp_path: Path) -> None:
    model = TINY_UNET.build()
    spec = CheckpointSpec(TINY_UNET, Preprocessing((32, 48)), class_names=["bg", "cell"],
                          color_map={(0, 0, 0): 0, (255, 0, 0): 1, (128, 0, 0): 1, (9, 9, 9): 255})  # fmt: skip
    path = trainkit.save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "extra": {"spec": spec.to_dict()}})
    ckpt = trainkit.load_checkpoint(path)  # weights_only: the spec is plain data
    rebuilt, read = from_checkpoint(ckpt)
    assert read == spec and read.preprocessing.size == (32, 48)
    assert read.colors()[:2] == [(0, 0, 0), (255, 0, 0)]  # the first colour of class 1 is the one written
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(rebuilt(x), model.eval()(x))


def test_the_exif_choice_is_recorded_and_specs_written_before_it_read_photos_turned() -> None:
    stored = CheckpointSpec(TINY_UNET, Preprocessing(32, exif_orientation=False))
    assert CheckpointSpec.from_dict(stored.to_dict()).preprocessing.exif_orientation is False
    older = CheckpointSpec(TINY_UNET, Preprocessing(32)).to_dict()
    del older["preprocessing"]["exif_orientation"]
    assert CheckpointSpec.from_dict(older).preprocessing.exif_orientation is True
    older["preprocessing"]["exif_orientation"] = "false"  # damaged: refused, not read as a truthy string
    with pytest.raises(CheckpointError, match=r"spec is damaged .*`exif_orientation` must be True or False"):
        CheckpointSpec.from_checkpoint({"model": {}, "extra": {"spec": older}})


def test_a_checkpoint_written_by_the_recipe_of_trainkit_0_1_keeps_loading() -> None:
    ckpt = trainkit.load_checkpoint(RECIPE_CHECKPOINT)
    assert "spec" not in ckpt["extra"] and ckpt["extra"]["recipe"]["model"]["name"] == "UNet"
    model, spec = from_checkpoint(ckpt)
    assert spec.model == ModelSpec("unet", num_classes=4, options={"base_channels": 4, "depth": 2})
    assert spec.preprocessing.size == (32, 32) and spec.preprocessing.scale == pytest.approx(1 / 255)
    assert spec.preprocessing.exif_orientation is True  # photos were turned before the choice was recorded
    assert spec.target == "semantic" and spec.class_names == [] and spec.color_map is None
    assert spec.mask_suffix == "_mask"  # from the arguments the recipe recorded
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_the_mask_suffix_is_recorded_and_read_from_the_recipe_of_specs_written_before_it() -> None:
    spec = CheckpointSpec(TINY_UNET, Preprocessing(32), mask_suffix="_mask")
    assert spec.to_dict()["classes"]["mask_suffix"] == "_mask"
    assert CheckpointSpec.from_dict(spec.to_dict()) == spec
    before = CheckpointSpec(TINY_UNET, Preprocessing(32)).to_dict()
    del before["classes"]["mask_suffix"]  # a spec written before the field existed, beside the recipe's arguments
    recipe = {"train": {"mask_suffix": "_label"}}
    assert CheckpointSpec.from_checkpoint({"extra": {"spec": before, "recipe": recipe}}).mask_suffix == "_label"
    assert CheckpointSpec.from_checkpoint({"extra": {"spec": before}}).mask_suffix == ""
    recorded = CheckpointSpec(TINY_UNET, Preprocessing(32)).to_dict()  # recorded as "": the recipe is not read
    assert CheckpointSpec.from_checkpoint({"extra": {"spec": recorded, "recipe": recipe}}).mask_suffix == ""


def test_a_checkpoint_without_a_spec_says_how_to_record_one() -> None:
    expected = r"records no model spec, so its model cannot be rebuilt from it alone\. Record one when training: "
    with pytest.raises(CheckpointError, match=expected + r"`trainer\.extra_state\['spec'\] = "):
        CheckpointSpec.from_checkpoint({"model": {}, "extra": {}})
    with pytest.raises(TypeError, match=r"must be a loaded checkpoint dict, got str; read the file first"):
        CheckpointSpec.from_checkpoint("best.pt")  # type: ignore[arg-type]


def test_a_spec_of_a_newer_format_asks_for_an_upgrade() -> None:
    record = CheckpointSpec(TINY_UNET, Preprocessing(32)).to_dict()
    with pytest.raises(CheckpointError, match=r"has format 2 and this trainkit reads formats up to 1: upgrade"):
        CheckpointSpec.from_dict({**record, "format": 2})
    with pytest.raises(CheckpointError, match=r"the checkpoint's spec is damaged \(KeyError: 'preprocessing'\)"):
        CheckpointSpec.from_dict({"format": 1, "model": record["model"]})


def test_weights_that_do_not_fit_the_rebuilt_model_name_the_builder() -> None:
    spec = CheckpointSpec(TINY_UNET, Preprocessing(32))
    other = ModelSpec("unet", num_classes=3, options={"base_channels": 4, "depth": 2}).build()
    with pytest.raises(CheckpointError, match=r"the checkpoint's weights do not fit the model its spec builds \(unet"):
        from_checkpoint({"model": other.state_dict(), "extra": {"spec": spec.to_dict()}})


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Preprocessing(0), r"`size` must be an int or \(height, width\) of ints >= 1, got 0"),
        (lambda: Preprocessing(8, std=(0.0, 1.0, 1.0)), r"`std` values and `scale` must be > 0"),
        (lambda: Preprocessing(8, mean=(0.5,)), r"`mean` and `std` need one value per channel"),
        (lambda: CheckpointSpec(TINY_UNET, Preprocessing(8), class_names=["a", "b", "c"]),
         r"3 class names for a model of 2 classes; give one name per class id \(or none\)"),
        (lambda: CheckpointSpec(TINY_UNET, Preprocessing(8), target="instance"),
         r"`target` must be 'semantic' or 'binary', got 'instance'"),
        (lambda: CheckpointSpec(TINY_UNET, Preprocessing(8), mask_suffix="/../x"),
         r"`mask_suffix` must be a file-name part such as '_mask' \(no path separator\), got '/\.\./x'"),
        (lambda: Preprocessing(8, exif_orientation="no"), r"`exif_orientation` must be True or False, got 'no'"),
    ],
)  # fmt: skip
def test_spec_arguments_are_checked(make: object, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        make()  # type: ignore[operator]
