"""Train a segmentation_models_pytorch Unet with a ResNet encoder, the encoder at a 10x lower learning rate.

smp models return one logits tensor and train with trainkit as they are; the factory only names them
in plain data, so the checkpoint records how to rebuild the model (`trainkit predict` needs nothing else).

    pip install 'trainkit[smp]'
    python examples/smp_unet.py                                   # synthetic shapes, random encoder
    python examples/smp_unet.py --encoder resnet34 --encoder-weights imagenet   # from the Hugging Face cache
    python examples/smp_unet.py --encoder tu-convnext_atto        # any timm encoder, through smp's tu- names

Pretrained encoders are read from the Hugging Face cache and never downloaded here; fetch them once with
`hf download smp-hub/resnet34.imagenet` (the error message names the exact files).
"""

import argparse
from functools import partial

import torch
from torch.utils.data import DataLoader, Subset

import trainkit
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import BatchNormalize, eval_preset, train_preset
from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--encoder", default="resnet18", help="smp encoder name, or tu-<timm name>")
parser.add_argument("--encoder-weights", default=None, help="e.g. imagenet: read from the Hugging Face cache")
parser.add_argument("--encoder-depth", type=int, default=5, help="3 for a tiny, fast model")
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--n", type=int, default=160)
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--run-dir", default="runs/smp_unet")
args = parser.parse_args()

trainkit.seed_everything(0)
root = make_shapes(f"{args.run_dir}/data", n=args.n, size=args.size, seed=0, exist_ok=True)
classes = ["background", "circle", "square", "triangle"]
dataset = partial(SegmentationDataset, root / "PNGImages", root / "SemanticMasks", mask_suffix="_mask",
                  num_classes=len(classes))  # fmt: skip
train_ds = dataset(transforms=train_preset(args.size, scale=(1.0, 1.0), normalize=False))
val_ds = dataset(transforms=eval_preset(args.size, normalize=False))
order = torch.randperm(len(train_ds)).tolist()
n_val = max(1, len(order) // 5)
train_loader = DataLoader(Subset(train_ds, order[n_val:]), batch_size=8, shuffle=True, collate_fn=collate)
val_loader = DataLoader(Subset(val_ds, order[:n_val]), batch_size=16, collate_fn=collate)

depth = args.encoder_depth
spec = ModelSpec("smp:Unet", num_classes=len(classes), options={
    "encoder_name": args.encoder, "encoder_weights": args.encoder_weights, "encoder_depth": depth,
    "decoder_channels": [256, 128, 64, 32, 16][5 - depth:],
})  # fmt: skip
model = spec.build()  # the same as smp.Unet(encoder_name=..., encoder_weights=..., classes=4, ...)

# Two parameter groups: the decoder and head at --lr, the encoder (model.encoder) 10x lower.
optimizer = torch.optim.AdamW(trainkit.models.param_groups(model, lr=args.lr, encoder_lr=args.lr / 10))
trainer = trainkit.Trainer(
    model, optimizer, trainkit.losses.DiceCELoss(),
    metrics={"miou": trainkit.metrics.MeanIoU(num_classes=len(classes))},
    scheduler=torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[args.lr, args.lr / 10],
                                                  total_steps=args.epochs * len(train_loader)),
    scheduler_interval="step",
    batch_transform=BatchNormalize(),  # uint8 -> float, ImageNet mean/std, on the device
    callbacks=[trainkit.callbacks.ModelCheckpoint(monitor="val/miou", mode="max")],
    run_dir=trainkit.RunDir(args.run_dir, overwrite=True), amp="auto", progress=False,
)  # fmt: skip
trainer.extra_state["spec"] = CheckpointSpec(spec, Preprocessing(args.size), class_names=classes).to_dict()
history = trainer.fit(train_loader, val_loader, epochs=args.epochs)

rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
best, _ = trainkit.models.from_checkpoint(trainkit.load_checkpoint(f"{args.run_dir}/checkpoints/best.pt"))
scores = trainkit.evaluate(best, val_loader, metrics={"miou": trainkit.metrics.MeanIoU(num_classes=len(classes))},
                           batch_transform=BatchNormalize())  # fmt: skip
print(f"final rates: decoder {rates['decoder']:.2e}, encoder {rates['encoder']:.2e}")
print(f"best checkpoint (smp:Unet, {args.encoder}): val mIoU {scores['miou']:.3f}")
