"""trainkit.export: ONNX and torch.export programs of a checkpoint's model, verified against PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainkit
from trainkit._export import ExportError, _sizes
from trainkit.data.transforms import BatchNormalize
from trainkit.errors import CheckpointError
from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing, UNet

TINY: dict[str, Any] = {"base_channels": 4, "depth": 2}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PreviousUNet(UNet):
    """The UNet's forward before it exported (``git show 4b32b65:src/trainkit/models/unet.py``), as the reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()  # the bottleneck
        for up, block in zip(self.up, self.decoder, strict=True):
            skip = skips.pop()
            x = up(x)
            # Pooling rounded odd sizes down: pad the upsampled map (left/top half, right/bottom the rest).
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if dh or dw:
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


def _trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics, so eval mode computes something a fresh model would not."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None:
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of a tiny UNet (3 classes, trained at 32x32) recording its spec, as `trainkit train` writes."""
    model_spec = ModelSpec("unet", num_classes=3, options=TINY)
    torch.manual_seed(0)
    model = _trained_like(model_spec.build())
    spec = CheckpointSpec(model_spec, Preprocessing(32, mean=MEAN, std=STD))
    state = {"model": model.state_dict(), "extra": {"spec": spec.to_dict()}}
    return trainkit.save_checkpoint(tmp_path / "best.pt", state)


def _checkpoint_model(path: Path) -> nn.Module:
    model, _ = trainkit.models.from_checkpoint(trainkit.load_checkpoint(path))
    return model


# The UNet's padding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("depth", [2, 3])
def test_unet_outputs_unchanged_at_odd_sizes(bilinear: bool, depth: int) -> None:
    torch.manual_seed(0)
    model = _trained_like(UNet(3, 2, base_channels=4, depth=depth, bilinear=bilinear))
    previous = PreviousUNet(3, 2, base_channels=4, depth=depth, bilinear=bilinear).eval()
    previous.load_state_dict(model.state_dict())
    for h, w in [(33, 47), (37, 53), (2**depth, 2**depth + 3), (32, 32)]:
        x = torch.randn(2, 3, h, w)
        assert torch.equal(model(x), previous(x)), (h, w)


def test_unet_torch_export_has_dynamic_height_and_width() -> None:
    """Plain ``torch.export``: the previous UNet failed on a guard on the sizes' parity, this one exports.

    (Down to 2**(depth + 1) pixels: below, the bottleneck is 1 pixel, which plain torch.export guards against;
    ``trainkit.export`` traces without that guard, tested below.)
    """
    model = _trained_like(UNet(3, 2, **TINY))
    dims = ({2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)},)
    with pytest.raises(Exception, match=r"Constraints violated \(height, width\)"):
        torch.export.export(PreviousUNet(3, 2, **TINY).eval(), (torch.randn(1, 3, 32, 32),), dynamic_shapes=dims)
    program = torch.export.export(model, (torch.randn(1, 3, 32, 32),), dynamic_shapes=dims)
    for h, w in [(33, 47), (40, 9), (64, 64)]:
        x = torch.randn(1, 3, h, w)
        assert torch.allclose(program.module()(x), model(x), atol=1e-5), (h, w)


# Arguments ---------------------------------------------------------------------------------------------------


def test_default_sizes_are_the_training_size_and_an_odd_larger_one(checkpoint: Path) -> None:
    spec = CheckpointSpec.from_checkpoint(trainkit.load_checkpoint(checkpoint))
    assert _sizes(None, spec, UNet(3, 2, **TINY), dynamic=True) == [(32, 32), (49, 41)]
    assert _sizes([(64, 48)], None, UNet(3, 2, **TINY), dynamic=True) == [(64, 48), (97, 61)]
    assert _sizes([20], None, UNet(3, 2, **TINY), dynamic=False) == [(20, 20)]


def test_second_size_is_rounded_up_to_the_multiple_an_smp_model_requires() -> None:
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.output_stride = 32  # type: ignore[assignment]
    model.requires_divisible_input_shape = True  # type: ignore[assignment]
    assert _sizes([(64, 64)], None, model, dynamic=True) == [(64, 64), (128, 96)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "torchscript"}, "`format` must be one of 'onnx', 'exported-program', got 'torchscript'"),
        ({"tolerance": 0}, r"`tolerance` must be a finite number > 0 \(1e-4 for fp32\), got 0"),
        ({"format": "exported-program"}, r"must end in \.pt2 for format='exported-program'.*e\.g\. .*m\.pt2"),
        ({"preprocessing": True, "sizes": [32]}, "`preprocessing=True` embeds the preprocessing a checkpoint"),
        ({}, r"`sizes` is needed when a model is given .*sizes=\[\(256, 256\)\]"),
        ({"sizes": [32, 40], "dynamic": False}, "`dynamic=False` fixes the input size.*give one size"),
        ({"sizes": [(32, 32, 3)]}, r"each of `sizes` must be an int or \(height, width\)"),
        ({"sizes": 32}, "`sizes` must be a non-empty list"),
        ({"sizes": [32], "preprocessing": Preprocessing(32, mean=(0.5,), std=(0.5,))}, "1 mean/std value.*3 channel"),
    ],
)
def test_bad_arguments_say_what_is_expected(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        trainkit.export(UNet(3, 2, **TINY), tmp_path / "m.onnx", **kwargs)


def test_out_must_be_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is a folder: give the file to write, e\.g\. .*model\.onnx"):
        trainkit.export(UNet(3, 2, **TINY), tmp_path, sizes=[32])


def test_a_checkpoint_without_spec_is_named(tmp_path: Path) -> None:
    path = trainkit.save_checkpoint(tmp_path / "plain.pt", {"model": UNet(3, 2, **TINY).state_dict()})
    with pytest.raises(CheckpointError, match=r"plain\.pt: the checkpoint records no model spec"):
        trainkit.export(path, tmp_path / "m.onnx")


def test_onnx_without_the_extra_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: the one torch.onnx needs unasked
    with pytest.raises(ImportError, match=r"pip install 'trainkit\[export\]'.*onnxscript is missing"):
        trainkit.export(UNet(3, 2, **TINY), tmp_path / "m.onnx", sizes=[32])


def test_the_top_level_name_stays_the_function() -> None:
    import trainkit._export  # importing the module must not replace `trainkit.export`

    assert trainkit.export is trainkit._export.export
    assert "export" in dir(trainkit)


# Exports, verified -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_export_of_a_checkpoint_runs_in_onnxruntime(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime

    result = trainkit.export(checkpoint, tmp_path / "deploy" / "model.onnx", verbose=False)
    assert (result.path, result.format, result.input_dtype) == (tmp_path / "deploy" / "model.onnx", "onnx", "float32")
    assert list(result.max_abs_diff) == [(32, 32), (49, 41)]
    assert max(result.max_abs_diff.values()) < 1e-4
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["model.onnx"]  # no staging folder left

    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.type == "tensor(float)" and image.shape[:2] == [1, 3]
    assert all(isinstance(d, str) for d in image.shape[2:])  # dynamic height and width
    model = _checkpoint_model(checkpoint)
    x = torch.randn(1, 3, 27, 35)
    (logits,) = session.run(["logits"], {"image": x.numpy()})
    assert logits.shape == (1, 3, 27, 35)
    assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)


@pytest.mark.slow
def test_onnx_with_preprocessing_takes_raw_pixels(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime

    result = trainkit.export(checkpoint, tmp_path / "model.onnx", preprocessing=True, dynamic_batch=True)
    assert result.input_dtype == "uint8" and max(result.max_abs_diff.values()) < 1e-4
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    pixels = torch.randint(0, 256, (3, 3, 41, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    (logits,) = session.run(["logits"], {"image": pixels.numpy()})
    expected = _checkpoint_model(checkpoint)(BatchNormalize(MEAN, STD)(pixels))  # as `trainkit predict` feeds it
    assert (torch.from_numpy(logits) - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_exported_program_with_preprocessing_runs_at_any_size(checkpoint: Path, tmp_path: Path) -> None:
    result = trainkit.export(checkpoint, tmp_path / "model.pt2", "exported-program", preprocessing=True)
    assert result.format == "exported-program" and max(result.max_abs_diff.values()) < 1e-4
    program = torch.export.load(result.path).module()
    model = _checkpoint_model(checkpoint)
    for h, w in [(4, 5), (7, 4), (33, 47)]:  # down to a 1-pixel bottleneck (depth 2: 4..7 pixels)
        pixels = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
        expected = model(BatchNormalize(MEAN, STD)(pixels))
        assert (program(pixels) - expected).abs().max() < 1e-4, (h, w)


@pytest.mark.slow
def test_a_module_is_exported_as_given_and_left_as_it_was(tmp_path: Path) -> None:
    model = UNet(1, 2, base_channels=4, depth=2, bilinear=True).train()
    result = trainkit.export(model, tmp_path / "m.pt2", "exported-program", sizes=[(16, 24), (17, 25)], verbose=False)
    assert list(result.max_abs_diff) == [(16, 24), (17, 25)]
    assert model.training and next(model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_a_torchvision_style_dict_output_exports_its_main_output(tmp_path: Path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.conv(x)
            return {"out": out, "aux": out * 2}

    result = trainkit.export(TwoHeads(), tmp_path / "m.pt2", "exported-program", sizes=[16], verbose=False)
    program = torch.export.load(result.path).module()
    assert program(torch.zeros(1, 3, 16, 16)).shape == (1, 2, 16, 16)


# Models that cannot be exported: the layer and what to do ----------------------------------------------------


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x
        return -x


class CumMax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=2).values


class UpTo40(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[2] > 40 else x


class Reshape32(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], 32, 32)


class OffWhenExported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if torch.compiler.is_exporting() else x


def _with(layer: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2, 1), layer)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "format", "match"),
    [
        (
            Gate(),
            "exported-program",
            r"cannot trace `1` \(Gate\) at .*test_export\.py:\d+ `if x\.mean\(\) > 0:`.*"
            r"torch\.where",
        ),
        (
            CumMax(),
            "onnx",
            r"no ONNX translation for the op `aten\.cummax\.default` used by `1` \(CumMax\).*"
            r"format='exported-program'",
        ),
        (UpTo40(), "onnx", r"inputs where the height must be at most 40.*`dynamic=False`"),
        (
            Reshape32(),
            "onnx",
            r"fails in PyTorch on an input of shape \[1, 3, 49, 41\] \(RuntimeError in "
            r"`1` \(Reshape32\) at .*`return x\.reshape",
        ),
        (
            OffWhenExported(),
            "exported-program",
            r"differs from PyTorch by more than the tolerance: .* 1\.0e\+00 at "
            r"32x32.* was not written",
        ),
    ],
)
def test_a_model_that_cannot_be_exported_is_named(tmp_path: Path, layer: nn.Module, format: str, match: str) -> None:
    out = tmp_path / ("m.onnx" if format == "onnx" else "m.pt2")
    with pytest.raises(ExportError, match=match):
        trainkit.export(_with(layer), out, format, sizes=[32], verbose=False)
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging folder left


@pytest.mark.slow
def test_a_size_bound_model_exports_at_one_size(tmp_path: Path) -> None:
    result = trainkit.export(_with(Reshape32()), tmp_path / "m.onnx", sizes=[32], dynamic=False, verbose=False)
    assert list(result.max_abs_diff) == [(32, 32)] and result.max_abs_diff[(32, 32)] < 1e-4
