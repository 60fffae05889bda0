"""Train a UNet on folders of images and masks with trainkit: the whole seed pattern in one page.

    python examples/train_unet.py                       # synthetic shapes, written to runs/example
    python examples/train_unet.py --images PennFudanPed/PNGImages --masks PennFudanPed/PedMasks \
        --mask-suffix _mask --num-classes 2 --binary
"""

import argparse

import torch
from torch.utils.data import DataLoader, random_split

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import BatchNormalize, eval_preset, train_preset

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--images"), parser.add_argument("--masks"), parser.add_argument("--mask-suffix", default="_mask")
parser.add_argument("--num-classes", type=int, default=4), parser.add_argument("--binary", action="store_true")
parser.add_argument("--epochs", type=int, default=10), parser.add_argument("--size", type=int, default=64)
parser.add_argument("--n", type=int, default=240, help="synthetic images when --images is not given")
parser.add_argument("--run-dir", default="runs/example")
args = parser.parse_args()

trainkit.seed_everything(0)
if args.images is None:  # no data given: make the synthetic shapes dataset (Penn-Fudan layout)
    root = make_shapes(f"{args.run_dir}/data", n=args.n, size=args.size, seed=0, exist_ok=True)
    args.images, args.masks = root / "PNGImages", root / "SemanticMasks"

# Pairs by stem (natural order), class ids as int64 masks, one random draw for image and mask.
target = "binary" if args.binary else "semantic"
num_classes = 2 if args.binary else args.num_classes
train_ds = SegmentationDataset(
    args.images,
    args.masks,
    mask_suffix=args.mask_suffix,
    target=target,
    num_classes=num_classes,
    transforms=train_preset(args.size, normalize=False),
)
val_ds = SegmentationDataset(
    args.images,
    args.masks,
    mask_suffix=args.mask_suffix,
    target=target,
    num_classes=num_classes,
    transforms=eval_preset(args.size, normalize=False),
)
n_val = max(1, len(train_ds) // 5)
train_idx, val_idx = random_split(range(len(train_ds)), [len(train_ds) - n_val, n_val])
train_loader = DataLoader(
    torch.utils.data.Subset(train_ds, list(train_idx)), batch_size=16, shuffle=True, collate_fn=collate, drop_last=True
)
val_loader = DataLoader(torch.utils.data.Subset(val_ds, list(val_idx)), batch_size=32, collate_fn=collate)

model = trainkit.models.UNet(in_channels=3, out_channels=num_classes, base_channels=16, depth=3)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
trainer = trainkit.Trainer(
    model,
    optimizer,
    trainkit.losses.DiceCELoss(),
    metrics={"miou": trainkit.metrics.MeanIoU(num_classes=num_classes)},
    scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs),
    amp="auto",  # fp16/bf16 on a GPU, fp32 on the CPU
    batch_transform=BatchNormalize(),  # uint8 from the loader, float + normalise on the device
    callbacks=[trainkit.callbacks.ModelCheckpoint(monitor="val/miou", mode="max")],
    run_dir=args.run_dir,  # metrics.csv, checkpoints/{best,last}.pt, curves.png
)
history = trainer.fit(train_loader, val_loader, epochs=args.epochs)

# Reload the best weights into a fresh model, switch to eval mode, and evaluate.
best = trainkit.models.UNet(in_channels=3, out_channels=num_classes, base_channels=16, depth=3)
trainkit.load_checkpoint(f"{args.run_dir}/checkpoints/best.pt", best)
best.eval()
scores = trainkit.evaluate(
    best,
    val_loader,
    metrics={"miou": trainkit.metrics.MeanIoU(num_classes=num_classes)},
    batch_transform=BatchNormalize(),
)
print(f"best checkpoint: val mIoU {scores['miou']:.3f}")
