"""``RunDir``: the files a run writes besides checkpoints: ``metrics.csv``, TensorBoard events, ``curves.png``.

Only the main process writes; without a folder nothing is written. ``metrics.csv`` is rewritten whole
and atomically after every epoch from the history, so a failed run never truncates an older file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from trainkit.utils.logging import CSVLogger, TensorBoardLogger

__all__ = ["RunDir"]


class RunDir:
    """The run directory of a ``Trainer`` and the loggers writing into it.

    Args:
        path: the folder (``None``: write nothing).
        is_main: whether this process writes (rank 0 under DDP).

    Example:
        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp(), is_main=True)
        >>> run.open(); run.log_epoch([{"epoch": 1, "train/loss": 0.5}]); run.close()
        >>> (run.path / "metrics.csv").read_text().splitlines()[0]
        'epoch,train/loss'
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, is_main: bool = True):
        self.path = Path(path) if path is not None else None
        self.writes = self.path is not None and is_main
        self._csv: CSVLogger | None = None
        self._tb: TensorBoardLogger | None = None

    @property
    def checkpoints(self) -> Path | None:
        """``<path>/checkpoints``, where ``ModelCheckpoint`` writes by default.

        Example:
            >>> RunDir("runs/a").checkpoints.as_posix()
            'runs/a/checkpoints'
        """
        return self.path / "checkpoints" if self.path is not None else None

    def open(self) -> None:
        """Create the folder and the loggers (TensorBoard when installed).

        Raises:
            ValueError: the folder cannot be created or is not writable.

        Example:
            >>> RunDir(None).open()  # no folder: nothing happens
        """
        if not self.writes or self.path is None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"`run_dir={str(self.path)!r}` cannot be created: {err.strerror or err}") from err
        if not os.access(self.path, os.W_OK):
            raise ValueError(f"`run_dir={str(self.path)!r}` is not writable; choose another folder")
        self._csv = CSVLogger(self.path / "metrics.csv")
        tb = TensorBoardLogger(self.path / "tensorboard")
        self._tb = tb if tb.available else None

    def log_epoch(self, history: list[dict[str, float]]) -> None:
        """Rewrite ``metrics.csv`` from ``history`` and send its last row to TensorBoard.

        Example:
            >>> RunDir(None).log_epoch([{"epoch": 1}])
        """
        if self._csv is not None:
            self._csv.start(history)
        if self._tb is not None and history:
            self._tb.log_scalars(history[-1], int(history[-1]["epoch"]))

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Send step-level scalars to TensorBoard (when it is installed and the folder is open).

        Example:
            >>> RunDir(None).log_scalars({"lr": 0.1}, step=3)
        """
        if self._tb is not None:
            self._tb.log_scalars(values, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer.

        Example:
            >>> RunDir(None).close()
        """
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def plot(self, history: list[dict[str, float]]) -> None:
        """Plot the losses and validation metrics of ``history`` to ``curves.png`` (imports matplotlib here).

        Example:
            >>> RunDir(None).plot([{"epoch": 1, "train/loss": 0.5}])  # no folder: nothing written
        """
        if not self.writes or self.path is None or not history:
            return
        from trainkit.utils.plots import plot_curves

        metrics = tuple(k for k in history[-1] if k.startswith("val/") and k != "val/loss")
        plot_curves(history, self.path / "curves.png", metrics=metrics)
