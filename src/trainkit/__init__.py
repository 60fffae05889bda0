"""trainkit: segmentation training for PyTorch, from folders of images and masks to a checkpointed model.

The engine's names are available at the top level; the pieces load on first use, so
``import trainkit`` does not import torchvision, matplotlib, tensorboard or torchinfo.

Example:
    >>> import trainkit
    >>> trainkit.seed_everything(0)
    0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainkit import errors
from trainkit._version import __version__
from trainkit.engine import (
    MixedPrecision,
    RunDir,
    Seeding,
    Trainer,
    evaluate,
    load_checkpoint,
    predict,
    predict_iter,
    save_checkpoint,
    train_one_epoch,
)
from trainkit.utils.seed import seed_everything

_LAZY_MODULES = ("callbacks", "cli", "data", "inference", "losses", "metrics", "models", "utils")
_LAZY_FUNCTIONS = {"summary": "trainkit.utils.summary", "export": "trainkit._export"}

__all__ = [
    "MixedPrecision",
    "RunDir",
    "Seeding",
    "Trainer",
    "__version__",
    "callbacks",
    "data",
    "errors",
    "evaluate",
    "export",
    "inference",
    "load_checkpoint",
    "losses",
    "metrics",
    "models",
    "predict",
    "predict_iter",
    "save_checkpoint",
    "seed_everything",
    "summary",
    "train_one_epoch",
    "utils",
]

if TYPE_CHECKING:
    from trainkit import callbacks, data, inference, losses, metrics, models, utils
    from trainkit._export import export
    from trainkit.utils.summary import summary


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"trainkit.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
