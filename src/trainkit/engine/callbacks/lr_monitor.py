"""Log every parameter group's learning rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainkit.engine.callbacks.base import Callback

if TYPE_CHECKING:
    from trainkit.engine.loops import LoopState
    from trainkit.engine.step import StepOutput
    from trainkit.engine.trainer import Trainer

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Record the learning rate of each parameter group.

    Every epoch's history row (and ``metrics.csv``) gets ``lr-group<i>`` for each group (the
    Trainer logs the first group as ``lr`` anyway). With ``logging_interval="step"`` the rates are
    also sent to TensorBoard after every optimizer step, as ``lr-group<i>``.

    Example:
        >>> trainer_callbacks = [LearningRateMonitor(logging_interval="step")]
    """

    def __init__(self, logging_interval: str = "epoch"):
        if logging_interval not in ("epoch", "step"):
            raise ValueError(f"`logging_interval` must be 'epoch' or 'step', got {logging_interval!r}")
        self.logging_interval = logging_interval
        self._last_step = -1

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Put the rates the epoch starts with into its history row.

        Example:
            >>> LearningRateMonitor().on_epoch_start(trainer, 1); trainer.epoch_logs["lr-group0"]  # doctest: +SKIP
            0.001
        """
        trainer.epoch_logs.update(_rates(trainer))

    def on_train_batch_end(self, trainer: Trainer, state: LoopState, output: StepOutput) -> None:
        """Send the rates to the step loggers after each optimizer step.

        Example:
            >>> LearningRateMonitor("step").on_train_batch_end(trainer, trainer.state, output)  # doctest: +SKIP
        """
        if self.logging_interval == "step" and state.global_step != self._last_step:
            self._last_step = state.global_step
            trainer.log_scalars(_rates(trainer), state.global_step)


def _rates(trainer: Trainer) -> dict[str, float]:
    return {f"lr-group{i}": float(g["lr"]) for i, g in enumerate(trainer.optimizer.param_groups)}
