"""Callbacks: the ``Callback`` base and the built-in ones."""

from trainkit.engine.callbacks.base import Callback, CallbackList
from trainkit.engine.callbacks.early_stopping import EarlyStopping
from trainkit.engine.callbacks.ema import EMA
from trainkit.engine.callbacks.freeze_encoder import FreezeEncoder
from trainkit.engine.callbacks.lr_monitor import LearningRateMonitor
from trainkit.engine.callbacks.model_checkpoint import ModelCheckpoint

__all__ = [
    "EMA",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "FreezeEncoder",
    "LearningRateMonitor",
    "ModelCheckpoint",
]
