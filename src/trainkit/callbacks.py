"""Callbacks for :class:`trainkit.Trainer` (``trainkit.callbacks.EarlyStopping`` and friends).

Example:
    >>> import trainkit
    >>> stop = trainkit.callbacks.EarlyStopping("val/miou", mode="max", patience=5)
"""

from trainkit.engine.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

__all__ = ["Callback", "EarlyStopping", "LearningRateMonitor", "ModelCheckpoint"]
