"""Streaming metrics with exact epoch values: ``update(preds_or_logits, target)`` / ``compute()`` / ``reset()``."""

from trainkit.metrics._base import Metric
from trainkit.metrics.accuracy import Accuracy
from trainkit.metrics.confusion import ConfusionMatrix, Dice, MeanIoU, PixelAccuracy

__all__ = ["Accuracy", "ConfusionMatrix", "Dice", "MeanIoU", "Metric", "PixelAccuracy"]
