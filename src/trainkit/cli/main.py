"""The ``trainkit`` command: ``demo``, ``train``, ``lr-find``, ``predict``, ``evaluate``, ``export``, ``check``,
``synth``, ``summary``.

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
from typing import Any

from trainkit.cli import _model_flags as model_flags
from trainkit.cli._parser import build_parser

__all__ = ["build_parser", "main"]


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
        seed=args.seed,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(
        f"demo: val mIoU {result['miou']:.3f} after {result['epochs']} epochs (best {result['best_miou']:.3f}), "
        f"{result['train_seconds']:.0f} s of training, {result['seconds']:.0f} s in all; outputs in "
        f"{result['run_dir']}: checkpoints/best.pt, checkpoints/last.pt, metrics.csv, curves.png, predictions.png"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from trainkit.cli._recipe_args import recipe_from_args
    from trainkit.cli.recipe import train_recipe

    recipe = recipe_from_args(args)
    if isinstance(recipe, str):
        return _usage_error("train", recipe)
    history = train_recipe(recipe).history
    last = history[-1] if history else {}
    shown = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith(("train/loss", "val/")))
    print(f"train: {len(history)} epochs; {shown}; checkpoints in {args.run_dir}/checkpoints")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from trainkit.cli._recipe_args import recipe_from_args
    from trainkit.cli.recipe import build_recipe

    if not args.max_lr > args.min_lr:
        return _usage_error("lr-find", f"--max-lr {args.max_lr:g} must be larger than --min-lr {args.min_lr:g}")
    if os.path.isdir(args.out):
        return _usage_error("lr-find", f"--out {args.out} is a folder: give the PNG file to write, e.g. "
                            f"{os.path.join(args.out, 'lr_find.png')}")  # fmt: skip
    recipe = recipe_from_args(args)
    if isinstance(recipe, str):
        return _usage_error("lr-find", recipe)
    parts = build_recipe(recipe)
    result = parts.trainer.lr_find(
        parts.train_loader,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        num_steps=args.num_steps,
        smooth=args.smooth,
        diverge=args.diverge,
    )
    plot = result.plot(args.out)
    print(result)
    if result.suggestion is None:
        print(f"lr-find: plot in {plot}; no suggestion: lower --min-lr or raise --num-steps, or read the plot")
    else:
        print(f"lr-find: plot in {plot}; train with `trainkit train ... --lr {result.suggestion:.2g}`")
    return 0


def _export(args: argparse.Namespace) -> int:
    import trainkit

    if args.static and args.size and len(args.size) > 1:
        return _usage_error("export", "--static fixes the height and width, so the export runs at one size: give one "
                            "--size (or none: the training size)")  # fmt: skip
    if args.opset is not None:
        if args.format != "onnx":
            return _usage_error("export", f"--opset applies to --format onnx, not {args.format}")
        newest = _newest_onnx_opset()
        if newest is not None and args.opset > newest:
            return _usage_error("export", f"--opset {args.opset} is newer than the installed onnx knows (up to "
                                f"{newest}): choose 18 to {newest}, or upgrade onnx")  # fmt: skip
    trainkit.export(
        args.checkpoint,
        args.out,
        format=args.format,
        preprocessing=args.embed_preprocessing,
        sizes=args.size,
        dynamic=not args.static,
        dynamic_batch=args.dynamic_batch,
        tolerance=args.tolerance,
        opset=args.opset,
    )  # prints the file written and its differences from PyTorch
    return 0


def _newest_onnx_opset() -> int | None:
    """The newest ONNX opset the installed onnx implements; ``None`` without onnx (the export says how to get it)."""
    try:
        import onnx
    except ImportError:
        return None
    return int(onnx.defs.onnx_opset_version())


def _predict(args: argparse.Namespace) -> int:
    from trainkit.cli.predict import predict_folder

    if args.tile is None:
        given = [flag for flag, value in (("--overlap", args.overlap), ("--blend", args.blend)) if value is not None]
        if given:
            return _usage_error("predict", f"{' and '.join(given)} weigh the sliding windows of --tile: give --tile "
                                "SIZE too")  # fmt: skip

    def report(path: object, reason: str) -> None:
        print(f"trainkit predict: skipped {reason}", file=sys.stderr)

    result = predict_folder(
        args.checkpoint,
        args.images,
        args.out,
        device=args.device,
        overlays=args.overlays,
        batch_size=args.batch_size,
        exif_orientation=False if args.no_exif_orientation else None,  # None: as the checkpoint's training
        tile=args.tile,
        overlap=0.25 if args.overlap is None else args.overlap,
        blend=args.blend or "gaussian",
        tta=args.tta,
        encoding=args.encoding,
        probabilities=args.probabilities,
        skip_existing=args.skip_existing,
        progress=not args.no_progress,
        on_failure=report,
    )
    also = [f"{len(files)} {what} to {os.path.join(args.out, folder)}" for files, what, folder in (
        (result.overlays, "overlays", "overlays"), (result.probabilities, "probability maps", "probabilities"))
        if files]  # fmt: skip
    skipped = f"; {len(result.skipped)} skipped, their outputs already there" if result.skipped else ""
    print(f"predict: wrote {len(result.masks)} masks to {args.out}{''.join(' and ' + a for a in also)} "
          f"(classes in {os.path.join(args.out, 'labels.txt')}){skipped}")  # fmt: skip
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
    from trainkit.data import check, check_coco

    if args.threshold is not None and args.target != "binary":
        return _usage_error("check", f"--threshold applies to --target binary, not --target {args.target}")
    if args.annotations is not None:
        given = [flag for flag, value in (("--mask-suffix", args.mask_suffix), ("--num-classes", args.num_classes),
                 ("--color-map", args.color_map), ("--threshold", args.threshold), ("--recursive", args.recursive))
                 if value not in (None, False)]  # fmt: skip
        if given:
            return _usage_error(
                "check", f"{', '.join(given)} read a folder of masks, not --annotations: the COCO file names the "
                "classes and the image of each annotation; drop them"
            )  # fmt: skip
        report = check_coco(
            args.annotations,
            args.images,
            target=args.target,
            channels=args.channels,
            exif_orientation=not args.no_exif_orientation,
        )
    else:
        color_map = read_color_map(args.color_map)[0] if args.color_map else None
        report = check(
            images=args.images,
            masks=args.masks,
            mask_suffix=args.mask_suffix or "",
            target=args.target,
            num_classes=args.num_classes,
            color_map=color_map,
            threshold=args.threshold,
            channels=args.channels,
            exif_orientation=not args.no_exif_orientation,
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
        exif_orientation=False if args.no_exif_orientation else None,  # None: as the checkpoint's training
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
    "lr-find": _lr_find,
    "export": _export,
    "synth": _synth,
    "summary": _summary,
}
