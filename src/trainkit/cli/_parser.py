"""The ``trainkit`` command's argument parser: one subcommand each, every option checked when it is read.

The types of :mod:`trainkit.cli._argument_types` refuse a bad value in one line (exit status 2); the
combinations of options that argparse cannot check are refused by the command's handler in ``main.py``.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from trainkit.cli import _argument_types as types
from trainkit.cli import _model_flags as model_flags

__all__ = ["build_parser"]

TARGETS = ("semantic", "binary", "instance")  # trainkit.data's targets (not imported: `--help` stays fast)
COLOR_MAP_HELP = "class_dict.csv (name,r,g,b) or CVAT's labelmap.txt, for colour-coded masks"
NO_EXIF_HELP = "read the stored pixels, not turned by the EXIF orientation tag as viewers show photos"
NO_EXIF_AS_TRAINED = NO_EXIF_HELP + " (default: as the checkpoint's training images were read)"

_EXAMPLES = {
    "demo": "example: trainkit demo --run-dir runs/demo --seed 1",
    "train": "example: trainkit train --images PennFudanPed/PNGImages --masks PennFudanPed/PedMasks "
    "--mask-suffix _mask --target binary --size 256 --epochs 30 (or --model smp:Unet --encoder resnet34 "
    "--encoder-weights imagenet --encoder-lr 1e-4; see docs/models.md)",
    "predict": "example: trainkit predict --checkpoint runs/train/checkpoints/best.pt --images photos --out masks "
    "--tile 512 --tta flip --overlays",
    "evaluate": "example: trainkit evaluate --checkpoint runs/train/checkpoints/best.pt --images test/images "
    "--masks test/masks --mask-suffix _mask",
    "check": "example: trainkit check --images data/train --masks data/train_masks --mask-suffix _mask --num-classes 2 "
    "(0/255 masks: --target binary; COCO: --annotations instances.json)",
    "lr-find": "example: trainkit lr-find --images PennFudanPed/PNGImages --masks PennFudanPed/PedMasks "
    "--mask-suffix _mask --target binary --size 256 (then trainkit train ... --lr <suggestion>)",
    "export": "example: trainkit export --checkpoint runs/train/checkpoints/best.pt --format onnx --out model.onnx "
    "--embed-preprocessing",
    "synth": "example: trainkit synth data/shapes --n 200 --size 64",
    "summary": "example: trainkit summary runs/demo/checkpoints/best.pt",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (plus where to get help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has one: not "(default: None)" after a help that says what it means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


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
            formatter_class=_HelpFormatter,
        )

    demo = command("demo", "train a UNet on a synthetic shapes dataset (offline, 2-3 minutes on 2 CPU cores)")
    demo.add_argument("--run-dir", default="runs/demo", help="where data, checkpoints, metrics and plots go")
    demo.add_argument("--epochs", type=types.positive_int, default=6, help="training epochs, all run")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    demo.add_argument("--n", type=types.positive_int, default=5000, help="number of synthetic images (10%% validate)")
    demo.add_argument("--size", type=types.shapes_size, default=64, help="image size in pixels (at least 16)")
    demo.add_argument("--seed", type=types.seed, default=0, help="draws the data, seeds the training; in [0, 2**32)")
    demo.add_argument("--no-progress", action="store_true", help="one line an epoch instead of progress bars")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --run-dir")

    train = command("train", "train a segmentation model on your own folders of images and masks")
    _data_options(train, exif_note=" (recorded in the checkpoint: predict and evaluate read images the same way)")
    train.add_argument("--class-names", type=types.class_names, metavar="A,B,C", help="one name per class id from 0, "
                       "recorded in the checkpoint (default: the --color-map's names)")  # fmt: skip
    train.add_argument("--epochs", type=types.positive_int, help="epochs, all run unless --early-stop (default: 20, "
                       "or as many as give a small set 500 optimizer steps)")  # fmt: skip
    train.add_argument("--scale", type=types.positive_float, nargs=2, default=(1.0, 1.0), metavar=("LOW", "HIGH"),
                       help="random zoom of each training image, e.g. 0.5 2.0 (default: off, 1 1)")  # fmt: skip
    train.add_argument("--early-stop", action="store_true", help="stop after max(5, epochs // 3) epochs without a "
                       "better val mIoU")  # fmt: skip
    train.add_argument("--lr", type=types.positive_float, default=1.5e-3, help="peak learning rate (warm-up, cosine)")
    train.add_argument("--amp", type=types.amp_mode, default="auto", help="auto, fp16, bf16 or off")
    train.add_argument("--run-dir", default="runs/train")
    train.add_argument("--resume", help="checkpoint path, or 'last' for <run-dir>/checkpoints/last.pt")
    train.add_argument("--overwrite", action="store_true", help="replace the run --run-dir holds (without --resume)")
    train.add_argument("--device", default="auto")
    model = _model_options(train)
    model.add_argument("--encoder-lr", type=types.positive_float, help="learning rate of the encoder (default --lr)")
    model.add_argument("--freeze-encoder", type=types.non_negative_int, default=0, metavar="EPOCHS",
                       help="keep the encoder frozen for the first EPOCHS epochs")  # fmt: skip
    train.add_argument("--workers", type=types.non_negative_int, default=0, help="DataLoader worker processes")
    train.add_argument("--seed", type=types.seed, default=0, help="in [0, 2**32)")
    train.add_argument("--no-progress", action="store_true")

    lr_find = command("lr-find", "find a learning rate for `trainkit train`: Smith's range test on the same data "
                      "and model, with a plot and a suggestion")  # fmt: skip
    _data_options(lr_find, exif_note=" (give train the same)")
    test = lr_find.add_argument_group("range test (docs/training.md#finding-a-learning-rate)")
    test.add_argument("--min-lr", type=types.positive_float, default=1e-7, help="the first learning rate, > 0")
    test.add_argument("--max-lr", type=types.positive_float, default=10.0, help="the last one, > --min-lr")
    test.add_argument("--num-steps", type=types.integer(2), default=100, help="optimizer steps at most, >= 2")
    test.add_argument("--smooth", type=types.fraction, default=0.98, help="weight of the past in the loss's moving "
                      "average, in [0, 1) (0: none)")  # fmt: skip
    test.add_argument("--diverge", type=types.finite_float(1, inclusive=False, example="4.0"), default=4.0,
                      help="stop when the smoothed loss exceeds this many times its minimum, > 1")  # fmt: skip
    test.add_argument("--out", default="lr_find.png", help="the plot (PNG) to write")
    lr_find.add_argument("--amp", type=types.amp_mode, default="auto", help="auto, fp16, bf16 or off")
    lr_find.add_argument("--device", default="auto")
    _model_options(lr_find)
    lr_find.add_argument("--workers", type=types.non_negative_int, default=0, help="DataLoader worker processes")
    lr_find.add_argument("--seed", type=types.seed, default=0, help="in [0, 2**32)")

    predict = command("predict", "write a mask per image, at its own size, with a trained checkpoint (the model sees "
                      "it at the scale it was trained at)")  # fmt: skip
    predict.add_argument("--checkpoint", required=True, help="a checkpoint from `trainkit train` or `demo`")
    predict.add_argument("--images", required=True, help="folder of images")
    predict.add_argument("--out", required=True, help="output folder (created), not the --images folder")
    predict.add_argument("--encoding", choices=("ids", "training"), default="ids", help="ids: palette PNGs "
                         "<stem>.png; training: as the training masks (0/255 for binary runs, the --color-map's "
                         "colours, <stem><mask-suffix>.png)")  # fmt: skip
    predict.add_argument("--overlays", action="store_true", help="also write overlays/<stem>.png (mask on image)")
    predict.add_argument("--probabilities", choices=("npy", "tif"), help="also write probabilities/<stem>.npy "
                         "(or .tif, the tiff extra): float32 [K, H, W]")  # fmt: skip
    predict.add_argument("--skip-existing", action="store_true", help="leave out images whose outputs are all in "
                         "--out: continue an interrupted prediction")  # fmt: skip
    inference = predict.add_argument_group("inference (docs/inference.md)")
    inference.add_argument("--tile", type=types.size, metavar="SIZE", help="sliding windows of SIZE (N or HxW) for "
                           "images larger than it at the training scale (default: each image in one pass)")  # fmt: skip
    inference.add_argument("--overlap", type=types.fraction, help="of the windows, a fraction in [0, 1) "
                           "(default 0.25; with --tile)")  # fmt: skip
    inference.add_argument("--blend", choices=("gaussian", "constant"), help="weighing of overlapping windows "
                           "(default gaussian; with --tile)")  # fmt: skip
    inference.add_argument("--tta", choices=("flip", "flip+scale"), help="average over the left-right mirror "
                           "(flip), and at 0.75x and 1.25x (flip+scale)")  # fmt: skip
    inference.add_argument("--batch-size", type=types.positive_int, default=4, help="windows a forward pass")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--no-exif-orientation", action="store_true", help=NO_EXIF_AS_TRAINED)
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    model_flags.import_option(predict)

    evaluate = command("evaluate", "score a checkpoint on a labelled folder (mIoU, Dice, accuracy, per class)")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint that records its spec (trainkit train)")
    evaluate.add_argument("--images", required=True, help="folder of images")
    evaluate.add_argument("--masks", required=True, help="folder of masks, read as in training")
    evaluate.add_argument("--mask-suffix", default="", help="mask stem = image stem + suffix, e.g. _mask")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--batch-size", type=types.positive_int, default=8)
    evaluate.add_argument("--workers", type=types.non_negative_int, default=0, help="DataLoader worker processes")
    evaluate.add_argument("--no-exif-orientation", action="store_true", help=NO_EXIF_AS_TRAINED)
    model_flags.import_option(evaluate)

    check = command("check", "validate a dataset (folders of images and masks, or COCO annotations) without "
                    "training; exit status 1 on errors")  # fmt: skip
    check.add_argument("--images", required=True, help="folder of images")
    labels = check.add_mutually_exclusive_group(required=True)
    labels.add_argument("--masks", help="folder of masks")
    labels.add_argument("--annotations", metavar="FILE", help="a COCO JSON file (CVAT, Label Studio, Roboflow, "
                        "labelme_to_coco) instead of --masks; needs the coco extra")  # fmt: skip
    check.add_argument("--target", choices=TARGETS, default="semantic", help="how the masks are read, as in "
                       "training: 0/255 masks are --target binary")  # fmt: skip
    check.add_argument("--threshold", type=types.finite_float(0, inclusive=True, example="127"),
                       help="--target binary: foreground above this mask value (default: any non-zero)")  # fmt: skip
    check.add_argument("--mask-suffix", help="mask stem = image stem + suffix, e.g. _mask")
    check.add_argument("--num-classes", type=types.num_classes, help="2 to 255")
    check.add_argument("--color-map", help=COLOR_MAP_HELP)
    check.add_argument("--channels", type=types.channels, default=3, help="1, 3 or 4")
    check.add_argument("--no-exif-orientation", action="store_true", help=NO_EXIF_HELP)
    check.add_argument("--recursive", action="store_true", help="also the subfolders of --images and --masks")

    synth = command("synth", "write the synthetic shapes dataset (Penn-Fudan layout)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--n", type=types.positive_int, default=200)
    synth.add_argument("--size", type=types.shapes_size, default=64, help="at least 16")
    synth.add_argument("--seed", type=types.seed, default=0, help="in [0, 2**32)")

    export = command("export", "export a checkpoint's model to ONNX or a torch.export program, checked against "
                     "PyTorch (docs/export.md)")  # fmt: skip
    export.add_argument("--checkpoint", required=True, help="a checkpoint that records its spec (trainkit train)")
    export.add_argument("--out", required=True, help="the file to write: model.onnx, or model.pt2 for "
                        "exported-program")  # fmt: skip
    export.add_argument("--format", choices=("onnx", "exported-program"), default="onnx",
                        help="onnx (for onnxruntime; the export extra) or exported-program (.pt2)")  # fmt: skip
    export.add_argument("--embed-preprocessing", action="store_true", help="the graph takes raw uint8 pixels and "
                        "applies the run's scale, mean and std")  # fmt: skip
    export.add_argument("--size", type=types.size, action="append", metavar="HxW", help="an input size N or HxW "
                        "the export is checked on, repeatable (default: the training size and one larger)")  # fmt: skip
    export.add_argument("--static", action="store_true", help="fix the height and width at the first --size")
    export.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch size too (checked on 2)")
    export.add_argument("--tolerance", type=types.positive_float, default=1e-4,
                        help="the largest max |export - PyTorch| of the logits accepted")  # fmt: skip
    export.add_argument("--opset", type=types.integer(18, 99), help="ONNX opset version, from 18 (torch's exporter "
                        "implements no older one; default: torch's)")  # fmt: skip
    model_flags.import_option(export)

    summary = command("summary", "print the layer table of a checkpoint's model")
    summary.add_argument("checkpoint", help="a checkpoint from `trainkit train` or `demo`")
    summary.add_argument("--depth", type=types.positive_int, default=3, help="module nesting depth shown")
    model_flags.import_option(summary)
    return parser


def _data_options(command: argparse.ArgumentParser, exif_note: str) -> None:
    """The folders and how they are read and batched, as ``trainkit train`` and ``lr-find`` take them."""
    command.add_argument("--images", required=True, help="folder of images")
    command.add_argument("--masks", required=True, help="folder of masks")
    command.add_argument("--mask-suffix", default="", help="mask stem = image stem + suffix, e.g. _mask")
    command.add_argument("--target", choices=("semantic", "binary"), default="semantic", help="mask meaning")
    command.add_argument("--num-classes", type=types.num_classes, help="classes incl. background (semantic), 2 to 255")
    command.add_argument("--color-map", help=COLOR_MAP_HELP)
    command.add_argument("--val-split", type=types.fraction, help="held-out fraction, in [0, 1) (default 0.2)")
    command.add_argument("--val-images", help="validate on this folder of images instead of a --val-split")
    command.add_argument("--val-masks", help="the masks of --val-images")
    command.add_argument("--size", type=types.size, default=(256, 256), help="training size N or HxW")
    command.add_argument("--batch-size", type=types.positive_int, default=8)
    command.add_argument("--no-exif-orientation", action="store_true", help=NO_EXIF_HELP + exif_note)


def _model_options(command: argparse.ArgumentParser) -> Any:
    """The model group (``--model``, ``--encoder``...), returned so ``train`` adds its fine-tuning flags."""
    model = command.add_argument_group("model (docs/models.md)")
    model.add_argument("--model", default="unet", help="unet, torchvision:<builder> (e.g. "
                       "torchvision:deeplabv3_mobilenet_v3_large), smp:<Arch> (e.g. smp:Unet)")  # fmt: skip
    model.add_argument("--encoder", help="smp encoder, e.g. resnet34, efficientnet-b0, tu-convnext_tiny (timm)")
    model.add_argument("--encoder-weights", help="pretrained encoder from the cache: smp 'imagenet', torchvision "
                       "backbone 'DEFAULT'; never downloaded")  # fmt: skip
    model.add_argument("--weights", help="torchvision whole-model weights from the cache, e.g. DEFAULT (new head)")
    model.add_argument("--model-option", action="append", default=[], type=types.model_option, metavar="KEY=VALUE",
                       help="another builder option, repeatable, e.g. encoder_depth=3 or aux_loss=True")  # fmt: skip
    model.add_argument("--base-channels", type=types.positive_int, help="UNet width (default 16)")
    model.add_argument("--depth", type=types.positive_int, help="UNet down-samplings (default 4); --size >= 2**depth")
    model_flags.import_option(model)
    return model
