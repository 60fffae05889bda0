"""End to end: seconds per training epoch of the demo's run, ``Trainer.fit`` against a hand-written loop.

Both train the demo's model (``UNet(3, 4, base_channels=16, depth=4)``) on the demo's data
(``make_shapes(n=480, size=64)``, the 384 training images, ``train_preset`` augmentation, batch 8,
``num_workers=0``) with AdamW, ``DiceCELoss`` and a mean IoU over the epoch. The hand loop is what the
notes write: ``zero_grad`` / forward / loss / ``backward`` / ``step``, images normalised on the device,
the loss summed and a ``bincount`` confusion matrix kept on the device and read at the end. The Trainer
runs with its defaults for a user's script (sample seeding in the main process is off by default with
``num_workers=0``, no run directory, no progress bar). The two alternate, each from the same initial
weights, and the medians are compared (ratio: Trainer / hand loop; lower is better). Times are CPU time
of this process (``num_workers=0``: all the work is here), which a busy shared machine hardly changes.

Usage:
    python benchmarks/epoch_time.py --reps 5
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchNormalize, train_preset
from trainkit.losses import DiceCELoss
from trainkit.metrics import MeanIoU
from trainkit.models import UNet

NUM_CLASSES = 4


def loader(root: Path) -> DataLoader:
    dataset = SegmentationDataset(
        root / "PNGImages",
        root / "SemanticMasks",
        mask_suffix="_mask",
        num_classes=NUM_CLASSES,
        transforms=train_preset(64, scale=(1.0, 1.0), normalize=False),
    )
    return DataLoader(Subset(dataset, range(384)), batch_size=8, shuffle=True, collate_fn=collate)


def trainer_epoch(model: torch.nn.Module, data: DataLoader) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    trainer = trainkit.Trainer(
        model,
        optimizer,
        DiceCELoss(ignore_index=255),
        metrics={"miou": MeanIoU(num_classes=NUM_CLASSES, ignore_index=255)},
        batch_transform=BatchNormalize(IMAGENET_MEAN, IMAGENET_STD),
        device="cpu",
        progress=False,
        seed=0,
    )
    start = time.process_time()
    trainer.fit(data, epochs=1)
    return time.process_time() - start


def hand_epoch(model: torch.nn.Module, data: DataLoader) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = DiceCELoss(ignore_index=255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    torch.manual_seed(0)
    start = time.process_time()
    model.train()
    loss_sum, samples = torch.zeros((), dtype=torch.float64), 0
    confusion = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.int64)
    for images, masks in data:
        x = (images.float() - mean) / std
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, masks)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(images)
        samples += len(images)
        keep = masks != 255
        confusion += torch.bincount(
            masks[keep] * NUM_CLASSES + logits.detach().argmax(1)[keep], minlength=NUM_CLASSES**2
        )
    matrix = confusion.view(NUM_CLASSES, NUM_CLASSES).double()
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag())
    _ = float(loss_sum / samples), float(iou.nanmean())
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, trainkit {trainkit.__version__} at {commit}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = make_shapes(Path(tmp) / "shapes", n=480, size=64, seed=0)
        data = loader(root)
        torch.manual_seed(0)
        initial = UNet(3, NUM_CLASSES, base_channels=16, depth=4)
        times: dict[str, list[float]] = {"trainkit": [], "hand loop": []}
        hand_epoch(copy.deepcopy(initial), data)  # warm-up (allocator, decoder caches)
        for _ in range(args.reps):
            times["trainkit"].append(trainer_epoch(copy.deepcopy(initial), data))
            times["hand loop"].append(hand_epoch(copy.deepcopy(initial), data))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"{name:10s} {medians[name]:6.2f} s/epoch (median of {args.reps}; range {spread})")
    print(f"ratio trainkit / hand loop: {medians['trainkit'] / medians['hand loop']:.3f}x")


if __name__ == "__main__":
    main()
