"""Logging sinks: ``metrics.csv`` (one row an epoch) and TensorBoard events when installed."""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["CSVLogger", "TensorBoardLogger"]


class CSVLogger:
    """Append one row an epoch to a CSV file, keeping rows written before.

    The header is the union of the keys seen so far, in first-seen order; when a new key appears
    (e.g. validation starts later), the file is rewritten atomically with the wider header.

    Example:
        >>> import tempfile
        >>> log = CSVLogger(tempfile.mkdtemp() + "/metrics.csv")
        >>> log.log_epoch({"epoch": 1, "train/loss": 0.5})
        >>> log.log_epoch({"epoch": 2, "train/loss": 0.25, "val/loss": 0.3})
        >>> print(log.path.read_text().strip())
        epoch,train/loss,val/loss
        1,0.5,
        2,0.25,0.3
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._rows: list[dict[str, Any]] = []
        self._fields: list[str] = []

    def start(self, history: Iterable[Mapping[str, Any]] = ()) -> None:
        """Begin (or, on resume, continue) the file with the rows of ``history``.

        Rows already in the file for later epochs than ``history`` holds (written after the
        checkpoint that is resumed) are replaced by what the resumed run logs.

        Example:
            >>> import tempfile
            >>> CSVLogger(tempfile.mkdtemp() + "/m.csv").start([{"epoch": 1, "train/loss": 1.0}])
        """
        self._rows, self._fields = [], []
        for row in history:
            self._add(row)
        self._rewrite()

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (rewrite the file when it brings a new column).

        Example:
            >>> import tempfile
            >>> CSVLogger(tempfile.mkdtemp() + "/m.csv").log_epoch({"epoch": 1})
        """
        widened = self._add(row)
        if widened or not self.path.exists():
            self._rewrite()
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self._fields).writerow(dict(row))
            handle.flush()

    def _add(self, row: Mapping[str, Any]) -> bool:
        self._rows.append(dict(row))
        new = [k for k in row if k not in self._fields]
        self._fields.extend(new)
        return bool(new)

    def _rewrite(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self._fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, self.path)


class TensorBoardLogger:
    """Scalars to TensorBoard event files, when the ``tensorboard`` package is installed.

    Without it, :attr:`available` is ``False`` and every call is a no-op (install with
    ``pip install trainkit[tensorboard]``).

    Example:
        >>> import tempfile
        >>> tb = TensorBoardLogger(tempfile.mkdtemp())
        >>> tb.log_scalars({"train/loss": 0.5}, step=1)
        >>> tb.close()
    """

    def __init__(self, log_dir: str | os.PathLike[str]):
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            self.available = False
            return
        self.available = True

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write each value under its name at ``step``.

        Example:
            >>> import tempfile
            >>> TensorBoardLogger(tempfile.mkdtemp()).log_scalars({"lr": 0.1}, step=0)
        """
        if not self.available:
            return
        writer = self._get_writer()
        for name, value in values.items():
            if isinstance(value, (int, float)) and name != "epoch":
                writer.add_scalar(name, value, step)

    def close(self) -> None:
        """Flush and close the event file.

        Example:
            >>> import tempfile
            >>> TensorBoardLogger(tempfile.mkdtemp()).close()
        """
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _get_writer(self) -> Any:
        if self._writer is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer
