"""Draw the pictures of docs/inference.md: a large synthetic image predicted whole, by windows and with TTA.

    python docs/inference_figures.py                    # trains the model (a few minutes on 2 CPU cores)
    python docs/inference_figures.py --weights w.pt     # reuses (or first writes) the trained weights

The model is the demo's, trained briefly here: ``UNet(3, 4, base_channels=16, depth=4)`` on 480 synthetic
64 × 64 images of ``trainkit.data.make_shapes`` (flips and colour jitter, AdamW with one-cycle at 3e-3, Dice +
cross-entropy, 20 epochs, fp32 on the CPU, seed 0). The large image is drawn by the same shape and
background rules at the same scale: one canvas of 720 × 1008 pixels whose background varies smoothly across
it, with 1 to 4 shapes in each 72-pixel cell. It is predicted five ways: whole (a fully convolutional net
takes it in one pass: the reference), by 64-pixel windows without overlap (the training size; the seams),
with overlap 0.25 and constant or Gaussian blending, and Gaussian windows under flip TTA. Writes
``docs/images/inference_tiles.png`` and ``docs/images/inference_seams.png`` and prints each variant's mIoU
against the canvas's ground truth and its pixel agreement with the whole-image prediction.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.synthetic import SHAPE_CLASSES, _place_shape, _shape_colour, _smooth_noise
from trainkit.data.transforms import BatchNormalize, train_preset
from trainkit.inference import TTA, SlidingWindow, to_class_ids
from trainkit.losses import DiceCELoss
from trainkit.metrics import MeanIoU
from trainkit.models import UNet
from trainkit.utils.plots import palette

IMAGES = Path(__file__).resolve().parent / "images"
CELL, ROWS, COLS = 72, 10, 14  # the canvas: 720 x 1008


def train(epochs: int) -> torch.nn.Module:
    trainkit.seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_shapes(Path(tmp) / "shapes", n=480, size=64, seed=0)
        preset = train_preset(64, scale=(1.0, 1.0), normalize=False)
        data = SegmentationDataset(root / "PNGImages", root / "SemanticMasks", mask_suffix="_mask", transforms=preset)
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, collate_fn=collate)
        model = UNet(3, 4, base_channels=16, depth=4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(loader))
        trainer = trainkit.Trainer(
            model, optimizer, DiceCELoss(), scheduler=schedule, scheduler_interval="step", amp=False,
            device="cpu", seed=0, progress=False, batch_transform=BatchNormalize(),
        )  # fmt: skip
        trainer.fit(loader, epochs=epochs)
    return model.eval()


def canvas(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[3, H, W]`` uint8 image and its ``[H, W]`` class ids: shapes at the training scale on one background."""
    rng = np.random.default_rng(seed)
    height, width = ROWS * CELL, COLS * CELL
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    side = max(height, width) // 64  # the training images' background frequencies, at the same pixel scale
    image = (
        base
        + 45 * _smooth_noise(rng, 4 * side, width, width)[:height]
        + 15 * _smooth_noise(rng, 12 * side, width, width)[:height]
    )
    truth = np.zeros((height, width), dtype=np.uint8)
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5
    for row in range(ROWS):
        for col in range(COLS):
            y0, x0 = row * CELL + int(rng.integers(0, CELL - 64)), col * CELL + int(rng.integers(0, CELL - 64))
            cell = np.zeros((64, 64), dtype=np.uint8)
            areas: list[int] = []
            for _ in range(int(rng.integers(1, 5))):
                k = int(rng.integers(len(SHAPE_CLASSES)))
                placed = _place_shape(rng, ys, xs, SHAPE_CLASSES[k], cell, areas)
                if placed is None:
                    continue
                region, shade = placed
                patch = image[y0 : y0 + 64, x0 : x0 + 64]
                patch[region] = _shape_colour(rng, base) + shade[region][:, None] * 30
                areas.append(int(region.sum()))
                cell[region] = len(areas)
                truth[y0 : y0 + 64, x0 : x0 + 64][region] = k + 1
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    pixels = torch.from_numpy(np.clip(image, 0, 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous()
    return pixels, torch.from_numpy(truth).long()


def predict_all(model: torch.nn.Module, image: torch.Tensor) -> dict[str, tuple[torch.Tensor, float]]:
    normalize = BatchNormalize()
    ways: dict[str, Any] = {
        "whole image": lambda x: model(normalize(x)),
        "windows of 64, no overlap": SlidingWindow(model, window=64, overlap=0, transform=normalize),
        "overlap 0.25, constant": SlidingWindow(model, window=64, overlap=0.25, transform=normalize),
        "overlap 0.25, Gaussian": SlidingWindow(model, window=64, overlap=0.25, blend="gaussian", transform=normalize),
        "Gaussian + flip TTA": TTA(
            SlidingWindow(model, window=64, overlap=0.25, blend="gaussian", transform=normalize)
        ),
    }
    results = {}
    with torch.inference_mode():
        for name, forward in ways.items():
            start = time.perf_counter()
            logits = forward(image[None])
            results[name] = (logits[0], time.perf_counter() - start)
    return results


def _colour(ids: torch.Tensor) -> np.ndarray:
    return np.asarray(palette(256), dtype=np.uint8)[ids.numpy()]


CROP = np.s_[144:432, 144:576]  # 288 x 432 pixels of the canvas, shown at full resolution


def _grid(ax: Any, starts: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    """Draw the window edges of a 64-pixel grid (the windows without overlap) over a panel of the crop."""
    for a, (lines, low, high) in enumerate(((starts[0], 144, 432), (starts[1], 144, 576))):
        for edge in (s - low for s in lines if low < s < high):
            (ax.axhline if a == 0 else ax.axvline)(edge - 0.5, color="white", lw=0.6, alpha=0.5)


def figures(image: torch.Tensor, truth: torch.Tensor, results: dict[str, tuple[torch.Tensor, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainkit.inference._grid import axis_grid

    grid = (axis_grid(image.shape[1], 64, 64).starts, axis_grid(image.shape[2], 64, 64).starts)
    ids = {name: to_class_ids(logits) for name, (logits, _) in results.items()}
    panels = [("image", image.permute(1, 2, 0).numpy()), ("ground truth", _colour(truth))]
    panels += [(f"{name} (mIoU {_miou(pred, truth):.3f})", _colour(pred)) for name, pred in ids.items()]
    del panels[4]  # constant blending: in the second figure
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 6.4))
    for ax, (title, picture) in zip(axes.flat, panels, strict=True):
        ax.imshow(picture[CROP], interpolation="nearest")
        if title.startswith("windows"):
            _grid(ax, grid)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(IMAGES / "inference_tiles.png", dpi=90)
    plt.close(fig)

    # The seams: how far each tiled prediction's probabilities are from the whole-image pass.
    whole = results["whole image"][0].softmax(0)
    names = ["windows of 64, no overlap", "overlap 0.25, constant", "overlap 0.25, Gaussian", "Gaussian + flip TTA"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.6))
    for ax, name in zip(axes.flat, names, strict=True):
        gap = (results[name][0].softmax(0) - whole).abs().amax(0).numpy()
        shown = ax.imshow(gap[CROP], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        if name.startswith("windows"):
            _grid(ax, grid)
        ax.set_title(f"{name}: max |p - p_whole|", fontsize=10)
        ax.axis("off")
    fig.colorbar(shown, ax=axes, fraction=0.025)
    fig.savefig(IMAGES / "inference_seams.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def _miou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    metric = MeanIoU(num_classes=4)
    metric.update(pred[None], truth[None])
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="the trained weights: read when the file exists, else written")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.weights is not None and args.weights.exists():
        model = UNet(3, 4, base_channels=16, depth=4)
        model.load_state_dict(torch.load(args.weights, weights_only=True))
        model.eval()
    else:
        start = time.perf_counter()
        model = train(args.epochs)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        if args.weights is not None:
            torch.save(model.state_dict(), args.weights)
    image, truth = canvas()
    results = predict_all(model, image)
    whole = to_class_ids(results["whole image"][0])
    print(f"{'prediction':<28}{'mIoU':>7}{'= whole':>9}{'seconds':>9}")
    for name, (logits, seconds) in results.items():
        ids = to_class_ids(logits)
        agree = (ids == whole).float().mean().item()
        print(f"{name:<28}{_miou(ids, truth):>7.3f}{agree:>9.3f}{seconds:>9.2f}")
    figures(image, truth, results)


if __name__ == "__main__":
    main()
