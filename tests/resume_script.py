"""Helper for tests/test_resume.py: a small but complete segmentation run that can be killed and resumed.

Usage: ``python resume_script.py DATA RUN_DIR OUT --workers N [--epochs E]``

Trains a tiny conv net with dropout and batch norm on ``trainkit.data.make_shapes`` images with random
augmentation (``train_preset``), AdamW and a per-step OneCycleLR, ``grad_accum=2``, a validation pass every
epoch and ``ModelCheckpoint(every_n_steps=1)``. It resumes from ``RUN_DIR/checkpoints/last.pt`` when that
exists (``resume="auto"``), prints ``batch <n>`` after every training batch (``n`` counts batches from the start
of training) and finally saves ``{"model": state_dict, "history": history}`` to ``OUT``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import trainkit
from trainkit.callbacks import Callback, ModelCheckpoint
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import BatchNormalize, eval_preset, train_preset
from trainkit.metrics import MeanIoU

NUM_CLASSES = 4  # background + the three shapes
BATCH_SIZE = 4
GRAD_ACCUM = 2


def make_data(root: Path) -> Path:
    """Write the training and validation images (24 and 8 of 20 px) under ``root``."""
    make_shapes(root / "train", n=24, size=20, seed=0)
    make_shapes(root / "val", n=8, size=20, seed=1)
    return root


class PrintBatches(Callback):
    """Print ``batch <n>`` after every training batch, ``n`` counted from the start of training."""

    def __init__(self, batches_per_epoch: int):
        self.batches_per_epoch = batches_per_epoch

    def on_train_batch_end(self, trainer, state, output):
        print(f"batch {state.epoch * self.batches_per_epoch + state.batch_idx}", flush=True)


def _dataset(folder: Path, transforms) -> SegmentationDataset:
    return SegmentationDataset(
        folder / "PNGImages",
        folder / "SemanticMasks",
        mask_suffix="_mask",
        num_classes=NUM_CLASSES,
        transforms=transforms,
    )


def run(data: Path, run_dir: Path, out: Path, *, workers: int, epochs: int) -> None:
    """Train (or continue training) and save the final weights and history to ``out``."""
    train = DataLoader(
        _dataset(data / "train", train_preset(16, normalize=False)),
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
    )
    val = DataLoader(_dataset(data / "val", eval_preset(16, normalize=False)), batch_size=8, collate_fn=collate)
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy test machine
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout2d(0.2),
        nn.Conv2d(8, NUM_CLASSES, 1),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = epochs * math.ceil(len(train) / GRAD_ACCUM)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps)
    trainer = trainkit.Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(ignore_index=255),
        metrics={"miou": MeanIoU(num_classes=NUM_CLASSES)},
        scheduler=scheduler,
        scheduler_interval="step",
        grad_accum=GRAD_ACCUM,
        callbacks=[ModelCheckpoint(every_n_steps=1), PrintBatches(len(train))],
        run_dir=run_dir,
        batch_transform=BatchNormalize(),
        device="cpu",
        amp=False,
        # "always": samples are seeded in the main process too, so the 0-worker reference run of test_resume.py
        # is the same run as the 2-worker ones it is compared with.
        seed=trainkit.Seeding(0, sample_seeding="always"),
        progress=False,
    )
    history = trainer.fit(train, val, epochs=epochs, resume="auto")  # last.pt when there is one, else afresh
    torch.save({"model": model.state_dict(), "history": history}, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    run(args.data, args.run_dir, args.out, workers=args.workers, epochs=args.epochs)
