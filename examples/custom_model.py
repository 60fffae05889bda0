"""Train your own ``nn.Module`` with trainkit: a model with a dict output and a custom metric.

The model returns ``{"mask": logits, "count": predicted number of shapes}``; the loss combines a
segmentation term and a counting term; the metric tracks the counting error over the epoch with
the ``update``/``compute``/``reset`` protocol that every trainkit (or torchmetrics) metric follows.

    python examples/custom_model.py --epochs 5
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import eval_preset


class SegmentAndCount(nn.Module):
    """A tiny encoder-decoder with a second head that counts foreground blobs."""

    def __init__(self, num_classes: int = 4, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        self.mask_head = nn.Conv2d(width, num_classes, 1)
        self.count_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(images)
        return {"mask": self.mask_head(features), "count": self.count_head(features).squeeze(1)}


def shape_count(masks: torch.Tensor) -> torch.Tensor:
    """Foreground fraction × 10 as a stand-in 'count' target that the model can regress."""
    return (masks > 0).float().mean(dim=(1, 2)) * 10


class CountError:
    """Mean absolute error of the count head, exact over an epoch (sums, not a mean of batch means).

    A plain class: the Trainer accepts any object with ``update``/``compute``/``reset``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(())
        self.n = torch.zeros(())

    def update(self, outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> None:
        error = (outputs["count"].float() - shape_count(masks)).abs()
        self.total = self.total.to(error.device) + error.sum()
        self.n = self.n.to(error.device) + error.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.n.clamp(min=1)


class MIoUOfMask(trainkit.metrics.MeanIoU):
    """mIoU on the ``"mask"`` entry of the dict output."""

    def update(self, outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> None:
        super().update(outputs["mask"], masks)


def loss_fn(outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    segmentation = nn.functional.cross_entropy(outputs["mask"], masks, ignore_index=255)
    counting = nn.functional.smooth_l1_loss(outputs["count"].float(), shape_count(masks))
    return segmentation + 0.1 * counting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--run-dir", default="runs/custom_model")
    args = parser.parse_args()

    trainkit.seed_everything(0)
    root = make_shapes(f"{args.run_dir}/data", n=args.n, size=args.size, seed=0, exist_ok=True)
    ds = SegmentationDataset(
        root / "PNGImages",
        root / "SemanticMasks",
        mask_suffix="_mask",
        num_classes=4,
        transforms=eval_preset(args.size),
    )
    train, val = torch.utils.data.random_split(ds, [len(ds) - len(ds) // 4, len(ds) // 4])
    model = SegmentAndCount()
    trainer = trainkit.Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=3e-3),
        loss_fn,
        metrics={"miou": MIoUOfMask(num_classes=4), "count_mae": CountError()},
        run_dir=args.run_dir,
        amp="auto",
    )
    history = trainer.fit(
        DataLoader(train, batch_size=16, shuffle=True, collate_fn=collate),
        DataLoader(val, batch_size=32, collate_fn=collate),
        epochs=args.epochs,
    )
    print(f"final: val mIoU {history[-1]['val/miou']:.3f}, count MAE {history[-1]['val/count_mae']:.3f}")


if __name__ == "__main__":
    main()
