"""The command's model flags: ``--model``/``--encoder``/``--weights``... as factory options, and ``--import``.

``trainkit train --model smp:Unet --encoder resnet34 --encoder-weights imagenet`` becomes
``ModelSpec("smp:Unet", options={"encoder_name": "resnet34", "encoder_weights": "imagenet"})``; a flag that
the model's family does not take is refused in one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["import_modules", "import_option", "model_options"]


def import_option(command: Any) -> None:
    """``--import MODULE``, repeatable: a module or ``.py`` file imported first (one that registers a model)."""
    command.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                         help="import a module or .py file first (one that registers a model)")  # fmt: skip


def model_options(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The factory options that ``--model``'s flags make, or the line refusing a flag this model does not take."""
    family = args.model.split(":", 1)[0].lower() if ":" in args.model else args.model.lower()
    options: dict[str, Any] = dict(args.model_option)
    flags = {"--encoder": args.encoder, "--encoder-weights": args.encoder_weights, "--weights": args.weights,
             "--base-channels": args.base_channels, "--depth": args.depth}  # fmt: skip
    takes = {
        "unet": {"--base-channels", "--depth"},
        "torchvision": {"--encoder-weights", "--weights"},
        "smp": {"--encoder", "--encoder-weights"},
    }.get(family, set())
    given = [flag for flag, value in flags.items() if value is not None and flag not in takes]
    if given:
        return {}, (
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --model {args.model}"
            f"{' (it takes ' + ', '.join(sorted(takes)) + ')' if takes else ''}; pass other builder options "
            "with --model-option KEY=VALUE"
        )
    if family == "unet":
        options = {"base_channels": args.base_channels or 16, "depth": args.depth or 4, **options}
    elif family == "smp":
        options.update({k: v for k, v in (("encoder_name", args.encoder), ("encoder_weights", args.encoder_weights))
                        if v is not None})  # fmt: skip
    elif family == "torchvision":
        options.update({k: v for k, v in (("weights", args.weights), ("weights_backbone", args.encoder_weights))
                        if v is not None})  # fmt: skip
    return options, None


def import_modules(names: list[str]) -> None:
    """``--import``: import each module by name, or each ``.py`` file by path (e.g. one that registers a model)."""
    import importlib
    import importlib.util

    for name in names:
        try:
            if name.endswith(".py") or os.sep in name:
                spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(name))[0], name)
                if spec is None or spec.loader is None or not os.path.isfile(name):
                    raise ImportError(f"{name} is not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except ImportError as err:
            raise ValueError(
                f"--import {name}: cannot import it ({err}); give a module on PYTHONPATH or the path of a .py file"
            ) from err
