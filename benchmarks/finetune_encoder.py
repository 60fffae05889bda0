"""Fine-tuning figures: a pretrained encoder with and without a lower encoder rate and a frozen start.

    python benchmarks/finetune_encoder.py                 # the figures of docs/models.md (CPU, a few minutes)
    python benchmarks/finetune_encoder.py --seeds 0 1 2 --device cuda

Offline, so the "pretrained" encoder is made here: an smp Unet (ResNet-18 encoder, 3 levels) is trained on
192 synthetic shapes images, and its encoder is kept. Each variant then fine-tunes a fresh Unet (new
decoder and head) on 24 other images for the same epochs and schedule and is validated on 64 more:

* scratch: random encoder, one learning rate;
* pretrained: the pretrained encoder, one learning rate;
* + encoder lr/10: the encoder in its own parameter group at a tenth of the rate (``param_groups``);
* + frozen 3 epochs: the same, with ``FreezeEncoder(epochs=3)``.

Prints the best and last validation mIoU of each variant per seed, and their means.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import BatchNormalize, eval_preset, train_preset
from trainkit.models import ModelSpec, param_groups

SPEC = ModelSpec("smp:Unet", num_classes=4, options={"encoder_name": "resnet18", "encoder_depth": 3,
                                                      "decoder_channels": [64, 32, 16]})  # fmt: skip
VARIANTS = {
    "scratch": {"pretrained": False, "encoder_lr": 1.0, "freeze": 0},
    "pretrained": {"pretrained": True, "encoder_lr": 1.0, "freeze": 0},
    "pretrained + encoder lr/10": {"pretrained": True, "encoder_lr": 0.1, "freeze": 0},
    "pretrained + encoder lr/10 + frozen 3 epochs": {"pretrained": True, "encoder_lr": 0.1, "freeze": 3},
}


def loaders(root: Path, size: int, train: bool, batch_size: int) -> DataLoader:
    preset = train_preset(size, scale=(1.0, 1.0), normalize=False) if train else eval_preset(size, normalize=False)
    ds = SegmentationDataset(root / "PNGImages", root / "SemanticMasks", mask_suffix="_mask", num_classes=4,
                             transforms=preset)  # fmt: skip
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=collate)


def fit(model: torch.nn.Module, train: DataLoader, val: DataLoader | None, *, epochs: int, lr: float,
        encoder_lr: float, freeze: int, device: str, seed: int) -> list[dict[str, float]]:  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups(model, lr=lr, encoder_lr=encoder_lr), weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[lr, encoder_lr],
                                                    total_steps=epochs * len(train), pct_start=0.1)  # fmt: skip
    callbacks: list[Any] = [trainkit.callbacks.FreezeEncoder(epochs=freeze)] if freeze else []
    trainer = trainkit.Trainer(
        model, optimizer, trainkit.losses.DiceCELoss(), metrics={"miou": trainkit.metrics.MeanIoU(num_classes=4)},
        scheduler=scheduler, scheduler_interval="step", batch_transform=BatchNormalize(), callbacks=callbacks,
        device=device, seed=seed, progress=False, amp="auto",
    )  # fmt: skip
    return trainer.fit(train, val, epochs=epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="finetune-"))
    size = args.size
    pretrain = loaders(make_shapes(root / "pretrain", n=192, size=size, seed=100), size, True, 16)
    small = loaders(make_shapes(root / "small", n=24, size=size, seed=200), size, True, 8)
    val = loaders(make_shapes(root / "val", n=64, size=size, seed=300), size, False, 32)

    start = time.perf_counter()
    torch.manual_seed(0)
    source = SPEC.build()
    history = fit(source, pretrain, None, epochs=args.pretrain_epochs, lr=args.lr, encoder_lr=args.lr, freeze=0,
                  device=args.device, seed=0)  # fmt: skip
    encoder_state = {k: v.detach().cpu().clone() for k, v in source.encoder.state_dict().items()}
    print(f"pretraining: {args.pretrain_epochs} epochs on 192 images, train loss {history[-1]['train/loss']:.3f}, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, variant in VARIANTS.items():
            torch.manual_seed(seed)
            model = SPEC.build()  # a new decoder and head for every variant
            if variant["pretrained"]:
                model.encoder.load_state_dict(encoder_state)
            rows = fit(model, small, val, epochs=args.epochs, lr=args.lr, encoder_lr=args.lr * variant["encoder_lr"],
                       freeze=int(variant["freeze"]), device=args.device, seed=seed)  # fmt: skip
            scores = [row["val/miou"] for row in rows]
            results[name].append((max(scores), scores[-1]))
            print(f"seed {seed}  {name:<46} best val mIoU {max(scores):.3f}  last {scores[-1]:.3f}", flush=True)
    print(f"\n| variant ({len(args.seeds)} seeds, {args.epochs} epochs on 24 images) | best val mIoU | last val mIoU |")
    print("|---|---|---|")
    for name, values in results.items():
        best = [b for b, _ in values]
        last = [v for _, v in values]
        print(f"| {name} | {statistics.mean(best):.3f} ({min(best):.3f}-{max(best):.3f}) | "
              f"{statistics.mean(last):.3f} ({min(last):.3f}-{max(last):.3f}) |")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - start:.0f} s on {args.device}")


if __name__ == "__main__":
    main()
