"""Stop training when a monitored value has stopped improving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trainkit.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = ["EarlyStopping", "is_improvement"]


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``; never when not finite.

    A NaN or infinite value (a diverged run) is never an improvement, so it is never chosen as the best.

    Example:
        >>> is_improvement(0.5, 0.6, "min"), is_improvement(0.5, 0.6, "max"), is_improvement(float("inf"), None, "max")
        (True, False, False)
    """
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def check_mode(mode: str) -> str:
    """Validate a ``mode`` argument.

    Example:
        >>> check_mode("max")
        'max'
    """
    if mode not in ("min", "max"):
        raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}")
    return mode


def monitored_value(logs: dict[str, float], monitor: str, who: str) -> float:
    """``logs[monitor]``, or a clear error listing what is logged.

    Example:
        >>> monitored_value({"val/loss": 0.25}, "val/loss", "EarlyStopping")
        0.25
    """
    if monitor not in logs:
        raise ValueError(
            f"{who} monitors {monitor!r}, which this run does not log; logged names: {', '.join(sorted(logs))}. "
            "Monitored names are 'train/loss', 'val/loss' and 'val/<metric>' (a validation loader is needed for val/*)"
        )
    return float(logs[monitor])


class EarlyStopping(Callback):
    """Stop ``fit`` after ``patience`` epochs without improvement of ``monitor``.

    The first epoch sets the best value; ``fit`` stops at the end of the ``patience``-th epoch in a row
    that does not improve on it. A value that never improves therefore runs ``patience + 1`` epochs, as
    Lightning's ``EarlyStopping`` does (``patience=0`` stops at the first epoch without improvement, like
    ``patience=1``). A NaN value never counts as an improvement.

    Args:
        monitor: a history key, e.g. ``"val/loss"`` or ``"val/miou"``.
        mode: ``"min"`` or ``"max"``.
        patience: epochs without improvement to wait.
        min_delta: the least change that counts as an improvement.

    Example:
        >>> stop = EarlyStopping("val/loss", patience=2)
        >>> trainer = type("T", (), {"should_stop": False})()
        >>> for epoch in range(1, 10):  # a constant loss: epoch 1 sets the best, epochs 2 and 3 do not improve
        ...     stop.on_epoch_end(trainer, {"epoch": epoch, "val/loss": 0.5})
        ...     if trainer.should_stop:
        ...         break
        >>> stop.stopped_epoch, stop.wait
        (3, 2)
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 5, min_delta: float = 0.0):
        if patience < 0 or int(patience) != patience:
            raise ValueError(f"`patience` must be a non-negative integer, got {patience!r}")
        self.monitor, self.mode = monitor, check_mode(mode)
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """Count epochs without improvement; stop when they reach ``patience``.

        Example:
            >>> stop = EarlyStopping("val/loss", patience=1)
            >>> trainer = type("T", (), {"should_stop": False})()
            >>> stop.on_epoch_end(trainer, {"epoch": 1, "val/loss": 0.5}); trainer.should_stop
            False
            >>> stop.on_epoch_end(trainer, {"epoch": 2, "val/loss": 0.6}); trainer.should_stop
            True
        """
        value = monitored_value(logs, self.monitor, "EarlyStopping")
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(logs["epoch"])
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """Best value and epochs waited.

        Example:
            >>> EarlyStopping().state_dict()
            {'best': None, 'wait': 0}
        """
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore best value and epochs waited.

        Example:
            >>> stop = EarlyStopping(); stop.load_state_dict({"best": 0.3, "wait": 2}); stop.wait
            2
        """
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
