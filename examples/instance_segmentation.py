"""Instance segmentation with torchvision's Mask R-CNN through a ``Trainer`` subclass.

Penn-Fudan-style data (``PNGImages/``, ``PedMasks/*_mask.png`` with one id per object) becomes the
torchvision detection targets (``masks``, ``boxes``, ``labels``, ...) with ``target="instance"``:
the notes' ``masks = mask == obj_ids[:, None, None]``, done for you. Mask R-CNN returns a dict
of losses in train mode and detections in eval mode, so the step is not ``loss_fn(model(x), y)``:
override ``training_step`` to sum the loss dict, and ``validation_step`` to score the detections.
This is the path for any model with its own step.

    python examples/instance_segmentation.py --epochs 2            # synthetic shapes, CPU-sized
    python examples/instance_segmentation.py --images PennFudanPed/PNGImages --masks PennFudanPed/PedMasks
"""

import argparse

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.transforms import v2

import trainkit
from trainkit.data import SegmentationDataset, collate_instances, make_shapes


class MaskRCNNTrainer(trainkit.Trainer):
    """Sum Mask R-CNN's loss dict for training; count matched detections for validation."""

    def training_step(self, batch):
        images, targets = batch
        losses = self.model(list(images), list(targets))  # {"loss_classifier", "loss_box_reg", "loss_mask", ...}
        return {"loss": sum(losses.values())}

    def validation_step(self, batch):
        images, targets = batch
        detections = self.model(list(images))  # eval mode: boxes, labels, scores, masks per image
        return {"outputs": detections, "targets": list(targets)}


class MaskRecall:
    """Fraction of ground-truth objects matched by a predicted mask with IoU >= 0.5 (exact over the epoch)."""

    def __init__(self, score_threshold: float = 0.5):
        self.score_threshold = score_threshold
        self.reset()

    def reset(self):
        self.matched, self.total = 0, 0

    def update(self, detections, targets):
        for det, tgt in zip(detections, targets, strict=True):
            truth = tgt["masks"].flatten(1).float()  # [N, H*W]
            keep = det["scores"] >= self.score_threshold
            pred = (det["masks"][keep, 0] > 0.5).flatten(1).float()  # [M, H*W]
            self.total += len(truth)
            if len(pred) and len(truth):
                inter = truth @ pred.T
                union = truth.sum(1, keepdim=True) + pred.sum(1) - inter
                self.matched += int(((inter / union.clamp(min=1)) >= 0.5).any(1).sum())

    def compute(self):
        return torch.tensor(self.matched / max(1, self.total))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    (
        parser.add_argument("--images"),
        parser.add_argument("--masks"),
        parser.add_argument("--mask-suffix", default="_mask"),
    )
    parser.add_argument("--epochs", type=int, default=2), parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--size", type=int, default=96), parser.add_argument("--run-dir", default="runs/instances")
    args = parser.parse_args()

    trainkit.seed_everything(0)
    if args.images is None:
        root = make_shapes(f"{args.run_dir}/data", n=args.n, size=args.size, seed=0, exist_ok=True)
        args.images, args.masks = root / "PNGImages", root / "PedMasks"  # every shape is one class: "object"
    augment = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True)])
    ds = SegmentationDataset(
        args.images, args.masks, mask_suffix=args.mask_suffix, target="instance", transforms=augment
    )
    n_val = max(1, len(ds) // 4)
    train, val = torch.utils.data.random_split(ds, [len(ds) - n_val, n_val])
    loader = DataLoader(train, batch_size=2, shuffle=True, collate_fn=collate_instances)
    val_loader = DataLoader(val, batch_size=2, collate_fn=collate_instances)

    # weights=None: no download; a small image size keeps this CPU-friendly.
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2, min_size=args.size, max_size=args.size
    )
    params = [p for p in model.parameters() if p.requires_grad]
    trainer = MaskRCNNTrainer(
        model,
        torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=5e-4),
        metrics={"mask_recall": MaskRecall()},
        clip_grad_norm=10.0,
        run_dir=args.run_dir,
    )
    history = trainer.fit(loader, val_loader, epochs=args.epochs)
    print(f"final: train loss {history[-1]['train/loss']:.3f}, val mask recall {history[-1]['val/mask_recall']:.3f}")


if __name__ == "__main__":
    main()
