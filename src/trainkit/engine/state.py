"""``RunState``: where a ``Trainer`` run stands, owned by the Trainer and passed to the loops and callbacks.

It extends the epoch's :class:`~trainkit.engine.loop_state.LoopState` (epoch, batch, optimizer step,
running loss) with what the whole run needs: the history, the current epoch's extra logs, the seed, the
stop flag, and the sampler state of an interrupted epoch read from a checkpoint. ``state_dict`` /
``load_state_dict`` give what a checkpoint saves of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainkit.engine.loop_state import LoopState

__all__ = ["RunState"]


@dataclass
class RunState(LoopState):
    """A run's counters (see :class:`LoopState`), history and seed.

    Attributes:
        history: one dict of floats a finished epoch.
        epoch_logs: values a callback or the loop adds to the current epoch's history row (e.g. ``"lr"``).
        seed: the run's seed (drawn when ``Trainer(seed=None)``), saved so a resume continues with it.
        should_stop: set (e.g. by ``EarlyStopping``) to end ``fit`` after the current epoch.
        loader_state: the RNG states of the interrupted epoch's order, from a mid-epoch checkpoint.

    Example:
        >>> state = RunState(epoch=2, global_step=40, seed=7, history=[{"epoch": 1}, {"epoch": 2}])
        >>> restored = RunState(); restored.load_state_dict(state.state_dict())
        >>> restored.epoch, restored.global_step, restored.seed, len(restored.history)
        (2, 40, 7, 2)
    """

    history: list[dict[str, float]] = field(default_factory=list)
    epoch_logs: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    should_stop: bool = False
    loader_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def mid_epoch(self) -> bool:
        """Whether some batches of ``epoch`` have been trained on (a checkpoint now is a mid-epoch one).

        Example:
            >>> RunState(batch_idx=3).mid_epoch
            True
        """
        return self.batch_idx > 0

    def end_epoch(self, logs: dict[str, float]) -> None:
        """Record the finished epoch's history row and move on to the next epoch.

        Example:
            >>> state = RunState(batch_idx=5)
            >>> state.end_epoch({"epoch": 1, "train/loss": 0.5})
            >>> state.epoch, state.batch_idx, state.history
            (1, 0, [{'epoch': 1, 'train/loss': 0.5}])
        """
        self.history.append(logs)
        self.epoch, self.batch_idx = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """The counters, history, seed and (mid-epoch) the epoch's extra logs, as plain data.

        The running loss and metric counts are the loop's and are saved by the caller (see
        ``trainkit.engine.resume``), as is the loader state, which lives in the loader.

        Example:
            >>> sorted(RunState().state_dict())
            ['batch_idx', 'epoch', 'epoch_logs', 'global_step', 'history', 'seed']
        """
        return {
            "epoch": self.epoch,
            "batch_idx": self.batch_idx,
            "global_step": self.global_step,
            "history": [dict(row) for row in self.history],
            "epoch_logs": dict(self.epoch_logs) if self.mid_epoch else {},
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned (missing keys, from older checkpoints, get defaults).

        Example:
            >>> state = RunState(); state.load_state_dict({"epoch": 3})
            >>> state.epoch, state.batch_idx, state.seed
            (3, 0, None)
        """
        self.begin_epoch(int(state.get("epoch", 0)))
        self.batch_idx = int(state.get("batch_idx", 0))
        self.global_step = int(state.get("global_step", 0))
        self.history = [dict(row) for row in state.get("history", [])]
        self.epoch_logs = dict(state.get("epoch_logs", {}))
        seed = state.get("seed")
        self.seed = int(seed) if seed is not None else None
        self.should_stop = False
