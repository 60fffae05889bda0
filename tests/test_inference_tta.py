"""Test-time augmentation: each flip and scale is undone on the output before the mean, the input is left as it
was, and TTA composes with sliding windows either way round."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainkit.inference import TTA, SlidingWindow, sliding_window, tta


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1)).eval()


def test_an_identity_model_gives_the_image_back_so_every_flip_is_undone() -> None:
    image = torch.rand(2, 3, 9, 14)
    for flips in [(), ("h",), ("v",), ("hv",), ("h", "v", "hv")]:
        torch.testing.assert_close(tta(nn.Identity(), image, flips=flips), image)


def test_the_mean_is_over_the_image_and_each_flip_undone() -> None:
    model, image = _conv_model(), torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        outputs = [model(image), model(image.flip(-1)).flip(-1), model(image.flip(-2)).flip(-2)]
        outputs.append(model(image.flip(-2, -1)).flip(-2, -1))
        got = tta(model, image, flips=("h", "v", "hv"))
    torch.testing.assert_close(got, torch.stack(outputs).mean(0))
    assert not torch.allclose(got, outputs[0], atol=1e-4)  # the conv is not flip-equivariant: TTA changed it


def test_scales_resize_the_image_and_the_outputs_back() -> None:
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 24, 32).contiguous()  # smooth: resizing keeps it nearly as it is
    got = tta(nn.Identity(), ramp, flips=(), scales=(0.5, 1.0, 2.0))
    assert got.shape == ramp.shape
    torch.testing.assert_close(got[..., 2:-2], ramp[..., 2:-2], atol=0.01, rtol=0)
    seen: list[tuple[int, ...]] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return torch.ones(x.shape[0], 2, x.shape[2] // 2, x.shape[3] // 2)  # outputs at half the resolution

    out = tta(record, ramp, flips=("h",), scales=(0.75, 1.5))
    assert seen == [(18, 24), (18, 24), (36, 48), (36, 48)]
    assert out.shape == (1, 2, 12, 16)  # the output size at scale 1, whether or not 1 is among the scales
    torch.testing.assert_close(out, torch.ones(1, 2, 12, 16))


def test_integer_images_reach_the_model_in_their_dtype_when_rescaled() -> None:
    dtypes: list[torch.dtype] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        dtypes.append(x.dtype)
        return x.float()

    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    out = tta(record, image, flips=(), scales=(0.5, 1.0))
    assert dtypes == [torch.uint8, torch.uint8] and out.dtype == torch.float32


def test_the_input_is_not_changed() -> None:
    image = torch.rand(1, 3, 8, 8)
    before = image.clone()
    tta(nn.Identity(), image)
    TTA(lambda x: x)(image)
    assert torch.equal(image, before)


def test_tta_of_sliding_windows_and_sliding_windows_of_tta_equal_tta_of_the_whole_image() -> None:
    model, image = _conv_model(), torch.rand(1, 3, 40, 30)
    want = tta(model, image)
    tiled = SlidingWindow(model, window=16, overlap=4, margin=2)  # exact: the margin covers the receptive field
    torch.testing.assert_close(TTA(tiled)(image), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        sliding_window(TTA(model), image, window=16, overlap=4, margin=2), want, atol=1e-5, rtol=1e-5
    )


def test_dict_outputs_and_single_images() -> None:
    model, image = _conv_model(), torch.rand(3, 10, 10)
    want = tta(model, image[None])[0]
    torch.testing.assert_close(tta(lambda x: {"out": model(x), "aux": x}, image), want)
    torch.testing.assert_close(TTA(lambda x: {"seg": model(x)}, main="seg")(image[None])[0], want)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"flips": "hv"}, r"`flips` must be a collection of names such as \('h', 'v', 'hv'\), got the string 'hv'"),
        ({"flips": ("x",)}, r"`flips` must hold distinct names among \('h', 'v', 'hv'\), got \('x',\)"),
        ({"flips": ("h", "h")}, "distinct names"),
        ({"scales": (0.0, 1.0)}, r"each > 0 \(1.0 is the image as it is\)"),
        ({"scales": ()}, "at least one factor"),
    ],
)
def test_bad_augmentations_say_what_is_allowed(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tta(nn.Identity(), torch.rand(1, 1, 4, 4), **options)
    with pytest.raises(ValueError, match=match):
        TTA(nn.Identity(), **options)


def test_images_of_the_wrong_rank_are_refused() -> None:
    with pytest.raises(ValueError, match=r"`images` must be a \[N, C, H, W\] or \[C, H, W\] tensor, got \(4, 4\)"):
        tta(nn.Identity(), torch.rand(4, 4))
