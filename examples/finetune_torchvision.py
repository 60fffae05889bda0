"""Fine-tune a torchvision segmentation model (DeepLabV3 or LRASPP, MobileNetV3 backbone) with trainkit.

DeepLabV3 returns {"out", "aux"}: the Trainer trains the main output with the loss and the auxiliary head
with half its weight (AuxLoss, as torchvision's references do); the metrics and predict read "out". The
backbone trains at a 10x lower rate, frozen for the first epoch. The checkpoint records its spec, so
`trainkit predict --checkpoint runs/finetune_torchvision/checkpoints/best.pt ...` needs nothing else.

    python examples/finetune_torchvision.py                                  # synthetic shapes, random weights
    python examples/finetune_torchvision.py --weights-backbone DEFAULT       # ImageNet backbone from TORCH_HOME
    python examples/finetune_torchvision.py --model lraspp_mobilenet_v3_large

Pretrained weights are read from the torch hub cache and never downloaded here; fetch them once with
`python -c "import torchvision; torchvision.models.get_weight('MobileNet_V3_Large_Weights.DEFAULT').get_state_dict()"`.
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
parser.add_argument("--model", default="deeplabv3_mobilenet_v3_large",
                    choices=["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])  # fmt: skip
parser.add_argument("--weights-backbone", default=None, help="e.g. DEFAULT: ImageNet weights from TORCH_HOME")
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--freeze-epochs", type=int, default=1)
parser.add_argument("--n", type=int, default=160)
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--run-dir", default="runs/finetune_torchvision")
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
# drop_last: DeepLabV3's image pooling has BatchNorm on 1x1 maps, which needs more than one image a batch.
train_loader = DataLoader(Subset(train_ds, order[n_val:]), batch_size=8, shuffle=True, drop_last=True,
                          collate_fn=collate)  # fmt: skip
val_loader = DataLoader(Subset(val_ds, order[:n_val]), batch_size=16, collate_fn=collate)

# The factory names the model in plain data, so the checkpoint can rebuild it; weights stay off unless asked.
options = {"aux_loss": True} if args.model.startswith("deeplabv3") else {}
if args.weights_backbone:
    options["weights_backbone"] = args.weights_backbone
spec = ModelSpec(f"torchvision:{args.model}", num_classes=len(classes), options=options)
model = spec.build()

optimizer = torch.optim.AdamW(trainkit.models.param_groups(model, lr=args.lr, encoder_lr=args.lr / 10))
trainer = trainkit.Trainer(
    model, optimizer, trainkit.losses.AuxLoss(trainkit.losses.DiceCELoss(), aux_weight=0.5),
    metrics={"miou": trainkit.metrics.MeanIoU(num_classes=len(classes))},
    scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs),
    batch_transform=BatchNormalize(),  # uint8 -> float, ImageNet mean/std, on the device
    callbacks=[trainkit.callbacks.FreezeEncoder(epochs=args.freeze_epochs),
               trainkit.callbacks.ModelCheckpoint(monitor="val/miou", mode="max")],
    run_dir=trainkit.RunDir(args.run_dir, overwrite=True), amp="auto", progress=False,
)  # fmt: skip
# The one line that makes the checkpoint usable alone (predict, evaluate, summary).
trainer.extra_state["spec"] = CheckpointSpec(spec, Preprocessing(args.size), class_names=classes).to_dict()
history = trainer.fit(train_loader, val_loader, epochs=args.epochs)

# Rebuild the best model from its checkpoint alone and score it.
best, best_spec = trainkit.models.from_checkpoint(trainkit.load_checkpoint(f"{args.run_dir}/checkpoints/best.pt"))
prep = best_spec.preprocessing
scores = trainkit.evaluate(best, val_loader, metrics={"miou": trainkit.metrics.MeanIoU(num_classes=len(classes))},
                           batch_transform=BatchNormalize(prep.mean, prep.std))  # fmt: skip
print(f"best checkpoint ({best_spec.model.name}): val mIoU {scores['miou']:.3f}")
