"""The UNet segmentation recipe behind ``trainkit demo`` and ``trainkit train``.

Folders of images and masks → a seeded train/val split → ``train_preset``/``eval_preset``
(uint8 through the loader, normalised on the device) → ``UNet`` → Adam + cosine schedule →
``DiceCELoss`` → :class:`~trainkit.Trainer` with mixed precision, mIoU, checkpoints and curves.
The checkpoint keeps the model and data settings (``extra["recipe"]``) so ``trainkit predict``
and ``trainkit summary`` can rebuild the model from the file alone.
"""

from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import torch

__all__ = ["Recipe", "RecipeRun", "build_model", "load_recipe_model", "read_color_map", "train_recipe"]


@dataclass
class Recipe:
    """Everything the UNet recipe needs; the CLI fills it from its arguments.

    Example:
        >>> r = Recipe(images="data/img", masks="data/masks", num_classes=2, epochs=1)
        >>> r.size
        (256, 256)
    """

    images: str
    masks: str
    mask_suffix: str = ""
    target: str = "semantic"
    num_classes: int | None = None
    color_map: str | None = None
    val_split: float = 0.2
    size: tuple[int, int] = (256, 256)
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    amp: str | bool = "auto"
    run_dir: str = "runs/train"
    resume: str | None = None
    overwrite: bool = False
    device: str = "auto"
    base_channels: int = 32
    depth: int = 4
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    scale: tuple[float, float] = (0.5, 2.0)
    callbacks: list[Any] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """A ``UNet`` from the ``model`` settings stored in a recipe checkpoint.

    Example:
        >>> build_model({"name": "UNet", "in_channels": 3, "out_channels": 2, "base_channels": 4, "depth": 2}).depth
        2
    """
    from trainkit.models import UNet

    if config.get("name") != "UNet":
        raise ValueError(f"the recipe only builds UNet models, the checkpoint asks for {config.get('name')!r}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return UNet(**kwargs)


def load_recipe_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild and load the model of a checkpoint written by the recipe; return it with the recipe settings.

    Raises:
        CheckpointError: the checkpoint was not written by ``trainkit train``/``demo`` (no recipe settings).

    Example:
        >>> model, settings = load_recipe_model("runs/demo/checkpoints/best.pt")  # doctest: +SKIP
    """
    from trainkit.engine.checkpoint import load_checkpoint, load_model_state
    from trainkit.errors import CheckpointError

    ckpt = load_checkpoint(path)
    settings = (ckpt.get("extra") or {}).get("recipe")
    if not settings:
        raise CheckpointError(
            f"{path} has no model settings (it was not written by `trainkit train` or `trainkit demo`); load it in "
            "Python with `trainkit.load_checkpoint(path, model)` and your own model instead"
        )
    model = build_model(settings["model"])
    load_model_state(model, ckpt["model"], path=path)
    return model.to(device).eval(), settings


class RecipeRun(NamedTuple):
    """What :func:`train_recipe` returns."""

    trainer: Any
    history: list[dict[str, float]]
    settings: dict[str, Any]
    val_loader: Any


def train_recipe(recipe: Recipe) -> RecipeRun:
    """Train the UNet recipe; return the trainer, its history, the settings saved with it and the val loader.

    Example:
        >>> run = train_recipe(Recipe("imgs", "masks", num_classes=2))  # doctest: +SKIP
        >>> run.history[-1]["val/miou"]  # doctest: +SKIP
    """
    from torch.utils.data import DataLoader, Subset

    from trainkit.data import SegmentationDataset, collate
    from trainkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchNormalize, eval_preset, train_preset
    from trainkit.engine import EarlyStopping, RunDir, Trainer
    from trainkit.losses import DiceCELoss
    from trainkit.metrics import MeanIoU

    color_map: dict[tuple[int, int, int], int] | None = None
    class_names = list(recipe.class_names)
    if recipe.color_map:
        color_map, names = read_color_map(recipe.color_map)
        class_names = class_names or list(names)
    train_ds = SegmentationDataset(
        recipe.images,
        recipe.masks,
        mask_suffix=recipe.mask_suffix,
        target=recipe.target,
        num_classes=recipe.num_classes,
        color_map=color_map,
        transforms=train_preset(recipe.size, scale=recipe.scale, normalize=False),
    )
    val_ds = copy.copy(train_ds)  # the same pairs, listed and paired once; only the transforms differ
    val_ds.transforms = eval_preset(recipe.size, normalize=False)
    num_classes = _num_classes(recipe, color_map)
    train_idx, val_idx = split_indices(len(train_ds), recipe.val_split, recipe.seed)
    make_loader = partial(
        DataLoader,
        batch_size=recipe.batch_size,
        num_workers=recipe.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=recipe.num_workers > 0,
    )
    train_loader = make_loader(Subset(train_ds, train_idx), shuffle=True, drop_last=len(train_idx) > recipe.batch_size)
    val_loader = make_loader(Subset(val_ds, val_idx)) if val_idx else None

    torch.manual_seed(recipe.seed)
    model_config = {
        "name": "UNet",
        "in_channels": 3,
        "out_channels": num_classes,
        "base_channels": recipe.base_channels,
        "depth": recipe.depth,
    }
    model = build_model(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.epochs * max(1, len(train_loader))))
    monitor = "val/miou" if val_loader is not None else "train/loss"
    trainer = Trainer(
        model,
        optimizer,
        DiceCELoss(ignore_index=255),
        metrics={"miou": MeanIoU(num_classes=num_classes, ignore_index=255)},
        scheduler=scheduler,
        scheduler_interval="step",
        amp=recipe.amp,
        device=recipe.device,
        run_dir=RunDir(recipe.run_dir, overwrite=recipe.overwrite),  # a fresh run never replaces one unasked
        seed=recipe.seed,
        progress=recipe.progress,
        batch_transform=BatchNormalize(IMAGENET_MEAN, IMAGENET_STD),
        callbacks=[
            _checkpoint(monitor),
            EarlyStopping(monitor, mode="max" if "miou" in monitor else "min", patience=max(5, recipe.epochs // 3)),
            *recipe.callbacks,
        ],
    )
    settings = {
        "model": model_config,
        "data": {
            "size": list(recipe.size),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "num_classes": num_classes,
            "target": recipe.target,
            "class_names": class_names,
        },
        "train": {k: v for k, v in vars(recipe).items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    trainer.extra_state["recipe"] = settings
    history = trainer.fit(train_loader, val_loader, epochs=recipe.epochs, resume=recipe.resume)
    return RecipeRun(trainer, history, settings, val_loader)


def read_color_map(path: str | os.PathLike[str]) -> tuple[dict[tuple[int, int, int], int], list[str]]:
    """``read_class_dict`` for ``--color-map``, whose errors all name the file (a binary file included).

    Raises:
        DataError: the file is missing, not a text CSV, or not a ``name,r,g,b`` table.

    Example:
        >>> color_map, names = read_color_map("CamVid/class_dict.csv")  # doctest: +SKIP
    """
    from trainkit.data import read_class_dict
    from trainkit.errors import DataError

    try:
        color_map, names = read_class_dict(path)
    except (UnicodeDecodeError, csv.Error) as err:  # a binary file, or one line longer than csv allows
        raise DataError(
            f"--color-map {path} is not a text CSV ({err}); give a class_dict.csv with a name,r,g,b header "
            "line and one class a line"
        ) from err
    return color_map, list(names)


def warmup_cosine(total_steps: int, warmup: float = 0.1, floor: float = 0.01) -> Any:
    """An lr factor per step: linear warm-up over ``warmup`` of the steps, then cosine decay to ``floor``.

    A plain function (not saved in the scheduler's state), so ``--resume`` with more ``--epochs``
    continues on the longer schedule instead of failing on a finished one.

    Example:
        >>> f = warmup_cosine(100)
        >>> round(f(0), 3), f(10), round(f(100), 3)
        (0.1, 1.0, 0.01)
    """
    warm = max(1, round(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return max(floor, (step + 1) / warm)
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def split_indices(n: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)`` into train and validation indices.

    Example:
        >>> train, val = split_indices(10, 0.2, seed=0)
        >>> len(train), len(val), sorted(train + val) == list(range(10))
        (8, 2, True)
    """
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"`--val-split` must be in [0, 1), got {val_split}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, math.ceil(n * val_split)) if val_split > 0 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def _num_classes(recipe: Recipe, color_map: dict | None) -> int:
    if recipe.target == "binary":
        return 2
    if recipe.num_classes is not None:
        return recipe.num_classes
    if color_map:
        return max(v for v in color_map.values() if v != 255) + 1
    raise ValueError("`--num-classes` is required for semantic targets (or give `--color-map class_dict.csv`)")


def _checkpoint(monitor: str) -> Any:
    from trainkit.engine import ModelCheckpoint

    return ModelCheckpoint(monitor=monitor, mode="max" if "miou" in monitor else "min")
