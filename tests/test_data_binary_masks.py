"""0/255 masks, the most common binary encoding: refused as class ids (255 would hide the whole foreground),
read as 0/1 with ``target="binary"``, and flagged by ``check``, which suggests the loss weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainkit.data.dataset as dataset_module
from data_layouts import random_image, rectangles
from trainkit.data import SegmentationDataset, check
from trainkit.errors import MaskValueError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def write(root: Path, masks: list[np.ndarray]) -> tuple[Path, Path]:
    images, folder = root / "images", root / "masks"
    images.mkdir(parents=True)
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, mask in enumerate(masks):
        Image.fromarray(random_image(rng)).save(images / f"img{k}.png")
        Image.fromarray(mask, mode="L").save(folder / f"img{k}.png")
    return images, folder


def zero_255(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rectangles(rng, 2, [255]) for _ in range(n)]


def test_0_255_masks_as_class_ids_are_refused_when_the_dataset_is_built(tmp_path: Path) -> None:
    images, masks = write(tmp_path, zero_255(3))
    with pytest.raises(
        MaskValueError,
        match=r"the masks hold only the values 0 and 255 \(e\.g\. .*img0\.png; 3 masks sampled\), and 255 is "
        r"`ignore_index`: with `target='semantic'` every foreground pixel would be ignored .*\(mIoU 0\)\. For binary "
        r"masks \(0 background, 255 foreground\) pass `target='binary'` \(255 becomes 1\); or map the values "
        r"yourself with `value_map=\{0: 0, 255: 1\}`",
    ):
        SegmentationDataset(images, masks, num_classes=2)
    with pytest.raises(
        MaskValueError, match=r"`target='instance'`.*for one object an image \(id 255\), `ignore_index=None`"
    ):
        SegmentationDataset(images, masks, target="instance")


def test_the_fixes_it_proposes_work(tmp_path: Path) -> None:
    raw = zero_255(3)
    images, masks = write(tmp_path, raw)
    binary = SegmentationDataset(images, masks, target="binary")
    mapped = SegmentationDataset(images, masks, value_map={0: 0, 255: 1}, num_classes=2)
    for k in range(3):
        np.testing.assert_array_equal(binary[k][1].numpy(), raw[k] // 255)
        np.testing.assert_array_equal(mapped[k][1].numpy(), raw[k] // 255)
    assert len(SegmentationDataset(images, masks, target="instance", ignore_index=None)[0][1]["labels"]) == 1


def test_masks_with_classes_besides_0_and_255_are_accepted(tmp_path: Path) -> None:
    masks = zero_255(3)
    masks[2][0, :4] = 1  # a VOC-like set: classes with 255 borders; one sampled mask with a class is enough
    images, folder = write(tmp_path, masks)
    assert len(SegmentationDataset(images, folder)) == 3
    only_background = [np.zeros((24, 32), np.uint8)] * 2
    images, folder = write(tmp_path / "empty", only_background)
    assert len(SegmentationDataset(images, folder)) == 2  # no 255 anywhere: nothing is hidden


def test_at_most_a_few_masks_are_read_to_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = write(tmp_path, zero_255(20))
    read: list[str] = []
    real = dataset_module.read_mask
    monkeypatch.setattr(dataset_module, "read_mask", lambda path, **kw: read.append(path.name) or real(path, **kw))
    with pytest.raises(MaskValueError, match=r"8 masks sampled"):
        SegmentationDataset(images, masks)
    assert len(read) == dataset_module.SAMPLED_MASKS == 8
    assert read[0] == "img0.png" and read[-1] == "img19.png"  # first, last and evenly between


def test_check_flags_0_255_masks_and_counts_them_as_binary(tmp_path: Path) -> None:
    raw = zero_255(3)
    images, masks = write(tmp_path, raw)
    report = check(images, masks, num_classes=2)
    assert not report.ok
    assert report.errors[-1].startswith("the masks hold only the values 0 and 255, and 255 is `ignore_index`")
    assert "`target='binary'` (`--target binary`)" in report.errors[-1]
    text = str(report)
    assert "class frequencies (ignore excluded): 0: 100.0%" in text
    assert report.suggested_weights() is None and "suggested" not in text  # one class left: nothing to balance

    binary = check(images, masks, target="binary")
    foreground = int(sum((m == 255).sum() for m in raw))
    background = int(sum((m == 0).sum() for m in raw))
    assert binary.ok, binary.errors
    assert binary.class_histogram == {0: background, 1: foreground}
    assert binary.pos_weight == pytest.approx(background / foreground, rel=1e-5)
    text = str(binary)
    assert f"class frequencies: 0: {100 * background / (background + foreground):.1f}%" in text
    assert f"suggested pos_weight (n_negative / n_positive): {background / foreground:.2f}" in text


def test_check_target_arguments(tmp_path: Path) -> None:
    images, masks = write(tmp_path, zero_255(1))
    with pytest.raises(ValueError, match=r"`target` must be one of \('semantic', 'binary', 'instance'\), got 'mask'"):
        check(images, masks, target="mask")
    with pytest.raises(ValueError, match=r"`threshold` applies to `target='binary'` only"):
        check(images, masks, threshold=127)
    assert check(images, masks, target="binary", threshold=254).class_histogram.keys() == {0, 1}
