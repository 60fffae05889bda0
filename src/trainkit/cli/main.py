"""The ``trainkit`` command: ``demo``, ``train``, ``predict``, ``evaluate``, ``check``, ``synth``, ``summary``.

Bad arguments print one line and exit with status 2; a data or checkpoint problem prints one
line (never a traceback) and exits with status 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from trainkit.cli import _argument_types as types
from trainkit.cli import _model_flags as model_flags

__all__ = ["build_parser", "main"]

_EXAMPLES = {
    "demo": "example: trainkit demo --run-dir runs/demo --epochs 28",
    "train": "example: trainkit train --images PennFudanPed/PNGImages --masks PennFudanPed/PedMasks "
    "--mask-suffix _mask --target binary --size 256 --epochs 30 (or --model smp:Unet --encoder resnet34 "
    "--encoder-weights imagenet --encoder-lr 1e-4; see docs/models.md)",
    "predict": "example: trainkit predict --checkpoint runs/train/checkpoints/best.pt --images photos --out masks",
    "evaluate": "example: trainkit evaluate --checkpoint runs/train/checkpoints/best.pt --images test/images "
    "--masks test/masks --mask-suffix _mask",
    "check": "example: trainkit check --images data/train --masks data/train_masks --mask-suffix _mask --num-classes 2",
    "synth": "example: trainkit synth data/shapes --n 200 --size 64",
    "summary": "example: trainkit summary runs/demo/checkpoints/best.pt",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (plus where to get help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trainkit`` command.

    Example:
        >>> build_parser().parse_args(["synth", "out", "--n", "4"]).n
        4
    """
    parser = _Parser(
        prog="trainkit",
        description="Segmentation training for PyTorch.",
        epilog="Run `trainkit demo` first: it trains a UNet on synthetic shapes offline.",
    )
    from trainkit import __version__

    parser.add_argument("--version", action="version", version=f"trainkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EXAMPLES[name],
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )

    demo = command("demo", "train a UNet on a synthetic shapes dataset (offline, about 3 minutes on 2 CPU cores)")
    demo.add_argument("--run-dir", default="runs/demo", help="where data, checkpoints, metrics and plots go")
    demo.add_argument("--epochs", type=types.positive_int, default=28, help="training epochs")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    demo.add_argument("--n", type=types.positive_int, default=480, help="number of synthetic images")
    demo.add_argument("--size", type=types.shapes_size, default=64, help="image size in pixels (at least 16)")
    demo.add_argument("--no-progress", action="store_true", help="one line an epoch instead of progress bars")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --run-dir")

    train = command("train", "train a segmentation model on your own folders of images and masks")
    train.add_argument("--images", required=True, help="folder of images")
    train.add_argument("--masks", required=True, help="folder of masks")
    train.add_argument("--mask-suffix", default="", help="mask stem = image stem + suffix, e.g. _mask")
    train.add_argument("--target", choices=("semantic", "binary"), default="semantic", help="mask meaning")
    train.add_argument("--num-classes", type=types.num_classes, help="classes incl. background (semantic), 2 to 255")
    train.add_argument("--color-map", help="class_dict.csv (name,r,g,b) for colour-coded masks")
    train.add_argument("--val-split", type=types.fraction, help="held-out fraction, in [0, 1) (default 0.2)")
    train.add_argument("--val-images", help="validate on this folder of images instead of a --val-split")
    train.add_argument("--val-masks", help="the masks of --val-images")
    train.add_argument("--size", type=types.size, default=(256, 256), help="training size N or HxW")
    train.add_argument("--epochs", type=types.positive_int, default=20)
    train.add_argument("--batch-size", type=types.positive_int, default=8)
    train.add_argument("--lr", type=types.positive_float, default=1e-3, help="peak learning rate (warm-up, cosine)")
    train.add_argument("--amp", type=types.amp_mode, default="auto", help="auto, fp16, bf16 or off")
    train.add_argument("--run-dir", default="runs/train")
    train.add_argument("--resume", help="checkpoint path, or 'last' for <run-dir>/checkpoints/last.pt")
    train.add_argument("--overwrite", action="store_true", help="replace the run --run-dir holds (without --resume)")
    train.add_argument("--device", default="auto")
    model = train.add_argument_group("model (docs/models.md)")
    model.add_argument("--model", default="unet", help="unet, torchvision:<builder> (e.g. "
                       "torchvision:deeplabv3_mobilenet_v3_large), smp:<Arch> (e.g. smp:Unet)")  # fmt: skip
    model.add_argument("--encoder", help="smp encoder, e.g. resnet34, efficientnet-b0, tu-convnext_tiny (timm)")
    model.add_argument("--encoder-weights", help="pretrained encoder from the cache: smp 'imagenet', torchvision "
                       "backbone 'DEFAULT'; never downloaded")  # fmt: skip
    model.add_argument("--weights", help="torchvision whole-model weights from the cache, e.g. DEFAULT (new head)")
    model.add_argument("--model-option", action="append", default=[], type=types.model_option, metavar="KEY=VALUE",
                       help="another builder option, repeatable, e.g. encoder_depth=3 or aux_loss=True")  # fmt: skip
    model.add_argument("--encoder-lr", type=types.positive_float, help="learning rate of the encoder (default --lr)")
    model.add_argument("--freeze-encoder", type=types.non_negative_int, default=0, metavar="EPOCHS",
                       help="keep the encoder frozen for the first EPOCHS epochs")  # fmt: skip
    model.add_argument("--base-channels", type=types.positive_int, help="UNet width (default 32)")
    model.add_argument("--depth", type=types.positive_int, help="UNet down-samplings (default 4); --size >= 2**depth")
    model_flags.import_option(model)
    train.add_argument("--workers", type=types.non_negative_int, default=0, help="DataLoader worker processes")
    train.add_argument("--seed", type=types.seed, default=0, help="in [0, 2**32)")
    train.add_argument("--no-progress", action="store_true")

    predict = command("predict", "write one palette mask PNG per image with a trained checkpoint")
    predict.add_argument("--checkpoint", required=True, help="a checkpoint from `trainkit train` or `demo`")
    predict.add_argument("--images", required=True, help="folder of images")
    predict.add_argument("--out", required=True, help="output folder (created), not the --images folder")
    predict.add_argument("--overlays", action="store_true", help="also write overlays/<stem>.png (mask on image)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--batch-size", type=types.positive_int, default=8)
    model_flags.import_option(predict)

    evaluate = command("evaluate", "score a checkpoint on a labelled folder (mIoU, Dice, accuracy, per class)")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint that records its spec (trainkit train)")
    evaluate.add_argument("--images", required=True, help="folder of images")
    evaluate.add_argument("--masks", required=True, help="folder of masks, read as in training")
    evaluate.add_argument("--mask-suffix", default="", help="mask stem = image stem + suffix, e.g. _mask")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--batch-size", type=types.positive_int, default=8)
    evaluate.add_argument("--workers", type=types.non_negative_int, default=0, help="DataLoader worker processes")
    model_flags.import_option(evaluate)

    check = command("check", "validate a dataset folder without training; exit status 1 on errors")
    check.add_argument("--images", required=True)
    check.add_argument("--masks", required=True)
    check.add_argument("--mask-suffix", default="")
    check.add_argument("--num-classes", type=types.num_classes, help="2 to 255")
    check.add_argument("--color-map", help="class_dict.csv for colour-coded masks")
    check.add_argument("--channels", type=types.channels, default=3, help="1, 3 or 4")
    check.add_argument("--recursive", action="store_true")

    synth = command("synth", "write the synthetic shapes dataset (Penn-Fudan layout)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--n", type=types.positive_int, default=200)
    synth.add_argument("--size", type=types.shapes_size, default=64, help="at least 16")
    synth.add_argument("--seed", type=types.seed, default=0, help="in [0, 2**32)")

    summary = command("summary", "print the layer table of a checkpoint's model")
    summary.add_argument("checkpoint", help="a checkpoint from `trainkit train` or `demo`")
    summary.add_argument("--depth", type=types.positive_int, default=3, help="module nesting depth shown")
    model_flags.import_option(summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trainkit`` command; return the exit status.

    Example:
        >>> main(["synth", "/tmp/shapes_doc", "--n", "2", "--size", "16"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    from trainkit.errors import TrainkitError

    try:
        model_flags.import_modules(getattr(args, "imports", []))
        return _COMMANDS[args.command](args)
    except (TrainkitError, ValueError, OSError, ImportError) as err:
        print(f"trainkit {args.command}: error: {_error_message(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"trainkit {args.command}: interrupted", file=sys.stderr)
        return 130


_WORKER_ERROR = re.compile(r"Caught (\w+) in .+?\.\nOriginal Traceback")
_OS_ERROR_HINTS = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.ENOSPC: "free disk space or choose another path",
    errno.EDQUOT: "free disk space (the quota is reached) or choose another path",
    errno.ENOTDIR: "a file is in the way where a folder is needed: choose another path",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another path",
    errno.EISDIR: "a folder is in the way where a file is needed: choose another path",
}


def _error_message(err: BaseException) -> str:
    """The one line the command prints for an error it expects (data, checkpoint, file system).

    An error raised in a DataLoader worker arrives wrapped in the worker's traceback (torch re-raises
    the original type with ``Caught X in DataLoader worker process N. Original Traceback ...`` as its
    message): the line is the original message. An ``OSError`` names its file and says what to do.

    Example:
        >>> _error_message(PermissionError(13, "Permission denied", "runs/a"))
        'runs/a: Permission denied; check its permissions or choose another path'
        >>> _error_message(ValueError("Caught ValueError in DataLoader worker process 0.\\nOriginal Traceback "
        ...                          "(most recent call last):\\n  ...\\nValueError: a.png: cannot decode\\n"))
        'a.png: cannot decode'
    """
    text = str(err)
    wrapped = _WORKER_ERROR.search(text)
    if wrapped is not None:
        # The original message follows the last "<module.>Name: " line of the formatted traceback
        # (kept after whatever context an outer error put before it).
        heads = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(wrapped.group(1))}: ", text, re.MULTILINE))
        original = text[heads[-1].end() :].strip() if heads else text.strip().splitlines()[-1]
        return text[: wrapped.start()] + original
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        hint = _OS_ERROR_HINTS.get(err.errno or 0, "check the path")
        return f"{where}{err.strerror}; {hint}"
    return text


def _usage_error(command: str, message: str) -> int:
    """Report a bad combination of options the way argparse reports a bad option: one line, status 2."""
    print(f"trainkit {command}: error: {message} (see `trainkit {command} --help`)", file=sys.stderr)
    return 2


def _demo(args: argparse.Namespace) -> int:
    from trainkit.cli.demo import run_demo

    result = run_demo(
        args.run_dir,
        epochs=args.epochs,
        device=args.device,
        n=args.n,
        size=args.size,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(
        f"demo: val mIoU {result['miou']:.3f} after {result['epochs']} epochs in {result['seconds']:.0f} s; "
        f"outputs in {result['run_dir']}: checkpoints/best.pt, checkpoints/last.pt, metrics.csv, curves.png, "
        "predictions.png"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from trainkit.cli.recipe import Recipe, train_recipe

    if args.target == "semantic" and args.num_classes is None and args.color_map is None:
        return _usage_error("train", "--num-classes is required for --target semantic (or give --color-map)")
    if (args.val_images is None) != (args.val_masks is None):
        return _usage_error("train", "--val-images and --val-masks go together: give both folders, or neither")
    if args.val_images is not None and args.val_split is not None:
        return _usage_error("train", "give --val-split or --val-images/--val-masks, not both")
    options, refused = model_flags.model_options(args)
    if refused:
        return _usage_error("train", refused)
    if args.model.lower() == "unet":
        smallest = 2 ** options["depth"]
        if min(args.size) < smallest:
            return _usage_error(
                "train",
                f"--size {args.size[0]}x{args.size[1]} is too small for --depth {options['depth']}: the UNet halves "
                f"the image {options['depth']} times, so it needs at least {smallest}x{smallest}; raise --size or "
                "lower --depth",
            )
    recipe = Recipe(
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
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        amp=args.amp,
        run_dir=args.run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        model=args.model,
        model_options=options,
        encoder_lr=args.encoder_lr,
        freeze_encoder=args.freeze_encoder,
        num_workers=args.workers,
        seed=args.seed,
        progress=not args.no_progress,
    )
    history = train_recipe(recipe).history
    last = history[-1] if history else {}
    shown = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith(("train/loss", "val/")))
    print(f"train: {len(history)} epochs; {shown}; checkpoints in {args.run_dir}/checkpoints")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from trainkit.cli.predict import OVERLAYS, predict_folder

    def report(path: object, reason: str) -> None:
        print(f"trainkit predict: skipped {reason}", file=sys.stderr)

    result = predict_folder(
        args.checkpoint,
        args.images,
        args.out,
        device=args.device,
        overlays=args.overlays,
        batch_size=args.batch_size,
        on_failure=report,
    )
    overlays = f" and {len(result.overlays)} overlays to {os.path.join(args.out, OVERLAYS)}" if args.overlays else ""
    print(f"predict: wrote {len(result.masks)} masks to {args.out}{overlays}")
    if not result.failed:
        return 0
    names = ", ".join(str(path) for path, _ in result.failed[:10])
    more = f" and {len(result.failed) - 10} more" if len(result.failed) > 10 else ""
    total = len(result.failed) + len(result.masks)
    print(
        f"trainkit predict: error: {len(result.failed)} of {total} images could not be read and have no mask: "
        f"{names}{more}; re-export or remove them and run again (the masks written are kept)",
        file=sys.stderr,
    )
    return 1


def _check(args: argparse.Namespace) -> int:
    from trainkit.cli.recipe import read_color_map
    from trainkit.data import check

    color_map = read_color_map(args.color_map)[0] if args.color_map else None
    report = check(
        images=args.images,
        masks=args.masks,
        mask_suffix=args.mask_suffix,
        num_classes=args.num_classes,
        color_map=color_map,
        channels=args.channels,
        recursive=args.recursive,
    )
    print(report)
    return 0 if report.ok else 1


def _synth(args: argparse.Namespace) -> int:
    from trainkit.data import make_shapes

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"{args.out} is a file; `trainkit synth` writes a dataset folder: give a folder path")
    root = make_shapes(args.out, n=args.n, size=args.size, seed=args.seed, exist_ok=True)
    print(f"synth: wrote {args.n} images to {root} (PNGImages/, PedMasks/, SemanticMasks/, instances/, classes.json)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from trainkit.cli.evaluate import evaluate_folder

    result = evaluate_folder(
        args.checkpoint,
        args.images,
        args.masks,
        mask_suffix=args.mask_suffix,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result.scores.items())
    h, w = result.size
    print(f"evaluate: {result.images} images at {h}x{w} (the checkpoint's size); {scores}")
    print(result.table())
    return 0


def _summary(args: argparse.Namespace) -> int:
    from trainkit.cli.recipe import load_model
    from trainkit.utils.summary import summary

    model, spec = load_model(args.checkpoint)
    summary(model, (spec.model.in_channels, *spec.preprocessing.size), depth=args.depth, verbose=1)  # type: ignore[misc]
    return 0


_COMMANDS: dict[str, Any] = {
    "demo": _demo,
    "train": _train,
    "predict": _predict,
    "evaluate": _evaluate,
    "check": _check,
    "synth": _synth,
    "summary": _summary,
}
