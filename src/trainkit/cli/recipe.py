"""The segmentation recipe behind ``trainkit demo`` and ``trainkit train``.

Folders of images and masks → a seeded train/val split (or a given validation folder) →
``train_preset``/``eval_preset`` (uint8 through the loader, normalised on the device) → a model from
the factory (``UNet`` by default, torchvision and smp ones by name) → AdamW (the encoder at its own
rate when asked, frozen for the first epochs when asked) + warm-up/cosine schedule → ``DiceCELoss`` →
:class:`~trainkit.Trainer` with mixed precision, mIoU, checkpoints and curves. Each checkpoint records
its :class:`~trainkit.models.CheckpointSpec` (``extra["spec"]``), so ``trainkit predict``, ``evaluate``
and ``summary`` rebuild and use the model from the file alone (:func:`load_model`).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch

from trainkit.errors import CheckpointError

if TYPE_CHECKING:
    from trainkit.models import CheckpointSpec

__all__ = [
    "MIN_EPOCHS",
    "MIN_STEPS",
    "Recipe",
    "RecipeParts",
    "RecipeRun",
    "build_recipe",
    "load_model",
    "normalizer",
    "planned_epochs",
    "read_color_map",
    "train_recipe",
]

MIN_EPOCHS = 20
"""The epochs ``trainkit train`` plans by default (more when the set is small, see :data:`MIN_STEPS`)."""

MIN_STEPS = 500
"""The fewest optimizer steps a run planned by default has: 20 epochs of 38 images in batches of 8 are 80 steps,
after which a UNet from scratch is at val mIoU 0.74-0.83 on binary shapes at 128 px; 500 steps give 0.956."""


@dataclass
class Recipe:
    """Everything the recipe needs; the CLI fills it from its arguments.

    ``model`` and ``model_options`` name a model of :func:`trainkit.models.create_model`; for ``"unet"``,
    ``base_channels`` and ``depth`` are added to its options. ``encoder_lr`` trains the encoder at its own
    rate and ``freeze_encoder`` keeps it frozen for that many first epochs. ``val_images``/``val_masks``
    validate on that folder instead of a ``val_split`` of the training one. ``scale`` and ``color_jitter`` are
    :func:`~trainkit.data.transforms.train_preset`'s; the random scale is off by default (``(1.0, 1.0)``: each
    image resized to cover ``size``, then cropped): in runs of a few hundred steps, zooming by 0.5-2x (or even
    0.75-1.33x) kept a UNet at val mIoU 0.79 (0.85) where it reached 0.96 without, on binary shapes at 128 px.
    ``epochs=None`` plans :func:`planned_epochs`: 20, or more so a small set still gets ``MIN_STEPS`` steps.
    Every planned epoch runs (the best one is kept in ``best.pt``): the schedule decays over them, and on a small
    set the validation score is noisy while the rate is high, so stopping on it ended a 48-image run at epoch 9 of
    20 with val mIoU 0.53. ``early_stopping=True`` ends the run when the monitored score has not improved for
    ``max(5, epochs // 3)`` epochs. ``exif_orientation=False`` reads the images as stored instead of turned by
    their EXIF orientation tag (for masks drawn on the stored pixels); the checkpoint records it.

    Example:
        >>> r = Recipe(images="data/img", masks="data/masks", num_classes=2)
        >>> r.size, r.model, r.epochs, r.scale
        ((256, 256), 'unet', None, (1.0, 1.0))
    """

    images: str
    masks: str
    mask_suffix: str = ""
    target: str = "semantic"
    num_classes: int | None = None
    color_map: str | None = None
    val_split: float = 0.2
    size: tuple[int, int] = (256, 256)
    epochs: int | None = None
    batch_size: int = 8
    lr: float = 1.5e-3
    amp: str | bool = "auto"
    run_dir: str | None = "runs/train"
    resume: str | None = None
    overwrite: bool = False
    device: str = "auto"
    base_channels: int = 16
    depth: int = 4
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    color_jitter: float = 0.2
    exif_orientation: bool = True
    callbacks: list[Any] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    model: str = "unet"
    model_options: dict[str, Any] = field(default_factory=dict)
    encoder_lr: float | None = None
    freeze_encoder: int = 0
    val_images: str | None = None
    val_masks: str | None = None
    early_stopping: bool = False


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointSpec]:
    """Rebuild a checkpoint's model from its spec and load its weights; return it (in eval mode) with the spec.

    Reads checkpoints of ``trainkit train``/``demo`` and any that records a spec; those written by trainkit
    0.1.0's ``trainkit train`` (a UNet config in ``extra["recipe"]``) too.

    Raises:
        CheckpointError: the checkpoint records no spec, or its weights do not fit (the keys listed).
        ValueError: it names a registered model that this process has not registered (``--import`` it).

    Example:
        >>> import tempfile
        >>> from trainkit.engine.checkpoint import save_checkpoint
        >>> from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing
        >>> spec = CheckpointSpec(ModelSpec("unet", 2, options={"base_channels": 4, "depth": 2}), Preprocessing(32))
        >>> state = {"model": spec.model.build().state_dict(), "extra": {"spec": spec.to_dict()}}
        >>> model, read = load_model(save_checkpoint(tempfile.mkdtemp() + "/best.pt", state))
        >>> type(model).__name__, read.preprocessing.size
        ('UNet', (32, 32))
    """
    from trainkit.engine.checkpoint import load_checkpoint, load_model_state
    from trainkit.models import CheckpointSpec

    ckpt = load_checkpoint(path)
    try:
        spec = CheckpointSpec.from_checkpoint(ckpt)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    try:
        model = spec.model.build(pretrained=False)  # every weight is in the checkpoint: no cache, no download
    except ValueError as err:
        raise ValueError(
            f"{path}: {err}. On the command line, `--import MODULE` imports the module (or .py file) that registers it"
        ) from err
    load_model_state(model, ckpt["model"], path=path)
    return model.to(device).eval(), spec


def normalizer(spec: CheckpointSpec) -> Any:
    """The batch transform that turns uint8 images into the model's input: times ``scale``, then mean/std.

    Example:
        >>> from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing
        >>> spec = CheckpointSpec(ModelSpec("unet", num_classes=2), Preprocessing(8, mean=(0.5,), std=(0.5,)))
        >>> normalizer(spec)(torch.tensor([[[[0, 255]]]], dtype=torch.uint8)).tolist()
        [[[[-1.0, 1.0]]]]
    """
    from trainkit.data.transforms import BatchNormalize

    prep = spec.preprocessing
    normalize = BatchNormalize(prep.mean, prep.std)
    if math.isclose(prep.scale, 1 / 255):
        return normalize  # it scales uint8 by 1/255 itself
    scale = prep.scale

    def scaled(batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return normalize(batch.float() * scale)
        return normalize((batch[0].float() * scale, *batch[1:]))

    return scaled


class RecipeRun(NamedTuple):
    """What :func:`train_recipe` returns."""

    trainer: Any
    history: list[dict[str, float]]
    spec: CheckpointSpec
    val_loader: Any


class RecipeParts(NamedTuple):
    """What :func:`build_recipe` returns: the trainer and its loaders, ready to fit (or to test learning rates),
    and the epochs its schedule is planned for."""

    trainer: Any
    train_loader: Any
    val_loader: Any
    spec: CheckpointSpec
    epochs: int


def planned_epochs(epochs: int | None, steps_per_epoch: int) -> int:
    """``epochs`` when given; otherwise ``MIN_EPOCHS``, or more so the run makes at least ``MIN_STEPS`` steps.

    A schedule counted in epochs alone gives a small set too few optimizer steps to train: 38 images in
    batches of 8 are 4 steps an epoch (the last, partial batch is dropped), 80 in 20 epochs.

    Example:
        >>> planned_epochs(None, steps_per_epoch=5), planned_epochs(None, 400), planned_epochs(3, 5)
        (100, 20, 3)
    """
    if epochs is not None:
        return epochs
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(1, steps_per_epoch)))


def train_recipe(recipe: Recipe) -> RecipeRun:
    """Train the recipe; return the trainer, its history, the spec saved with it and the val loader.

    When ``epochs=None`` plans more than ``MIN_EPOCHS`` (a small set), one line on stderr says how many and why.

    Example:
        >>> run = train_recipe(Recipe("imgs", "masks", num_classes=2))  # doctest: +SKIP
        >>> run.history[-1]["val/miou"]  # doctest: +SKIP
    """
    parts = build_recipe(recipe)
    if recipe.epochs is None and parts.epochs > MIN_EPOCHS:
        print(f"train: {len(parts.train_loader)} optimizer steps an epoch: planning {parts.epochs} epochs, so the "
              f"schedule has at least {MIN_STEPS} steps (--epochs N to choose)", file=sys.stderr)  # fmt: skip
    history = parts.trainer.fit(parts.train_loader, parts.val_loader, epochs=parts.epochs, resume=recipe.resume)
    return RecipeRun(parts.trainer, history, parts.spec, parts.val_loader)


def build_recipe(recipe: Recipe) -> RecipeParts:
    """The recipe's model, loaders, optimizer, schedule, loss and :class:`~trainkit.Trainer`, before any training.

    With ``run_dir=None`` the trainer writes nothing (no checkpoints, metrics or curves): ``trainkit lr-find``
    builds it so.

    Raises:
        ValueError: ``class_names`` that are not one per class, a model that cannot take ``size``...
        DataError: the folders cannot be paired or read.

    Example:
        >>> parts = build_recipe(Recipe("imgs", "masks", num_classes=2, run_dir=None))  # doctest: +SKIP
        >>> parts.trainer.lr_find(parts.train_loader).suggestion  # doctest: +SKIP
        0.0031
    """
    from trainkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from trainkit.engine import EarlyStopping, RunDir, Trainer
    from trainkit.engine.callbacks import FreezeEncoder
    from trainkit.losses import DiceCELoss
    from trainkit.metrics import MeanIoU
    from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing, param_groups

    color_map: dict[tuple[int, int, int], int] | None = None
    class_names = list(recipe.class_names)
    if recipe.color_map:
        color_map, names = read_color_map(recipe.color_map)
        class_names = class_names or list(names)
    num_classes = _num_classes(recipe, color_map)
    if recipe.class_names and len(recipe.class_names) != num_classes:
        raise ValueError(
            f"`class_names` (--class-names) gives {len(recipe.class_names)} names for {num_classes} classes: give one "
            "name per class id, background (0) first"
        )
    options = dict(recipe.model_options)
    if recipe.model.lower() == "unet":
        options = {"base_channels": recipe.base_channels, "depth": recipe.depth, **options}
    spec = CheckpointSpec(
        ModelSpec(recipe.model, num_classes, 3, options),
        Preprocessing(tuple(recipe.size), 1 / 255, IMAGENET_MEAN, IMAGENET_STD, recipe.exif_orientation),  # type: ignore[arg-type]
        class_names=class_names if len(class_names) == num_classes else [],
        color_map=color_map,
        target=recipe.target,
        mask_suffix=recipe.mask_suffix,
    )
    torch.manual_seed(recipe.seed)
    model = spec.model.build()  # pretrained weights, when asked, from the cache; refused before the data is read
    _check_size(model, spec)
    train_loader, val_loader = _loaders(recipe, color_map)
    if recipe.encoder_lr is not None:
        params: Any = param_groups(model, lr=recipe.lr, encoder_lr=recipe.encoder_lr)
    else:
        params = model.parameters()
    # fused: one kernel for every parameter (0.6 ms a step for the demo's UNet on 2 CPU cores, 2.3 ms unfused)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=1e-4, fused=True)
    epochs = planned_epochs(recipe.epochs, len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(epochs * max(1, len(train_loader))))
    monitor = "val/miou" if val_loader is not None else "train/loss"
    freeze = [FreezeEncoder(recipe.freeze_encoder)] if recipe.freeze_encoder else []
    saving = [_checkpoint(monitor)] if recipe.run_dir is not None else []
    mode, patience = ("max" if "miou" in monitor else "min"), max(5, epochs // 3)
    stopping = [EarlyStopping(monitor, mode=mode, patience=patience)] if recipe.early_stopping else []
    trainer = Trainer(
        model,
        optimizer,
        DiceCELoss(ignore_index=255),
        metrics={"miou": MeanIoU(num_classes=num_classes, ignore_index=255)},
        scheduler=scheduler,
        scheduler_interval="step",
        amp=recipe.amp,
        device=recipe.device,
        # a fresh run never replaces one unasked
        run_dir=RunDir(recipe.run_dir, overwrite=recipe.overwrite) if recipe.run_dir is not None else None,
        seed=recipe.seed,
        progress=recipe.progress,
        batch_transform=normalizer(spec),
        callbacks=[
            *saving,
            *stopping,
            *freeze,
            *recipe.callbacks,
        ],
    )
    trainer.extra_state["spec"] = spec.to_dict()
    # The command's arguments, for the record (the spec alone rebuilds and uses the model).
    recorded = {k: v for k, v in vars(recipe).items() if isinstance(v, (str, int, float, bool, type(None)))}
    trainer.extra_state["recipe"] = {"train": {**recorded, "epochs": epochs}}
    return RecipeParts(trainer, train_loader, val_loader, spec, epochs)


def _loaders(recipe: Recipe, color_map: dict[tuple[int, int, int], int] | None) -> tuple[Any, Any]:
    """The training loader and the validation one: a seeded split of the folder, or the given val folder."""
    from torch.utils.data import DataLoader, Subset

    from trainkit.data import SegmentationDataset, collate
    from trainkit.data.transforms import eval_preset, train_preset

    dataset = partial(
        SegmentationDataset,
        mask_suffix=recipe.mask_suffix,
        target=recipe.target,
        num_classes=recipe.num_classes,
        color_map=color_map,
        exif_orientation=recipe.exif_orientation,
    )
    preset = train_preset(recipe.size, scale=recipe.scale, color_jitter=recipe.color_jitter, normalize=False)
    train_ds = dataset(recipe.images, recipe.masks, transforms=preset)
    if recipe.val_images is not None and recipe.val_masks is not None:
        train_idx = list(range(len(train_ds)))
        val_ds = dataset(recipe.val_images, recipe.val_masks, transforms=eval_preset(recipe.size, normalize=False))
        val_idx = list(range(len(val_ds)))
    else:
        val_ds = copy.copy(train_ds)  # the same pairs, listed and paired once; only the transforms differ
        val_ds.transforms = eval_preset(recipe.size, normalize=False)
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
    return train_loader, val_loader


def _check_size(model: torch.nn.Module, spec: CheckpointSpec) -> None:
    """Refuse a ``--size`` the model cannot take (smp encoders need multiples of their output stride)."""
    check = getattr(model, "check_input_shape", None)  # segmentation_models_pytorch's own check
    if not callable(check):
        return
    h, w = cast(tuple[int, int], spec.preprocessing.size)
    try:
        check(torch.empty(1, spec.model.in_channels, h, w, device="meta"))
    except RuntimeError:
        encoder: Any = model.encoder
        stride = int(encoder.output_stride)
        fit_h, fit_w = (-(-h // stride) * stride, -(-w // stride) * stride)
        raise ValueError(
            f"--size {h}x{w} does not fit {spec.model.name}: its encoder needs a height and width divisible by "
            f"{stride}; use --size {fit_h}x{fit_w} (or a lower encoder_depth)"
        ) from None


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
