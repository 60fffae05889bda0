"""What ``Trainer.fit`` writes into ``run_dir`` besides checkpoints: ``metrics.csv``, TensorBoard, ``curves.png``.

Only the main process writes; without ``run_dir`` nothing is written.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trainkit.utils.logging import CSVLogger, TensorBoardLogger

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = ["open_loggers", "plot_run_curves"]


def open_loggers(trainer: Trainer) -> CSVLogger | None:
    """Create ``run_dir``, set ``trainer._tb`` (when TensorBoard is installed) and return the ``metrics.csv`` logger.

    Raises ``ValueError`` when ``run_dir`` cannot be created or written to.

    Example:
        >>> import tempfile, torch
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", run_dir=tempfile.mkdtemp())
        >>> open_loggers(t).path.name
        'metrics.csv'
    """
    if trainer.run_dir is None or not trainer.dist.is_main:
        return None
    try:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"`run_dir={str(trainer.run_dir)!r}` cannot be created: {err.strerror or err}") from err
    if not os.access(trainer.run_dir, os.W_OK):
        raise ValueError(f"`run_dir={str(trainer.run_dir)!r}` is not writable; choose another folder")
    csv_log = CSVLogger(trainer.run_dir / "metrics.csv")
    tb = TensorBoardLogger(trainer.run_dir / "tensorboard")
    trainer._tb = tb if tb.available else None
    return csv_log


def plot_run_curves(trainer: Trainer) -> None:
    """Plot the history's losses and validation metrics to ``<run_dir>/curves.png`` (imports matplotlib here).

    Example:
        >>> import torch
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> plot_run_curves(Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu"))  # no run_dir
    """
    if trainer.run_dir is None or not trainer.dist.is_main or not trainer.history:
        return
    from trainkit.utils.plots import plot_curves

    metrics = tuple(k for k in trainer.history[-1] if k.startswith("val/") and k != "val/loss")
    plot_curves(trainer.history, trainer.run_dir / "curves.png", metrics=metrics)
