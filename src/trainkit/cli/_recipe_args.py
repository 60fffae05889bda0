"""The :class:`~trainkit.cli.recipe.Recipe` that ``trainkit train`` and ``lr-find`` make of their arguments.

The combinations argparse cannot check are refused here, before any data is read: the function returns the
line to print instead of a recipe (the command prints it and exits with status 2).
"""

from __future__ import annotations

import argparse

from trainkit.cli import _model_flags as model_flags
from trainkit.cli.recipe import Recipe

__all__ = ["recipe_from_args"]


def recipe_from_args(args: argparse.Namespace) -> Recipe | str:
    """The recipe of ``train``'s or ``lr-find``'s arguments, or the line refusing a combination of them.

    ``lr-find`` has no ``--epochs``, ``--lr``, ``--run-dir`` or fine-tuning flags: the recipe gets their defaults
    and ``run_dir=None`` (nothing is written).

    Example:
        >>> from trainkit.cli import build_parser
        >>> args = build_parser().parse_args(["lr-find", "--images", "i", "--masks", "m", "--target", "binary"])
        >>> recipe = recipe_from_args(args)
        >>> recipe.run_dir, recipe.model_options
        (None, {'base_channels': 16, 'depth': 4})
        >>> recipe_from_args(build_parser().parse_args(["train", "--images", "i", "--masks", "m"]))
        '--num-classes is required for --target semantic (or give --color-map)'
    """
    if args.target == "semantic" and args.num_classes is None and args.color_map is None:
        return "--num-classes is required for --target semantic (or give --color-map)"
    class_names = getattr(args, "class_names", None) or []
    expected = 2 if args.target == "binary" else args.num_classes
    if class_names and expected is not None and len(class_names) != expected:
        return (
            f"--class-names gives {len(class_names)} names for {expected} classes: give one name per class id, "
            "background (0) first"
        )
    if (args.val_images is None) != (args.val_masks is None):
        return "--val-images and --val-masks go together: give both folders, or neither"
    if args.val_images is not None and args.val_split is not None:
        return "give --val-split or --val-images/--val-masks, not both"
    options, refused = model_flags.model_options(args)
    if refused:
        return refused
    if args.model.lower() == "unet" and min(args.size) < 2 ** options["depth"]:
        smallest, depth = 2 ** options["depth"], options["depth"]
        return (
            f"--size {args.size[0]}x{args.size[1]} is too small for --depth {depth}: the UNet halves the image "
            f"{depth} times, so it needs at least {smallest}x{smallest}; raise --size or lower --depth"
        )
    training = args.command == "train"
    if training and args.scale[0] > args.scale[1]:
        low, high = args.scale
        return f"--scale {low:g} {high:g}: give the lower zoom first, e.g. --scale {high:g} {low:g}"
    return Recipe(
        images=args.images,
        masks=args.masks,
        mask_suffix=args.mask_suffix,
        target=args.target,
        num_classes=args.num_classes,
        color_map=args.color_map,
        val_split=0.2 if args.val_split is None else args.val_split,
        val_images=args.val_images,
        val_masks=args.val_masks,
        size=args.size,
        batch_size=args.batch_size,
        amp=args.amp,
        device=args.device,
        model=args.model,
        model_options=options,
        num_workers=args.workers,
        seed=args.seed,
        class_names=class_names,
        exif_orientation=not args.no_exif_orientation,
        **(
            {
                "epochs": args.epochs,
                "scale": tuple(args.scale),
                "lr": args.lr,
                "run_dir": args.run_dir,
                "resume": args.resume,
                "overwrite": args.overwrite,
                "encoder_lr": args.encoder_lr,
                "freeze_encoder": args.freeze_encoder,
                "early_stopping": args.early_stop,
                "progress": not args.no_progress,
            }
            if training
            else {"run_dir": None, "progress": False}
        ),
    )
