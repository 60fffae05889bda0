"""Train a UNet on folders of images and masks with trainkit: the whole seed pattern in one page.

python examples/train_unet.py                  # synthetic shapes, written to runs/example
python examples/train_unet.py --images PennFudanPed/PNGImages --masks PennFudanPed/PedMasks --binary
"""

import argparse
from functools import partial

import torch
from torch.utils.data import DataLoader, Subset

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import BatchNormalize, eval_preset, train_preset

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for flag, default in [("--images", None), ("--masks", None), ("--mask-suffix", "_mask"), ("--run-dir", "runs/example")]:
    parser.add_argument(flag, default=default)
for flag, default in [("--num-classes", 4), ("--epochs", 10), ("--size", 64), ("--n", 240)]:
    parser.add_argument(flag, type=int, default=default)
parser.add_argument("--binary", action="store_true", help="foreground/background masks")
args = parser.parse_args()

trainkit.seed_everything(0)
if args.images is None:  # no data given: the synthetic shapes dataset (Penn-Fudan layout)
    root = make_shapes(f"{args.run_dir}/data", n=args.n, size=args.size, seed=0, exist_ok=True)
    args.images, args.masks = root / "PNGImages", root / "SemanticMasks"

# Pairs by stem (natural order), int64 class-id masks, one random draw for image and mask.
num_classes = 2 if args.binary else args.num_classes
dataset = partial(SegmentationDataset, args.images, args.masks, mask_suffix=args.mask_suffix,
                  target="binary" if args.binary else "semantic", num_classes=num_classes)  # fmt: skip
train_ds = dataset(transforms=train_preset(args.size, normalize=False))  # uint8 images to the device
val_ds = dataset(transforms=eval_preset(args.size, normalize=False))
order = torch.randperm(len(train_ds)).tolist()
n_val = max(1, len(order) // 5)
train_loader = DataLoader(Subset(train_ds, order[n_val:]), batch_size=8, shuffle=True, collate_fn=collate)
val_loader = DataLoader(Subset(val_ds, order[:n_val]), batch_size=32, collate_fn=collate)

model = trainkit.models.UNet(in_channels=3, out_channels=num_classes, base_channels=16, depth=4)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
trainer = trainkit.Trainer(
    model, optimizer, trainkit.losses.DiceCELoss(),
    metrics={"miou": trainkit.metrics.MeanIoU(num_classes=num_classes)},
    scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs),
    amp="auto",  # fp16/bf16 on a GPU, fp32 on the CPU
    batch_transform=BatchNormalize(),  # float conversion and normalisation on the device
    callbacks=[trainkit.callbacks.ModelCheckpoint(monitor="val/miou", mode="max")],
    run_dir=args.run_dir,  # metrics.csv, checkpoints/{best,last}.pt, curves.png
)  # fmt: skip
trainer.fit(train_loader, val_loader, epochs=args.epochs)  # after a crash: resume="last"

# Reload the best weights into a fresh model, switch to eval mode, and evaluate.
best = trainkit.models.UNet(in_channels=3, out_channels=num_classes, base_channels=16, depth=4)
trainkit.load_checkpoint(f"{args.run_dir}/checkpoints/best.pt", best)
best.eval()
miou = trainkit.metrics.MeanIoU(num_classes=num_classes)
scores = trainkit.evaluate(best, val_loader, metrics={"miou": miou}, batch_transform=BatchNormalize())
print(f"best checkpoint: val mIoU {scores['miou']:.3f}")
