"""Tests for trainkit.models.UNet: shapes for odd sizes, parameter counts by hand, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainkit.models import UNet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def double_conv(cin: int, cout: int) -> int:
    """Two 3×3 convs without bias (k*k*cin*cout each) and two BatchNorms (weight + bias: 2*c each)."""
    return 3 * 3 * cin * cout + 2 * cout + 3 * 3 * cout * cout + 2 * cout


def test_parameter_count_of_the_default_unet_matches_the_layer_formula() -> None:
    encoder = double_conv(3, 64) + double_conv(64, 128) + double_conv(128, 256) + double_conv(256, 512)
    bottleneck = double_conv(512, 1024)
    # Transposed conv 2×2 from 2c to c channels, with bias: 2*2*(2c)*c + c; then double_conv(2c -> c) on the concat.
    decoder = sum(2 * 2 * (2 * c) * c + c + double_conv(2 * c, c) for c in (512, 256, 128, 64))
    head = 64 * 2 + 2  # 1×1 conv 64 -> 2 with bias
    by_hand = encoder + bottleneck + decoder + head
    assert by_hand == 31_037_698
    assert n_params(UNet(3, 2)) == by_hand


def test_parameter_count_of_the_bilinear_unet_matches_the_layer_formula() -> None:
    widths = [8 * 2**i for i in range(4)]  # base_channels=8, depth=3: 8, 16, 32, 64
    encoder = double_conv(1, 8) + sum(double_conv(widths[i], widths[i + 1]) for i in range(3))
    # Bilinear upsample has no weights; the 1×1 conv 2c -> c has (2c)*c + c.
    decoder = sum((2 * c) * c + c + double_conv(2 * c, c) for c in (32, 16, 8))
    head = 8 * 5 + 5
    assert n_params(UNet(1, 5, base_channels=8, depth=3, bilinear=True)) == encoder + decoder + head


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize(
    ("depth", "height", "width"), [(3, 37, 53), (3, 8, 8), (4, 16, 17), (2, 31, 4), (1, 3, 2), (4, 64, 48)]
)
def test_output_has_the_input_size(bilinear: bool, depth: int, height: int, width: int) -> None:
    model = UNet(2, 3, base_channels=4, depth=depth, bilinear=bilinear)
    out = model(torch.randn(2, 2, height, width))
    assert out.shape == (2, 3, height, width) and out.dtype == torch.float32


@pytest.mark.parametrize("bilinear", [False, True])
def test_gradient_reaches_every_parameter(bilinear: bool) -> None:
    torch.manual_seed(0)
    model = UNet(3, 3, base_channels=4, depth=3, bilinear=bilinear)
    logits = model(torch.randn(2, 3, 20, 28))
    F.cross_entropy(logits, torch.randint(0, 3, (2, 20, 28))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0}, r"`UNet\(in_channels=...\)` must be an int >= 1, got 0"),
        ({"out_channels": 2.0}, r"`UNet\(out_channels=...\)` must be an int >= 1, got 2.0"),
        ({"base_channels": True}, r"`UNet\(base_channels=...\)` must be an int >= 1, got True"),
        ({"depth": 0}, r"`UNet\(depth=...\)` must be an int >= 1, got 0"),
        ({"bilinear": "yes"}, r"`UNet\(bilinear=...\)` must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_bad_inputs_get_clear_errors() -> None:
    model = UNet(3, 2, base_channels=4, depth=2)
    with pytest.raises(ValueError, match=r"UNet expects 3 input channels, got 1: build `UNet\(in_channels=1\)`"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"got a 3-D tensor of shape \(3, 16, 16\).*`x.unsqueeze\(0\)`"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match=r"depth=2 needs inputs of at least 4x4 pixels, got 3x16"):
        model(torch.randn(1, 3, 3, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bilinear", [False, True])
def test_unet_trains_on_the_gpu_under_autocast(bilinear: bool) -> None:
    model = UNet(3, 2, base_channels=8, depth=3, bilinear=bilinear).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 37, 53, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (2, 2, 37, 53) and logits.dtype == torch.bfloat16
    F.cross_entropy(logits.float(), torch.randint(0, 2, (2, 37, 53), device="cuda")).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
