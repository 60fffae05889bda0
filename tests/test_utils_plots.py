"""Tests for trainkit.utils.plots: PNG files of the expected size, the palette, lazy matplotlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainkit.utils.plots import palette, plot_curves, plot_predictions

HISTORY = [
    {"epoch": 0, "train/loss": 1.0, "val/loss": 1.1, "val/miou": 0.2, "lr": 0.01},
    {"epoch": 1, "train/loss": 0.6, "val/loss": 0.8, "val/miou": 0.5, "lr": 0.01},
    {"epoch": 2, "train/loss": 0.4, "val/miou": 0.7, "lr": 0.001},  # no val/loss this epoch: skipped
]


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_palette_is_fixed_distinct_and_marks_background_and_ignore() -> None:
    colours = palette(256)
    assert colours == palette(256)
    assert len(set(colours)) == 256
    assert colours[0] == (0, 0, 0) and colours[255] == (255, 255, 255)
    assert palette(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert palette(21)[20] == (0, 64, 128)  # Pascal VOC's "tvmonitor"


@pytest.mark.parametrize("bad", [0, 257, 2.0, True])
def test_palette_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"`num_classes` must be an int in 1..256"):
        palette(bad)  # type: ignore[arg-type]


def test_plot_curves_writes_a_two_panel_png(tmp_path) -> None:
    path = plot_curves(HISTORY, tmp_path / "sub" / "curves.png", metrics=("val/miou", "missing/key"))
    assert path == tmp_path / "sub" / "curves.png"
    pixels = read_png(path)
    assert pixels.shape == (400, 1000, 3)
    left, right = pixels[:, :500], pixels[:, 500:]
    # Both panels hold drawn lines: matplotlib's first two cycle colours (blue, orange) on the left, blue right.
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])
    assert (np.abs(left - blue).sum(-1) < 30).sum() > 50 and (np.abs(left - orange).sum(-1) < 30).sum() > 50
    assert (np.abs(right - blue).sum(-1) < 30).sum() > 50 and (np.abs(right - orange).sum(-1) < 30).sum() == 0


def test_plot_curves_rejects_an_empty_history(tmp_path) -> None:
    with pytest.raises(ValueError, match="`history` must be a non-empty list of dicts"):
        plot_curves([], tmp_path / "c.png")
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        plot_curves([0.5, 0.4], tmp_path / "c.png")  # type: ignore[list-item]


def test_plot_predictions_writes_rows_of_three_panels(tmp_path) -> None:
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    targets = torch.zeros(8, 16, 16, dtype=torch.int64)
    targets[:, 4:12, 4:12] = 1
    targets[:, 0] = 255
    logits = torch.zeros(8, 3, 16, 16)
    logits[:, 2] = 1.0  # predicts class 2 everywhere
    path = plot_predictions(images, targets, logits, tmp_path / "p.png", num_classes=3, max_rows=2)
    pixels = read_png(path)
    assert pixels.shape == (2 * 200 + 40, 600, 3)
    # On a black image: truth blends class 1 half-and-half, prediction paints class 2 everywhere.
    class1, class2 = np.array(palette(3)[1]) // 2, np.array(palette(3)[2]) // 2
    truth, prediction = pixels[:400, 200:400], pixels[:400, 400:]
    assert (np.abs(truth.astype(int) - class1).sum(-1) <= 3).sum() > 2000
    assert (np.abs(prediction.astype(int) - class2).sum(-1) <= 3).sum() > 2 * 10000
    assert (np.abs(prediction.astype(int) - class1).sum(-1) <= 3).sum() == 0


def test_plot_predictions_denormalises_float_images(tmp_path) -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    images = torch.full((1, 3, 16, 16), (0.25 - 0.5) / 0.25)  # a uniform grey of 0.25 once de-normalised
    masks = torch.zeros(1, 16, 16, dtype=torch.int64)
    path = plot_predictions(images, masks, masks, tmp_path / "p.png", num_classes=2, mean=mean, std=std)
    pixels = read_png(path)
    assert pixels.shape == (240, 600, 3)
    assert (np.abs(pixels[:200].astype(int) - 64).sum(-1) <= 3).sum() > 3 * 10000  # 0.25 * 255 in all three panels


def test_plot_predictions_accepts_grayscale_numpy(tmp_path) -> None:
    images = np.full((2, 1, 8, 8), 200, dtype=np.uint8)
    masks = np.zeros((2, 8, 8), dtype=np.int64)
    pixels = read_png(plot_predictions(images, masks, masks, tmp_path / "g.png", num_classes=1))
    assert pixels.shape == (440, 600, 3)
    assert (np.abs(pixels.astype(int) - 200).sum(-1) <= 3).sum() > 6 * 10000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": torch.zeros(1, 2, 8, 8)}, r"`images` must be \[N, C, H, W\] with C = 1 or 3"),
        ({"targets": torch.zeros(1, 8, 9)}, r"`targets` must be \[N, H, W\] = \(1, 8, 8\)"),
        ({"preds": torch.zeros(2, 8, 8)}, r"`preds` must be \[N, H, W\]"),
        ({"mean": (0.5, 0.5, 0.5)}, "give both `mean` and `std`"),
        ({"max_rows": 0}, "`max_rows` must be >= 1, got 0"),
        ({"num_classes": 0}, "`num_classes` must be a positive int, got 0"),
    ],
)
def test_plot_predictions_rejects_bad_inputs(tmp_path, kwargs: dict, match: str) -> None:
    args = {
        "images": torch.zeros(1, 3, 8, 8),
        "targets": torch.zeros(1, 8, 8),
        "preds": torch.zeros(1, 8, 8),
        "path": tmp_path / "x.png",
        "num_classes": 2,
    }
    with pytest.raises(ValueError, match=match):
        plot_predictions(**{**args, **kwargs})
    assert not (tmp_path / "x.png").exists()


def test_importing_plots_does_not_import_matplotlib(tmp_path) -> None:
    code = (
        "import sys\n"
        "import trainkit.utils.plots as plots\n"
        "assert 'matplotlib' not in sys.modules, 'imported at module level'\n"
        f"plots.plot_curves([{{'epoch': 0, 'train/loss': 1.0}}], {str(tmp_path / 'c.png')!r})\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot global state touched'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").exists()


def test_plot_predictions_legend_names_must_match_the_classes(tmp_path: Path) -> None:
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    masks = torch.zeros(1, 8, 8, dtype=torch.int64)
    out = plot_predictions(images, masks, masks, tmp_path / "p.png", num_classes=2, class_names=["bg", "shape"])
    assert out.is_file()
    with pytest.raises(ValueError, match="`class_names` has 1 names for `num_classes=2`"):
        plot_predictions(images, masks, masks, tmp_path / "q.png", num_classes=2, class_names=["bg"])
