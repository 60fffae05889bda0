"""The model factory: every family builds offline, pretrained weights come from the caches only, errors say the fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from trainkit.models import ModelSpec, available_models, create_model, register
from trainkit.models import factory as factory_module

TINY_SMP = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """Empty caches, the Hub offline, and every download function replaced by one that records the attempt."""
    import huggingface_hub.constants as hub
    import huggingface_hub.file_download as hub_download

    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(str(args[:1]))
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(hub_download, "http_get", refuse)
    yield attempts
    assert attempts == []


def test_unet_is_built_with_the_options_given() -> None:
    model = create_model("unet", num_classes=3, in_channels=1, base_channels=4, depth=2)
    assert model(torch.randn(2, 1, 20, 24)).shape == (2, 3, 20, 24)
    assert model.depth == 2 and create_model("UNet", num_classes=2, base_channels=4, depth=1).depth == 1


def test_torchvision_models_build_without_weights_and_return_their_dict() -> None:
    model = create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3)
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["out"] and out["out"].shape == (1, 3, 64, 64)
    model = create_model("torchvision:deeplabv3_mobilenet_v3_large", num_classes=4, aux_loss=True)
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert sorted(out) == ["aux", "out"] and out["aux"].shape == (1, 4, 64, 64)


def test_smp_models_build_with_any_encoder_including_timm() -> None:
    model = create_model("smp:Unet", num_classes=2, **TINY_SMP)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    assert type(model.encoder).__name__ == "ResNetEncoder"
    timm_model = create_model("smp:Unet", num_classes=3, in_channels=1, **{**TINY_SMP, "encoder_name": "tu-resnet18"})
    assert timm_model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    assert type(timm_model.encoder).__name__ == "TimmUniversalEncoder"


def test_available_models_lists_each_family() -> None:
    names = available_models()
    assert "unet" in names and "torchvision:lraspp_mobilenet_v3_large" in names
    assert "smp:Unet" in names and "smp:Segformer" in names


def test_spec_round_trips_through_plain_data_and_rebuilds_the_same_architecture() -> None:
    spec = ModelSpec("smp:Unet", num_classes=2, options=TINY_SMP)
    record = spec.to_dict()
    assert record == {"name": "smp:Unet", "num_classes": 2, "in_channels": 3, "options": TINY_SMP}
    a, b = ModelSpec.from_dict(record).build(), spec.build()
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


def test_rebuilding_without_pretrained_drops_the_weight_options() -> None:
    spec = ModelSpec("torchvision:lraspp_mobilenet_v3_large", num_classes=2, options={"weights_backbone": "DEFAULT"})
    with pytest.raises(FileNotFoundError):  # empty cache
        spec.build()
    assert isinstance(spec.build(pretrained=False), nn.Module)  # what a checkpoint does: its weights are inside


# ------------------------------------------------------------------ pretrained weights: caches only


def test_torchvision_backbone_weights_are_read_from_torch_home(tmp_path: Path) -> None:
    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

    backbone = mobilenet_v3_large()
    with torch.no_grad():
        backbone.features[0][0].weight.fill_(0.25)
    url = MobileNet_V3_Large_Weights.DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(backbone.state_dict(), cached)
    model = create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=2, weights_backbone="DEFAULT")
    assert torch.all(model.backbone["0"][0].weight == 0.25)


def test_missing_torchvision_weights_are_one_line_naming_the_file_and_how_to_get_it(tmp_path: Path) -> None:
    expected = (
        r"^the pretrained weights MobileNet_V3_Large_Weights\.IMAGENET1K_V\d \(`weights_backbone`\) are not in the "
        rf"torch hub cache: {tmp_path}/torch/hub/checkpoints/mobilenet_v3_large-\w+\.pth is missing, and trainkit "
        r"never downloads by surprise\. Fetch them once, online: `python -c .*get_weight\('MobileNet_V3_Large_"
        r"Weights\.IMAGENET1K_V\d'\)\.get_state_dict\(\)\"` .* or pass `weights_backbone=None`"
    )
    with pytest.raises(FileNotFoundError, match=expected) as info:
        create_model("torchvision:deeplabv3_mobilenet_v3_large", num_classes=2, weights_backbone="DEFAULT")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"LRASPP_MobileNet_V3_Large_Weights\.COCO_WITH_VOC_LABELS_V1 "):
        create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=2, weights="COCO_WITH_VOC_LABELS_V1")


def test_whole_torchvision_weights_get_a_new_head_for_other_class_counts(tmp_path: Path) -> None:
    from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights, lraspp_mobilenet_v3_large

    voc = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    url = LRASPP_MobileNet_V3_Large_Weights.DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(voc.state_dict(), cached)
    model = create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3, weights="DEFAULT")
    assert model.classifier.low_classifier.out_channels == 3 and model.classifier.high_classifier.out_channels == 3
    assert torch.equal(model.backbone["0"][0].weight, voc.backbone["0"][0].weight)
    assert model.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def _fake_hf_snapshot(root: Path, repo: str, revision: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub's cache has: models--<org>--<name>/snapshots/<commit>/<file>."""
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_smp_encoder_weights_are_read_from_the_hugging_face_cache(tmp_path: Path) -> None:
    from safetensors.torch import save
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    encoder = get_encoder("resnet18", depth=5)
    with torch.no_grad():
        encoder.conv1.weight.fill_(0.5)
    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    _fake_hf_snapshot(tmp_path / "hf", settings["repo_id"], settings["revision"],
                      {"config.json": json.dumps({}).encode(), "model.safetensors": save(state)})  # fmt: skip
    model = create_model("smp:Unet", num_classes=2, encoder_name="resnet18", encoder_weights="imagenet")
    assert torch.all(model.encoder.conv1.weight == 0.5)


@pytest.mark.parametrize(
    ("encoder", "expected"),
    [
        ("resnet18", r"\(encoder_weights='imagenet' of resnet18\) are not in the Hugging Face cache .*hf: "
                     r"config\.json, model\.safetensors of smp-hub/resnet18\.imagenet missing, and trainkit never "
                     r"downloads by surprise\. Fetch them once, online: "
                     r"`hf download smp-hub/resnet18\.imagenet config\.json model\.safetensors --revision \w+`"
                     r".* or pass `encoder_weights=None`"),
        ("tu-resnet18", r"\(encoder_weights of tu-resnet18\) are not in the Hugging Face cache .*: model\.safetensors "
                        r"of timm/resnet18\.\w+ missing.*`hf download timm/resnet18\.\w+ model\.safetensors`"),
    ],
)  # fmt: skip
def test_missing_smp_and_timm_encoder_weights_are_one_line(encoder: str, expected: str) -> None:
    with pytest.raises(FileNotFoundError, match=expected):
        create_model("smp:Unet", num_classes=2, encoder_name=encoder, encoder_weights="imagenet")


def test_the_hub_is_back_online_after_a_pretrained_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with pytest.raises(FileNotFoundError):
        create_model("smp:Unet", num_classes=2, encoder_name="resnet18", encoder_weights="imagenet")
    assert hub.HF_HUB_OFFLINE is False


# ------------------------------------------------------------------ registered models and errors


class _Doubler(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_a_registered_builder_is_called_with_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory_module, "_registry", {})
    register("doubler", _Doubler)
    model = ModelSpec("doubler", num_classes=5, in_channels=1, options={"width": 2}).build()
    assert model.encoder.in_channels == 1 and model.encoder.out_channels == 2 and model.head.out_channels == 5
    assert available_models()[-1] == "doubler"


@pytest.mark.parametrize(
    ("call", "error", "expected"),
    [
        (lambda: create_model("segformer", num_classes=2), ValueError,
         r"unknown model 'segformer': give 'unet', 'torchvision:<builder>' .*register your own with "
         r"`trainkit\.models\.register\('segformer', build_fn\)` first"),
        (lambda: create_model("torchvision:deeplabv3_resnet18", num_classes=2), ValueError,
         r"unknown torchvision segmentation model 'deeplabv3_resnet18'; choose one of fcn_resnet50, "),
        (lambda: create_model("timm:resnet18", num_classes=2), ValueError,
         r"unknown model family 'timm' in 'timm:resnet18': use 'torchvision:<builder>' or 'smp:<Arch>'"),
        (lambda: create_model("smp:Unett", num_classes=2), ValueError,
         r"unknown smp architecture 'Unett'; choose one of Unet, UnetPlusPlus, "),
        (lambda: create_model("smp:Unet", num_classes=2, encoder_name="resnet19"), ValueError,
         r"unknown smp encoder 'resnet19': choose one of smp's .* or a timm one as 'tu-<name>'"),
        (lambda: create_model("smp:Unet", num_classes=2, classes=3), ValueError,
         r"give smp's `classes` as the spec's `num_classes`, not as an option"),
        (lambda: create_model("unet", num_classes=2, width=3), ValueError,
         r"unet takes no option 'width'; it takes \['base_channels', 'bilinear', 'depth'\]"),
        (lambda: create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=2, aux_loss=True), ValueError,
         r"torchvision:lraspp_mobilenet_v3_large takes no option 'aux_loss'"),
        (lambda: create_model("torchvision:fcn_resnet50", num_classes=2, in_channels=1), ValueError,
         r"torchvision:fcn_resnet50 takes 3-channel images, got `in_channels=1`; convert the images to RGB, or use "
         r"an smp model"),
        (lambda: create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=2, weights="VOC"), ValueError,
         r"`weights='VOC'` is not a weights name of lraspp_mobilenet_v3_large; choose one of DEFAULT, "
         r"COCO_WITH_VOC_LABELS_V1 \(or None\)"),
        (lambda: create_model("unet", num_classes=0), ValueError, r"`num_classes` must be an int >= 1, got 0"),
        (lambda: create_model("smp:Unet", num_classes=2, activation=nn.Sigmoid), ValueError,
         r"the options of 'smp:Unet' must be plain data .* got type <class .*Sigmoid'>; pass a name instead"),
        (lambda: register("my:net", _Doubler), ValueError, r"without ':' and not 'unet'"),
        (lambda: register("net", lambda classes: _Doubler(classes)), TypeError,
         r"takes no `num_classes` keyword; the factory calls `build_fn\(num_classes=\.\.\., in_channels=\.\.\., "),
        (lambda: ModelSpec.from_dict({"name": "unet"}), ValueError, r"a model spec needs 'num_classes'"),
    ],
)  # fmt: skip
def test_errors_say_what_was_wrong_and_the_fix(call: Any, error: type[Exception], expected: str) -> None:
    with pytest.raises(error, match=expected):
        call()
