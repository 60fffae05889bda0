"""Tests for trainkit.data.transforms: joint geometry, nearest masks, ignore padding, BatchNormalize."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from trainkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchNormalize, eval_preset, train_preset

H, W = 48, 40  # non-square on purpose
OFFSET = 1000  # coordinate codes start above ignore_index=255 so the two never collide


def coordinate_sample() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Image with R = 4x, G = 4y, B = 200 and a mask holding the code of the same (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([4 * xs, 4 * ys, torch.full_like(xs, 200)]).to(torch.uint8)
    mask = OFFSET + ys * W + xs
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def geometry_preset(size: int | tuple[int, int] = 32, **kwargs: object):
    return train_preset(size, normalize=False, color_jitter=0, **kwargs)


def test_train_preset_moves_image_and_mask_identically() -> None:
    image, mask = coordinate_sample()
    preset = geometry_preset(32)
    flipped = unflipped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out_mask = preset(image, mask)
        assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
        padding = out_image[2] == 0  # B is 200 wherever the source image is, 0 where padding was added
        assert torch.equal(out_mask == 255, padding)
        defined = ~padding
        code = out_mask[defined] - OFFSET
        mask_x, mask_y = (code % W).float(), (code // W).float()
        image_x, image_y = out_image[0][defined].float() / 4, out_image[1][defined].float() / 4
        # Bilinear (image) and nearest (mask) sample the same source point up to a pixel or two of rounding;
        # a flip or crop applied to one and not the other would be off by up to the image width.
        assert (image_x - mask_x).abs().max() <= 2.5, seed
        assert (image_y - mask_y).abs().max() <= 2.5, seed
        row = out_mask[16][out_mask[16] != 255]
        if len(row) > 1:
            flipped += int((row[-1] - row[0]).item() < 0)
            unflipped += int((row[-1] - row[0]).item() > 0)
    assert flipped > 5 and unflipped > 5  # both branches of the flip were exercised


def _offsets(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, where the image says it came from minus where the mask says (x and y, source pixels)."""
    defined = mask != 255
    code = mask[defined] - OFFSET
    dx = image[0][defined].float() / 4 - (code % W).float()
    dy = image[1][defined].float() / 4 - (code // W).float()
    return dx, dy


@pytest.mark.parametrize("size", [(23, 31), (36, 30), (60, 50), (96, 80)])
def test_resized_masks_stay_on_their_image_to_half_a_pixel(size: tuple[int, int]) -> None:
    # torchvision's default `nearest` samples source pixel floor(i * in / out): the mask drifts by up to 1.5
    # source pixels (0.3-1.0 on average) from the bilinear image; `nearest-exact` samples the image's centres.
    image, mask = coordinate_sample()
    out_image, out_mask = eval_preset(size, normalize=False)(image, mask)
    inner = (slice(2, -2), slice(2, -2))  # the antialias filter is cut at the border
    dx, dy = _offsets(out_image[(slice(None), *inner)], out_mask[inner])
    assert dx.abs().max() <= 0.5 and dy.abs().max() <= 0.5
    assert abs(dx.mean()) < 0.2 and abs(dy.mean()) < 0.2
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = geometry_preset(size, scale=(0.7, 1.6))(image, mask)
        dx, dy = _offsets(out_image[(slice(None), *inner)], out_mask[inner])
        assert abs(dx.mean()) < 0.2 and abs(dy.mean()) < 0.2, seed


def test_train_preset_is_reproducible_for_a_seed() -> None:
    image, mask = coordinate_sample()
    preset = train_preset(24, normalize=False)
    torch.manual_seed(3)
    first = preset(image, mask)
    torch.manual_seed(3)
    second = preset(image, mask)
    torch.manual_seed(4)
    third = preset(image, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], third[1])


def test_color_jitter_changes_the_image_only() -> None:
    image, mask = coordinate_sample()
    torch.manual_seed(11)
    plain_image, plain_mask = train_preset(32, normalize=False, color_jitter=0)(image, mask)
    torch.manual_seed(11)
    jittered_image, jittered_mask = train_preset(32, normalize=False, color_jitter=0.5)(image, mask)
    assert torch.equal(plain_mask, jittered_mask)
    assert not torch.equal(plain_image, jittered_image)


def test_hue_is_kept_unless_asked_for() -> None:
    def jitter(preset: v2.Compose) -> v2.ColorJitter:
        return next(t for t in preset.transforms if isinstance(t, v2.ColorJitter))

    assert jitter(train_preset(32, color_jitter=0.2)).hue is None
    assert jitter(train_preset(32, color_jitter=0.2)).brightness == (0.8, 1.2)
    assert jitter(train_preset(32, color_jitter=0.0, hue=0.1)).hue == (-0.1, 0.1)
    assert not any(isinstance(t, v2.ColorJitter) for t in train_preset(32, color_jitter=0.0).transforms)


def test_deterministic_flip_on_plain_tensors() -> None:
    image, mask = coordinate_sample()
    preset = geometry_preset((H, W), scale=(1.0, 1.0), hflip=1.0)
    out_image, out_mask = preset(image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor))
    assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out_mask, mask.flip(-1))


def instance_sample() -> tuple[tv_tensors.Image, dict[str, torch.Tensor]]:
    """Three rectangles, object k painted R = 60 * k, near the borders so crops cut some of them."""
    rects = [(1, 2, 12, 20), (20, 25, 38, 46), (28, 3, 39, 14)]  # x1, y1, x2, y2 (inclusive pixels)
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    image[2] = 200
    masks = torch.zeros(len(rects), H, W, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        masks[k, y1 : y2 + 1, x1 : x2 + 1] = True
        image[0, y1 : y2 + 1, x1 : x2 + 1] = 60 * (k + 1)
    boxes = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel edges: x2 is exclusive
    target = {
        "masks": tv_tensors.Mask(masks),
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W)),
        "labels": torch.tensor([1, 2, 3]),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(3, dtype=torch.int64),
        "image_id": torch.tensor([7]),
    }
    return tv_tensors.Image(image), target


def test_boxes_masks_and_labels_move_together() -> None:
    image, target = instance_sample()
    preset = geometry_preset(32)
    counts = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out = preset(image, target)
        n = len(out["labels"])
        counts.add(n)
        assert out["masks"].shape == (n, 32, 32) and out["masks"].dtype == torch.bool
        assert isinstance(out["masks"], tv_tensors.Mask) and isinstance(out["boxes"], tv_tensors.BoundingBoxes)
        assert out["boxes"].shape == (n, 4) and out["iscrowd"].shape == (n,)
        assert torch.equal(out["image_id"], torch.tensor([7]))
        padding = out_image[2] == 0
        assert not (out["masks"] & padding).any(), "padding must be background in instance masks"
        assert out["masks"].flatten(1).any(1).all(), "instances emptied by the crop are dropped"
        tight = masks_to_boxes(out["masks"]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        assert (out["boxes"].as_subclass(torch.Tensor) - tight).abs().max() <= 2.5, seed
        boxes = out["boxes"].as_subclass(torch.Tensor)
        assert torch.allclose(out["area"], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        for mask, label in zip(out["masks"], out["labels"], strict=True):
            # The brightest pixel under each mask has the colour painted for its label (labels are 60 apart;
            # bilinear edges only blend towards the black gaps): masks, labels and image agree.
            painted = out_image[0][mask].max().item()
            assert 60 * label.item() - 20 <= painted <= 60 * label.item(), seed
    assert 3 in counts and min(counts) < 3  # some crops kept every object, some dropped one


def test_eval_preset_keeps_box_format_and_recomputes_area() -> None:
    image = tv_tensors.Image(torch.zeros(3, 10, 12, dtype=torch.uint8))
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5:10, 0:2] = True
    target = {
        "masks": tv_tensors.Mask(masks),
        "boxes": tv_tensors.BoundingBoxes([[2, 1, 5, 3], [0, 5, 2, 5]], format="XYWH", canvas_size=(10, 12)),
        "labels": torch.tensor([4, 5]),
        "area": torch.tensor([15.0, 10.0]),
    }
    _, out = eval_preset((20, 24), normalize=False)(image, target)
    assert out["boxes"].format == tv_tensors.BoundingBoxFormat.XYWH
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[4.0, 2, 10, 6], [0, 10, 4, 10]]))
    assert torch.equal(out["area"], torch.tensor([60.0, 40.0])) and torch.equal(out["labels"], torch.tensor([4, 5]))


def test_eval_preset_resizes_masks_with_nearest_neighbour() -> None:
    torch.manual_seed(0)
    values = torch.tensor([0, 3, 7, 255])
    mask = tv_tensors.Mask(values[torch.randint(0, 4, (H, W))])
    image = tv_tensors.Image(torch.randint(0, 256, (3, H, W), dtype=torch.uint8))
    _, small = eval_preset((23, 31), normalize=False)(image, mask)
    assert set(small.unique().tolist()) <= {0, 3, 7, 255}
    assert small.dtype == torch.int64 and small.shape == (23, 31)
    _, double = eval_preset((2 * H, 2 * W), normalize=False)(image, mask)
    assert torch.equal(double, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_train_preset_pads_masks_with_ignore_index() -> None:
    image = tv_tensors.Image(torch.full((3, 32, 32), 9, dtype=torch.uint8))
    mask = torch.ones(32, 32, dtype=torch.int64)
    mask[:2] = 255  # an ignore band in the source survives the resize
    preset = geometry_preset(32, scale=(0.5, 0.5), hflip=0.0)
    torch.manual_seed(0)
    out_image, out_mask = preset(image, tv_tensors.Mask(mask))
    assert (out_mask == 1).sum() == 16 * 15 and (out_image == 9).sum() == 3 * 16 * 16
    assert (out_mask == 255).sum() == 32 * 32 - 16 * 15
    torch.manual_seed(0)
    _, custom = train_preset(32, scale=(0.5, 0.5), hflip=0.0, normalize=False, ignore_index=100)(
        image, tv_tensors.Mask(torch.ones(32, 32, dtype=torch.uint8))
    )
    assert (custom == 100).sum() == 32 * 32 - 16 * 16 and custom.dtype == torch.int64


@pytest.mark.parametrize("make", [lambda: train_preset((24, 20)), lambda: eval_preset((24, 20))])
def test_normalized_output_dtypes_and_shapes(make) -> None:
    image = tv_tensors.Image(torch.full((3, H, W), 255, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(H, W, dtype=torch.uint8))
    torch.manual_seed(0)
    out_image, out_mask = make()(image, mask)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 24, 20)
    assert out_mask.dtype == torch.int64 and out_mask.shape == (24, 20)
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    defined = out_mask != 255
    assert torch.allclose(out_image[:, defined].amax(dim=1), white, atol=0.05)


def test_eval_preset_without_normalize_keeps_uint8() -> None:
    image = tv_tensors.Image(torch.zeros(1, 10, 10, dtype=torch.uint8))
    out_image, _ = eval_preset(8, normalize=False)(image, tv_tensors.Mask(torch.zeros(10, 10, dtype=torch.int64)))
    assert out_image.dtype == torch.uint8 and out_image.shape == (1, 8, 8)


def test_batch_normalize_values_and_containers() -> None:
    normalize = BatchNormalize(mean=(0.5, 0.25), std=(0.5, 0.25))
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).repeat(2, 2, 1, 1)
    expected = torch.tensor([[-1.0, -0.6, 1.0], [-1.0, -0.2, 3.0]]).view(1, 2, 1, 3).repeat(2, 1, 1, 1)
    masks = torch.zeros(2, 1, 3, dtype=torch.int64)
    out = normalize(images)
    assert out.dtype == torch.float32 and torch.allclose(out, expected)
    as_tuple = normalize((images, masks))
    assert isinstance(as_tuple, tuple) and torch.allclose(as_tuple[0], expected) and as_tuple[1] is masks
    as_list = normalize([images, masks])
    assert isinstance(as_list, list) and torch.allclose(as_list[0], expected) and as_list[1] is masks
    as_dict = normalize({"image": images, "mask": masks})
    assert torch.allclose(as_dict["image"], expected) and as_dict["mask"] is masks
    floats = images.float() / 255
    assert torch.allclose(normalize(floats), expected)  # float input: normalised, not scaled again


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ("not a batch", TypeError, "expects an image tensor"),
        (torch.zeros(1, 3, 2, 2, dtype=torch.uint8), ValueError, r"expects images \[N, 2, H, W\], got shape"),
        (torch.zeros(2, 2, 2, dtype=torch.uint8), ValueError, r"got shape \(2, 2, 2\)"),
        (torch.zeros(1, 2, 2, 2, dtype=torch.int32), TypeError, "uint8 or floating-point"),
    ],
)
def test_batch_normalize_rejects_bad_batches(batch: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BatchNormalize((0.5, 0.5), (0.5, 0.5))(batch)


def test_batch_normalize_rejects_bad_statistics() -> None:
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        BatchNormalize((0.1, 0.2, 0.3), (1.0, 1.0))
    with pytest.raises(ValueError, match=r"every `std` value must be > 0, got \(1.0, 0.0\)"):
        BatchNormalize((0.1, 0.2), (1.0, 0.0))
    with pytest.raises(ValueError, match="every `std` value must be > 0"):
        train_preset(8, std=(1.0, 0.0, 1.0))
    assert "mean=(0.1, 0.2)" in repr(BatchNormalize((0.1, 0.2), (1.0, 1.0)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": "big"}, TypeError, "`size` must be an int or a pair of ints"),
        ({"size": (8, 8, 8)}, TypeError, "`size` must be an int or a pair of ints"),
        ({"size": 0}, ValueError, "`size` must be positive, got 0"),
        ({"size": 8, "scale": (2.0, 1.0)}, ValueError, r"`scale` must be a pair \(low, high\)"),
        ({"size": 8, "hflip": 1.5}, ValueError, r"`hflip` is a probability in \[0, 1\], got 1.5"),
        ({"size": 8, "color_jitter": -0.1}, ValueError, "`color_jitter` must be >= 0"),
        ({"size": 8, "hue": 0.6}, ValueError, r"`hue` is the largest hue shift, in \[0, 0.5\]"),
    ],
)
def test_train_preset_rejects_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        train_preset(**kwargs)


def test_presets_reject_inputs_outside_the_contract() -> None:
    image = tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    preset = eval_preset(8)
    with pytest.raises(TypeError, match=r"image as a `tv_tensors.Image` \[C, H, W\], got ndarray"):
        preset(image.numpy(), tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.int64)))
    with pytest.raises(TypeError, match=r"got shape \(1, 3, 8, 8\)"):
        preset(image[None], tv_tensors.Mask(torch.zeros(8, 8, dtype=torch.int64)))
    with pytest.raises(ValueError, match=r"size of the image \(8, 8\), got shape \(8, 9\)"):
        preset(image, torch.zeros(8, 9, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"or a detection dict .* got list"):
        preset(image, [1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_normalize_on_the_gpu_matches_the_cpu() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    normalize = BatchNormalize()
    on_gpu = normalize((images.cuda(), torch.zeros(2, 8, 8, dtype=torch.int64).cuda()))
    assert on_gpu[0].device.type == "cuda" and on_gpu[0].dtype == torch.float32
    assert torch.allclose(on_gpu[0].cpu(), normalize(images), atol=1e-6)
    half = normalize((images.float() / 255).half().cuda())  # float input in [0, 1]: normalised in its own dtype
    assert half.dtype == torch.float16 and torch.allclose(half.float().cpu(), normalize(images), atol=1e-2)
