"""Helper for tests/test_sample_seeding.py: a user's own Dataset, augmented with the global RNGs, killed and resumed.

Usage: ``python seeding_script.py RUN_DIR OUT --workers N [--seed S|none] [--epochs E]``

``GlobalRngDataset`` does what a hand-written dataset (or albumentations) does: its ``__getitem__`` draws from
torch's default generator, NumPy's legacy ``np.random`` and Python's ``random``, and each draw changes the sample.
A tiny conv net with dropout is trained on it by ``Trainer(seed=S)`` (``seed=None`` for ``--seed none``) from a
``DataLoader(shuffle=True, num_workers=N)`` with ``ModelCheckpoint(every_n_steps=1)``, so a mid-epoch checkpoint
exists after every batch. The run resumes from ``RUN_DIR/checkpoints/last.pt`` when that exists
(``resume="auto"``), prints ``batch <n>`` after every training batch (``n`` counts batches from the start of
training; ``ModelCheckpoint`` writes after the other callbacks, so ``last.pt`` holds batch ``n - 1`` or ``n`` by
then) and finally saves ``{"model": state_dict, "history": history, "seed": trainer.seed}`` to ``OUT``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import trainkit
from trainkit.callbacks import Callback, ModelCheckpoint

NUM_SAMPLES = 32
NUM_CLASSES = 4
BATCH_SIZE = 4
BATCHES_PER_EPOCH = NUM_SAMPLES // BATCH_SIZE


def augment(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment ``image`` with all three global RNGs; also return one float64 number drawn from each of them.

    Adds torch noise (``torch.randn``) and NumPy noise (``np.random.rand``) and flips the image horizontally when
    Python's ``random.random() < 0.5``. The draws are ``[torch noise, numpy noise, random.random()]``.
    """
    torch_noise = 0.5 * torch.randn(image.shape)
    numpy_noise = torch.from_numpy(np.random.rand(*image.shape).astype(np.float32))
    coin = random.random()
    out = image + torch_noise + numpy_noise
    if coin < 0.5:
        out = out.flip(-1)
    draws = torch.tensor([float(torch_noise.flatten()[0]), float(numpy_noise.flatten()[0]), coin], dtype=torch.float64)
    return out, draws


class GlobalRngDataset(Dataset):
    """``NUM_SAMPLES`` images of 3x8x8 with int64 class labels, augmented by :func:`augment`.

    The images and labels are fixed (drawn once from a private generator); only the augmentation is random.
    """

    def __init__(self, num_samples: int = NUM_SAMPLES) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(num_samples, 3, 8, 8, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = augment(self.images[index])
        return image, self.labels[index]


def make_model() -> nn.Module:
    """A conv layer with dropout and a linear classifier, initialised from seed 0."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, NUM_CLASSES),
    )


class PrintBatches(Callback):
    """Print ``batch <n>`` after every training batch, ``n`` counted from the start of training."""

    def on_train_batch_end(self, trainer, state, output):
        print(f"batch {state.epoch * BATCHES_PER_EPOCH + state.batch_idx}", flush=True)


def run(run_dir: Path, out: Path, *, workers: int, seed: int | None, epochs: int) -> None:
    """Train (or continue training) and save the final weights, history and seed to ``out``."""
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a busy test machine
    loader = DataLoader(GlobalRngDataset(), batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)
    model = make_model()
    trainer = trainkit.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        nn.CrossEntropyLoss(),
        callbacks=[ModelCheckpoint(every_n_steps=1), PrintBatches()],
        run_dir=run_dir,
        device="cpu",
        amp=False,
        seed=seed,
        progress=False,
    )
    history = trainer.fit(loader, epochs=epochs, resume="auto")  # last.pt when there is one, else afresh
    seed_used = trainer.seed if isinstance(trainer.seed, int) else repr(trainer.seed)  # loadable with weights_only
    torch.save({"model": model.state_dict(), "history": history, "seed": seed_used}, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", default="0", help="an integer, or 'none' for `Trainer(seed=None)`")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    seed = None if args.seed == "none" else int(args.seed)
    run(args.run_dir, args.out, workers=args.workers, seed=seed, epochs=args.epochs)
