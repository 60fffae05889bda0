"""Callbacks for :class:`trainkit.Trainer` (``trainkit.callbacks.EarlyStopping`` and friends).

Example:
    >>> import trainkit
    >>> stop = trainkit.callbacks.EarlyStopping("val/miou", mode="max", patience=5)
"""

from trainkit.engine.callbacks import (
    EMA,
    Callback,
    EarlyStopping,
    FreezeEncoder,
    LearningRateMonitor,
    ModelCheckpoint,
)

__all__ = ["EMA", "Callback", "EarlyStopping", "FreezeEncoder", "LearningRateMonitor", "ModelCheckpoint"]
