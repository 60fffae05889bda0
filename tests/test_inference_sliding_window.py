"""Sliding-window inference: the stitched output is the whole-image forward pass where the model allows it,
every pixel is the exact weighted mean of the windows covering it, and the options are checked with the fix."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from trainkit.data.transforms import BatchNormalize
from trainkit.engine.precision import MixedPrecision
from trainkit.inference import SlidingWindow, blend_weights, sliding_window
from trainkit.inference._grid import NormalisedWeights, axis_grid


def _conv_model(radius: int = 2, classes: int = 3) -> nn.Module:
    """Same-padded 3x3 convolutions: each output pixel sees ``radius`` pixels around it (its receptive field)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(radius - 1):
        layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)]
    layers[-1] = nn.Conv2d(8 if radius > 1 else 3, classes, 3, padding=1)
    return nn.Sequential(*layers).eval()


class _WindowMean(nn.Module):
    """Each window's output is one value a channel: the mean of its input, so windows differ from each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


def _naive(image: torch.Tensor, window: int, stride: int, blend: str) -> torch.Tensor:
    """The definition, with full-size maps: sum of weight * window output over sum of weights, for _WindowMean."""
    _, _, height, width = image.shape
    weights = blend_weights(window, blend)
    total, count = torch.zeros_like(image), torch.zeros(height, width)
    ys, xs = axis_grid(height, window, stride).starts, axis_grid(width, window, stride).starts
    for y, x in itertools.product(ys, xs):
        crop = image[:, :, y : y + window, x : x + window]
        total[:, :, y : y + window, x : x + window] += crop.mean(dim=(2, 3), keepdim=True) * weights
        count[y : y + window, x : x + window] += weights
    return total / count


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("radius", [1, 2, 4])
def test_a_margin_of_the_receptive_field_gives_the_whole_image_forward_pass(blend: str, radius: int) -> None:
    model = _conv_model(radius)
    image = torch.rand(2, 3, 100, 70)  # neither side a multiple of the stride
    with torch.no_grad():
        whole = model(image)
    tiled = sliding_window(model, image, window=32, overlap=2 * radius, blend=blend, margin=radius, sw_batch_size=3)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_without_a_margin_the_window_edges_differ_only_within_the_receptive_field() -> None:
    model, radius = _conv_model(2), 2
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        whole = model(image)
    tiled = sliding_window(model, image, window=32, overlap=8, blend="constant")
    wrong = (tiled - whole).abs().amax(dim=(0, 1)) > 1e-5
    starts = axis_grid(64, 32, 24).starts  # (0, 24, 32): inner window edges at 24, 32 and 56
    near_an_edge = torch.zeros(64, dtype=torch.bool)
    for edge in {s for s in starts if s > 0} | {s + 32 for s in starts if s + 32 < 64}:
        near_an_edge[edge - radius : edge + radius] = True
    assert wrong.any()
    assert not (wrong & ~(near_an_edge[:, None] | near_an_edge[None, :])).any()


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(
    ("window", "overlap", "stride"),
    [(16, 0, 16), (16, 0.25, 12), (16, 0.5, 8), (20, 0.9, 2), (16, 5, 11), (40, 0.25, 30)],  # 20 * 0.1: 2, not 1
)
def test_every_pixel_is_the_weighted_mean_of_the_windows_covering_it(
    blend: str, window: int, overlap: Any, stride: int
) -> None:
    image = torch.rand(1, 2, 37, 53)
    got = sliding_window(_WindowMean(), image, window=window, overlap=overlap, blend=blend)
    before = max(window - 37, 0) // 2  # an image lower than the window is padded with zeros, evenly
    padded = nn.functional.pad(image, (0, 0, before, max(window - 37, 0) - before))
    torch.testing.assert_close(got, _naive(padded, window, stride, blend)[:, :, before : before + 37])


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(("size", "window", "stride", "margin"), [(100, 32, 24, 0), (100, 32, 24, 4), (90, 16, 8, 4)])
def test_normalised_weights_sum_to_one_over_the_image(
    blend: str, size: int, window: int, stride: int, margin: int
) -> None:
    starts = axis_grid(size, window, stride).starts
    weights = NormalisedWeights(blend_weights(window, blend), starts, starts, margin=margin)
    canvas = torch.zeros(size, size)
    for (iy, y), (ix, x) in itertools.product(enumerate(starts), enumerate(starts)):
        canvas[y : y + window, x : x + window] += weights.tile(iy, ix)
    torch.testing.assert_close(canvas, torch.ones(size, size))
    if margin:  # an inner window gives no weight to its margin where a neighbour covers it
        inner = weights.tile(1, 1)
        assert inner[:margin].abs().sum() == 0 and inner[:, -margin:].abs().sum() == 0


def test_window_starts_end_at_the_border_and_small_images_are_padded_evenly() -> None:
    assert axis_grid(100, 32, 24).starts == (0, 24, 48, 68)
    assert axis_grid(32, 32, 24).starts == (0,)
    small = axis_grid(21, 32, 24)
    assert (small.starts, small.pad_before) == ((0,), 5)


@pytest.mark.parametrize("padding_mode", ["constant", "reflect", "replicate"])
def test_an_image_smaller_than_the_window_is_padded_and_cropped_back(padding_mode: str) -> None:
    model = _conv_model(1)
    image = torch.rand(3, 20, 50)
    out = sliding_window(model, image, window=32, overlap=0.25, padding_mode=padding_mode, margin=1)
    assert out.shape == (3, 20, 50)
    padded = nn.functional.pad(image[None], (0, 0, 6, 6), mode=padding_mode)  # 12 rows: 6 above, 6 below
    with torch.no_grad():
        whole = model(padded)[0, :, 6:26]  # every window sees the padded rows as the whole padded image does
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)


def test_same_output_for_any_window_batch_size_and_across_images() -> None:
    model, image = _conv_model(2), torch.rand(3, 3, 40, 40)
    outputs = [sliding_window(model, image, window=16, blend="gaussian", sw_batch_size=b) for b in (1, 5, 100)]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])
    torch.testing.assert_close(outputs[0][1], sliding_window(model, image[1], window=16, blend="gaussian"))


def test_matches_monai_sliding_window_inference() -> None:
    monai_inferers = pytest.importorskip("monai.inferers")
    model, image = _conv_model(3), torch.rand(2, 3, 70, 90)
    for blend in ("constant", "gaussian"):
        with torch.no_grad():
            want = monai_inferers.sliding_window_inference(image, (32, 32), 3, model, overlap=0.25, mode=blend)
        got = sliding_window(model, image, window=32, overlap=0.25, blend=blend, sw_batch_size=3)
        torch.testing.assert_close(got, want.as_tensor() if hasattr(want, "as_tensor") else want, atol=1e-5, rtol=1e-5)


def test_dict_and_tuple_outputs_give_the_main_output() -> None:
    conv = _conv_model(1)
    image = torch.rand(1, 3, 40, 40)
    expected = sliding_window(conv, image, window=16)

    class Torchvisionish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"aux": -self.conv(x), "out": self.conv(x)}

    torch.testing.assert_close(sliding_window(Torchvisionish(), image, window=16), expected)
    torch.testing.assert_close(sliding_window(lambda x: (conv(x), conv(x) * 0), image, window=16), expected)
    torch.testing.assert_close(
        sliding_window(lambda x: {"seg": conv(x), "edges": x}, image, window=16, main="seg"), expected
    )


def test_outputs_at_a_lower_resolution_are_stitched_at_that_resolution() -> None:
    model = nn.Sequential(_conv_model(1), nn.AvgPool2d(2)).eval()
    image = torch.rand(1, 3, 64, 48)
    out = sliding_window(model, image, window=16, overlap=4, blend="gaussian")
    assert out.shape == (1, 3, 32, 24)
    const = sliding_window(lambda x: torch.ones(x.shape[0], 1, x.shape[2] // 2, x.shape[3] // 2), image, window=16)
    torch.testing.assert_close(const, torch.ones(1, 1, 32, 24))
    with pytest.raises(ValueError, match=r"fall between output pixels.*multiples of 2"):
        sliding_window(model, image, window=16, overlap=5)


def test_uint8_images_with_a_window_transform_equal_normalised_float_images() -> None:
    model, normalize = _conv_model(2), BatchNormalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    image = torch.randint(0, 256, (1, 3, 40, 30), dtype=torch.uint8)
    got = sliding_window(model, image, window=16, transform=normalize, blend="gaussian")
    torch.testing.assert_close(got, sliding_window(model, normalize(image), window=16, blend="gaussian"))


def test_output_dtype_and_mixed_precision() -> None:
    model, image = _conv_model(2), torch.rand(1, 3, 40, 40)
    full = sliding_window(model, image, window=16, output_dtype=torch.float64)
    assert full.dtype == torch.float64
    for amp in ("bf16", MixedPrecision("bf16", "cpu")):
        half = sliding_window(model, image, window=16, amp=amp)
        assert half.dtype == torch.float32  # accumulated in the output dtype, not in bf16
        torch.testing.assert_close(half.double(), full, atol=0.05, rtol=0.05)
        assert not torch.equal(half.double(), full)


def test_a_model_in_training_mode_with_batchnorm_gets_a_warning() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2))
    with pytest.warns(UserWarning, match=r"training mode.*call `model.eval\(\)`"):
        sliding_window(model, torch.rand(1, 3, 20, 20), window=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sliding_window(model.eval(), torch.rand(1, 3, 20, 20), window=16)
        sliding_window(nn.Conv2d(3, 2, 1), torch.rand(1, 3, 20, 20), window=16)  # no layer that depends on the mode


def test_the_module_form_predicts_like_the_function_and_keeps_the_model_device() -> None:
    model, image = _conv_model(2), torch.rand(1, 3, 50, 30)
    tiled = SlidingWindow(model, window=16, overlap=4, blend="gaussian", margin=2)
    torch.testing.assert_close(
        tiled(image), sliding_window(model, image, window=16, overlap=4, blend="gaussian", margin=2)
    )
    assert list(tiled.parameters()) == list(model.parameters())
    tiled.train()
    assert model.training
    tiled.eval()
    assert not model.training


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"window": 0}, ValueError, r"`window` must be a positive whole number of pixels or \(height, width\), got 0"),
        ({"window": (16, 16, 3)}, ValueError, "`window` must be"),
        ({"overlap": 1.0}, ValueError, r"fraction of the window in \[0, 1\) .* or whole pixels from 0 to 15"),
        ({"overlap": 16}, ValueError, "whole pixels from 0 to 15 for a window of 16, got 16"),
        ({"overlap": (0.25,)}, ValueError, r"one value or \(vertical, horizontal\)"),
        ({"blend": "linear"}, ValueError, r"`blend` must be one of \('constant', 'gaussian'\), got 'linear'"),
        ({"margin": 3}, ValueError, r"`margin` must be .* from 0 to half the overlap \(2 .*raise `overlap` or lower"),
        ({"margin": -1}, ValueError, "`margin` must be"),
        ({"sw_batch_size": 0}, ValueError, "`sw_batch_size` must be a positive integer"),
        ({"padding_mode": "circular"}, ValueError, "`padding_mode` must be one of"),
        ({"output_dtype": torch.int64}, ValueError, "`output_dtype` must be a floating-point"),
        ({"amp": "fp8"}, ValueError, "is not a precision mode"),
        ({"transform": 3}, TypeError, "`transform` must be callable"),
        ({"output_device": "gpu"}, ValueError, r"`device='gpu'` is not a device PyTorch knows; use 'auto', 'cpu'"),
    ],
)
def test_bad_options_say_what_is_allowed(options: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs = {"window": 16, "overlap": 4, **options}
    with pytest.raises(error, match=match):
        sliding_window(nn.Identity(), torch.rand(1, 3, 40, 40), **kwargs)


def test_bad_images_and_outputs_say_what_was_expected() -> None:
    with pytest.raises(
        ValueError, match=r"`images` must be a non-empty \[N, C, H, W\] or \[C, H, W\] tensor, got \(40, 40\)"
    ):
        sliding_window(nn.Identity(), torch.rand(40, 40), window=16)
    with pytest.raises(
        ValueError, match=r"must return \[windows, K, h, w\] for \[windows, C, h, w\] windows, got \(4, 16, 16\)"
    ):
        sliding_window(lambda x: x[:, 0], torch.rand(1, 3, 40, 40), window=16)
    with pytest.raises(
        ValueError, match=r"padding_mode='reflect'.* cannot pad the 5x40 image.*use padding_mode='replicate'"
    ):
        sliding_window(nn.Identity(), torch.rand(1, 3, 5, 40), window=16, padding_mode="reflect")
    with pytest.raises(TypeError, match=r"unknown options \['windows'\]"):
        SlidingWindow(nn.Identity(), window=16, windows=3)
    with pytest.raises(ValueError, match=r"`blend` must be one of \('constant', 'gaussian'\), got 'linear'"):
        blend_weights(8, "linear")
