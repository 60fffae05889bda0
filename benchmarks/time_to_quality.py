"""Time to quality: seconds to val mIoU 0.90 and 0.95, trainkit's demo recipe against a hand-written loop.

    python benchmarks/time_to_quality.py                      # 3 seeds, the demo's settings
    python benchmarks/time_to_quality.py --seeds 0 --epochs 4 # a quick look
    python benchmarks/time_to_quality.py --plot docs/images/time_to_quality.png
    python benchmarks/time_to_quality.py --recipe train --seeds 0 --only trainkit   # `trainkit train`'s defaults

For each seed, the demo's shapes dataset is drawn once (`make_shapes(n, seed=seed)`), then trained twice on
it, in alternating order: by `train_recipe(demo_recipe(...))` (what `trainkit demo` runs: the Trainer with
its checkpoints, metrics.csv and curves) and by a hand-written loop built from the same recipe's fields (the
same split, datasets and transforms, UNet, AdamW, warm-up/cosine `LambdaLR`, `DiceCELoss`, device
normalisation, precision of `amp="auto"`, a confusion-matrix mIoU each epoch and the best weights saved).
Each run's clock starts before its loaders and model are built; an epoch's time is taken after its
validation. The time to a target is the end of the first epoch whose val mIoU reaches it.

The hand loop seeds its run as the Trainer does (`seed_everything(seed)` before the first epoch, the same
`drop_last`), so with `num_workers=0` both loops draw the same model, shuffles and augmentations: their val
mIoU curves coincide epoch for epoch (checked and printed), and the time to a target differs only by what
each loop costs. Without that, each loop's curve crosses a target at its own epoch by chance, and the ratio
moved by +-20 % between seeds.

Prints each run's epochs, then per loop the median and the spread (min-max) of the seconds to each
target over the seeds, trainkit's time over the hand loop's for each seed and their median (target: <= 1.03),
and the seconds an epoch takes, trainkit's over the hand loop's for each seed.

`--recipe train` trains what `trainkit train --images ... --masks ... --num-classes 4` does with every other
option at its default (a 256x256 UNet of 16 base channels, AdamW, warm-up/cosine, 20 epochs or 500 steps,
crops, flips and colour jitter) on a harder shapes set: `--n` 400 images at 256x256 px with up to 8 shapes each.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from trainkit.cli import build_parser
from trainkit.cli._recipe_args import recipe_from_args
from trainkit.cli.demo import DEMO_CLASSES, demo_recipe
from trainkit.cli.recipe import Recipe, planned_epochs, split_indices, train_recipe, warmup_cosine
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_preset, train_preset
from trainkit.engine import MixedPrecision
from trainkit.engine.callbacks import Callback
from trainkit.losses import DiceCELoss
from trainkit.models import create_model
from trainkit.utils.seed import seed_everything

Curve = list[tuple[float, float]]  # (seconds since the run started, val mIoU) per epoch


def run_trainkit(recipe: Recipe) -> Curve:
    """The demo's recipe as `trainkit demo` trains it; the time and val mIoU at each epoch's end."""
    start = time.perf_counter()
    curve: Curve = []

    class Stamp(Callback):
        order = 200  # after the checkpoint (100): the epoch's time includes what the Trainer writes

        def on_epoch_end(self, trainer, logs):  # type: ignore[no-untyped-def]
            curve.append((time.perf_counter() - start, float(logs["val/miou"])))

    recipe.callbacks = [Stamp()]
    train_recipe(recipe)
    return curve


def run_hand(recipe: Recipe, out: Path) -> Curve:
    """The same recipe as a practitioner writes it by hand."""
    start = time.perf_counter()
    num_classes = recipe.num_classes or 2
    train_ds = SegmentationDataset(
        recipe.images,
        recipe.masks,
        mask_suffix=recipe.mask_suffix,
        num_classes=num_classes,
        transforms=train_preset(recipe.size, scale=recipe.scale, color_jitter=recipe.color_jitter, normalize=False),
    )
    val_ds = copy.copy(train_ds)
    val_ds.transforms = eval_preset(recipe.size, normalize=False)
    train_idx, val_idx = split_indices(len(train_ds), recipe.val_split, recipe.seed)
    device = torch.device("cuda" if recipe.device == "auto" and torch.cuda.is_available() else
                          "cpu" if recipe.device == "auto" else recipe.device)  # fmt: skip
    torch.manual_seed(recipe.seed)
    options = {"base_channels": recipe.base_channels, "depth": recipe.depth, **recipe.model_options}
    model = create_model(recipe.model, num_classes=num_classes, in_channels=3, **options).to(device)
    drop_last = len(train_idx) > recipe.batch_size  # as the recipe: no last batch of a few images
    train = DataLoader(
        Subset(train_ds, train_idx), recipe.batch_size, shuffle=True, drop_last=drop_last, collate_fn=collate
    )
    val = DataLoader(Subset(val_ds, val_idx), recipe.batch_size, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4, fused=True)
    epochs = planned_epochs(recipe.epochs, len(train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(epochs * len(train)))
    loss_fn = DiceCELoss(ignore_index=255)
    dtype = MixedPrecision(recipe.amp, device).dtype  # what amp="auto" picks on this machine
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    curve: Curve = []
    best = -1.0
    seed_everything(recipe.seed)  # the run's shuffles and augmentations: the same stream the Trainer seeds
    for _ in range(epochs):
        model.train()
        for images, masks in train:
            images = (images.to(device).float() - mean) / std
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(model(images), masks.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        with torch.inference_mode():
            for images, masks in val:
                images = (images.to(device).float() - mean) / std
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    predicted = model(images).max(1).indices  # argmax(1), without its slow CPU kernel
                masks = masks.to(device)
                keep = masks != 255
                pairs = masks[keep] * num_classes + predicted[keep]
                confusion += torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)
        hits = confusion.diag().double()
        union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
        miou = float((hits[union > 0] / union[union > 0]).mean())
        if miou > best:
            best = miou
            torch.save(model.state_dict(), out)
        curve.append((time.perf_counter() - start, miou))
    return curve


def train_defaults(data: Path, run_dir: Path, seed: int, epochs: int | None, device: str) -> Recipe:
    """What `trainkit train` makes of the data options alone: every training option at its default."""
    argv = ["train", "--images", str(data / "PNGImages"), "--masks", str(data / "SemanticMasks"), "--mask-suffix",
            "_mask", "--num-classes", str(len(DEMO_CLASSES)), "--run-dir", str(run_dir), "--seed", str(seed),
            "--device", device, "--no-progress"]  # fmt: skip
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    recipe = recipe_from_args(build_parser().parse_args(argv))
    assert isinstance(recipe, Recipe), recipe
    return recipe


def seconds_to(curve: Curve, target: float) -> float:
    """The end of the first epoch at or above ``target``; ``inf`` when none reaches it."""
    return next((t for t, miou in curve if miou >= target), float("inf"))


def _summary(name: str, curves: list[Curve], targets: list[float]) -> dict[float, float]:
    medians = {}
    for target in targets:
        times = [seconds_to(curve, target) for curve in curves]
        medians[target] = statistics.median(times)
        spread = f"{min(times):.1f}-{max(times):.1f}"
        print(
            f"  {name:<9} to {target:.2f}: median {medians[target]:6.1f} s  (spread {spread} s over {len(times)} seeds)"
        )
    finals = [curve[-1][1] for curve in curves]
    print(f"  {name:<9} final val mIoU: {', '.join(f'{m:.4f}' for m in finals)}; "
          f"training {statistics.median(c[-1][0] for c in curves):.1f} s (median)")  # fmt: skip
    return medians


def _plot(curves: dict[str, list[Curve]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (name, runs), color in zip(curves.items(), ("tab:blue", "tab:orange"), strict=False):
        for i, curve in enumerate(runs):
            ax.plot([0.0] + [t for t, _ in curve], [0.0] + [m for _, m in curve], marker="o", markersize=3,
                    color=color, alpha=0.8, label=name if i == 0 else None)  # fmt: skip
    for target in (0.90, 0.95):
        ax.axhline(target, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("val mIoU")
    ax.set_ylim(0.3, 1.0)
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", choices=["demo", "train"], default="demo")
    parser.add_argument("--epochs", type=int, help="default: the recipe's (the demo's, or train's planned epochs)")
    parser.add_argument("--n", type=int, help="images in the dataset (default: 5000 for the demo, 400 for train)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=["trainkit", "hand"], help="run one of the two loops")
    parser.add_argument("--plot", type=Path, help="draw val mIoU against seconds for every run to this PNG")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, "
          f"amp auto = {MixedPrecision('auto', 'cpu').mode} on the CPU")  # fmt: skip
    loops: dict[str, Callable[[Recipe, Path], Curve]] = {
        "trainkit": lambda recipe, _: run_trainkit(recipe),
        "hand": run_hand,
    }
    if args.only:
        loops = {args.only: loops[args.only]}
    curves: dict[str, list[Curve]] = {name: [] for name in loops}
    with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
        for k, seed in enumerate(args.seeds):
            if args.recipe == "demo":
                data = make_shapes(Path(tmp) / f"data{seed}", n=args.n or 5000, seed=seed)
            else:
                data = make_shapes(Path(tmp) / f"data{seed}", n=args.n or 400, size=256, max_shapes=8, seed=seed)
            order = list(loops) if k % 2 == 0 else list(reversed(loops))
            for name in order:
                run_dir = Path(tmp) / f"{name}{seed}"
                if args.recipe == "demo":
                    epochs = {"epochs": args.epochs} if args.epochs else {}
                    recipe = demo_recipe(data, run_dir, device=args.device, seed=seed, progress=False, **epochs)
                else:
                    recipe = train_defaults(data, run_dir, seed, args.epochs, args.device)
                run_dir.mkdir(parents=True, exist_ok=True)
                curve = loops[name](recipe, run_dir / "best.pt")
                curves[name].append(curve)
                print(f"seed {seed} {name:<9}" + "  ".join(f"{t:6.1f}s {m:.4f}" for t, m in curve), flush=True)
    epochs = "/".join(sorted({str(len(curve)) for runs in curves.values() for curve in runs}))
    print(f"\nseconds to val mIoU ({args.recipe} recipe, {len(DEMO_CLASSES)} classes, {epochs} epochs):")
    medians = {name: _summary(name, runs, args.targets) for name, runs in curves.items()}
    if len(medians) == 2:
        for target in args.targets:
            # The same seed's two runs see the same data, so its pair of times is what to compare; the medians
            # over seeds mix seeds (and the machine's speed at the time of each run).
            pairs = [seconds_to(t, target) / seconds_to(h, target) for t, h in zip(*curves.values(), strict=True)]
            ratio = medians["trainkit"][target] / medians["hand"][target]
            print(f"  trainkit / hand to {target:.2f}, per seed: {', '.join(f'{r:.3f}' for r in pairs)}; median "
                  f"{statistics.median(pairs):.3f}x (target <= 1.03); ratio of the medians {ratio:.3f}x")  # fmt: skip
        gaps = [max(abs(a[1] - b[1]) for a, b in zip(t, h, strict=True)) for t, h in zip(*curves.values(), strict=True)]
        print(f"  largest val mIoU difference between the two loops' epochs, per seed: "
              f"{', '.join(f'{g:.4f}' for g in gaps)} (the same data stream: 0 up to kernel rounding)")  # fmt: skip
        per_epoch = {name: [c[-1][0] / len(c) for c in runs] for name, runs in curves.items()}
        per_seed = [t / h for t, h in zip(per_epoch["trainkit"], per_epoch["hand"], strict=True)]
        print(f"  seconds an epoch: trainkit {statistics.median(per_epoch['trainkit']):.2f}, hand "
              f"{statistics.median(per_epoch['hand']):.2f}; trainkit / hand per seed "
              f"{', '.join(f'{r:.3f}' for r in per_seed)} (median {statistics.median(per_seed):.3f}x)")  # fmt: skip
    if args.plot:
        title = "trainkit demo" if args.recipe == "demo" else "trainkit train's defaults, 256 px shapes"
        _plot(curves, args.plot, f"{title}, {len(args.seeds)} seeds, {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
