"""Progress display: tqdm bars on a terminal, one plain line an epoch elsewhere.

Values shown on the bars are read from the device at most every ``refresh_s`` seconds, so the
display costs no host-device synchronisation per step.

The bars are as wide as the terminal. A pseudo-terminal that reports 0×0 (``docker exec -t``, some CI
runners and IDE consoles) would make tqdm draw nothing at all, so it gets ``COLUMNS``/``LINES`` from the
environment when set, else 80×24.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]


class Progress:
    """An epoch bar and a batch bar with running values, or nothing but one line an epoch.

    Args:
        enabled: show tqdm bars, as wide as the terminal (80 columns when it reports 0). They are off
            when the stream is not a terminal (CI logs, files), where :meth:`epoch_line` prints one
            plain line an epoch instead.
        total_epochs: length of the epoch bar.
        refresh_s: the least time between two reads of the running values.
        stream: where to print (``sys.stdout`` by default).

    Example:
        >>> p = Progress(enabled=False, total_epochs=2)
        >>> p.epoch_line({"epoch": 1, "train/loss": 0.5, "val/miou": 0.75})
        epoch 1/2  train/loss 0.5000  val/miou 0.7500
    """

    def __init__(
        self, enabled: bool = True, total_epochs: int | None = None, *, refresh_s: float = 0.1, stream: Any = None
    ):
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.bars = bool(enabled) and isatty
        self.quiet = False
        self.total_epochs = total_epochs
        self.refresh_s = refresh_s
        self._epoch_bar: Any = None
        self._batch_bar: Any = None
        self._last = 0.0

    def start_fit(self, initial_epoch: int = 0) -> None:
        """Open the epoch bar (terminal only).

        Example:
            >>> Progress(enabled=False).start_fit()
        """
        if self.bars:
            from tqdm.auto import tqdm

            self._epoch_bar = tqdm(
                total=self.total_epochs,
                initial=initial_epoch,
                desc="epochs",
                unit="epoch",
                file=self.stream,
                position=0,
                **_bar_size(self.stream),
            )

    def start_batches(self, total: int | None, desc: str, initial: int = 0) -> None:
        """Open a batch bar for one pass over a loader (terminal only).

        Example:
            >>> Progress(enabled=False).start_batches(10, "train")
        """
        if self.bars:
            from tqdm.auto import tqdm

            self._batch_bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="batch",
                leave=False,
                file=self.stream,
                position=1,
                **_bar_size(self.stream),
            )
        self._last = time.monotonic()

    def advance(self, read_values: Callable[[], dict[str, float]]) -> None:
        """Advance the batch bar by one; call ``read_values`` (which may sync) at most every ``refresh_s``.

        Example:
            >>> Progress(enabled=False).advance(lambda: {"loss": 0.1})
        """
        if self._batch_bar is None:
            return
        now = time.monotonic()
        if now - self._last >= self.refresh_s:  # set before update(1), which redraws: the bar shows current values
            self._last = now
            self._batch_bar.set_postfix({k: f"{v:.4g}" for k, v in read_values().items()}, refresh=False)
        self._batch_bar.update(1)

    def end_batches(self) -> None:
        """Close the batch bar.

        Example:
            >>> Progress(enabled=False).end_batches()
        """
        if self._batch_bar is not None:
            self._batch_bar.close()
            self._batch_bar = None

    def epoch_line(self, logs: dict[str, Any]) -> None:
        """Advance the epoch bar with the epoch's values, or print them as one line.

        Example:
            >>> Progress(enabled=False, total_epochs=3).epoch_line({"epoch": 2, "train/loss": 0.25})
            epoch 2/3  train/loss 0.2500
        """
        shown = {k: v for k, v in logs.items() if k != "epoch" and isinstance(v, (int, float))}
        if self._epoch_bar is not None:
            self._epoch_bar.update(1)
            self._epoch_bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
            return
        if self.quiet:
            return
        total = f"/{self.total_epochs}" if self.total_epochs else ""
        values = "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
        print(f"epoch {logs.get('epoch', '?')}{total}  {values}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        """Close every open bar.

        Example:
            >>> Progress(enabled=False).close()
        """
        self.end_batches()
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None


def _bar_size(stream: Any) -> dict[str, int]:
    """tqdm's ``ncols``/``nrows`` for the terminal behind ``stream``, one less than its size as tqdm takes them.

    Given explicitly because tqdm asks the terminal itself and, told 0×0, gets -1×-1: it then trims every
    line to nothing and hides the bars as rows beyond the screen.
    """
    columns, lines = _terminal_size(stream)
    return {"ncols": columns - 1, "nrows": lines - 1}


def _terminal_size(stream: Any) -> tuple[int, int]:
    """``(columns, lines)`` of the terminal behind ``stream``; ``COLUMNS``/``LINES``, else 80×24, for a 0 or none."""
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):  # no file descriptor (io.UnsupportedOperation is an OSError)
        columns = lines = 0
    return columns if columns > 0 else _from_env("COLUMNS", 80), lines if lines > 0 else _from_env("LINES", 24)


def _from_env(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
