"""Save ``last.pt`` (every epoch, optionally every N steps) and ``best.pt`` by a monitored value."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainkit.engine.callbacks.base import Callback
from trainkit.engine.callbacks.early_stopping import check_mode, is_improvement, monitored_value

if TYPE_CHECKING:
    from trainkit.engine.loops import LoopState
    from trainkit.engine.step import StepOutput
    from trainkit.engine.trainer import Trainer

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Write resumable checkpoints into ``<run_dir>/checkpoints`` (or ``dirpath``).

    * ``last.pt`` after every epoch (``save_last``), and every ``every_n_steps`` optimizer steps
      mid-epoch when set: ``trainer.fit(..., resume="last")`` continues from it at the next batch.
    * ``best.pt`` whenever ``monitor`` improves (``save_best``).
    * ``keep_last=k`` also keeps the ``k - 1`` previous ``last`` checkpoints as ``last-step<N>.pt``.

    Files are written atomically (temporary file, fsync, rename): a crash or a full disk during a
    save leaves the previous file intact. Only the main process writes under DDP.

    Args:
        dirpath: folder for the files (default ``<run_dir>/checkpoints``); relative paths are taken
            inside ``run_dir``, so nothing is written outside the run directory.
        monitor: history key for ``best.pt`` (``"val/loss"`` by default; ``"train/loss"`` is used when
            the default is kept and the run logs no ``val/loss``: no validation loader, or a validation
            step that returns no loss).
        mode: ``"min"`` or ``"max"``.
        save_last: write ``last.pt``.
        save_best: write ``best.pt``.
        every_n_steps: also write ``last.pt`` every N optimizer steps.
        keep_last: how many ``last`` checkpoints to keep.

    Example:
        >>> ckpt = ModelCheckpoint(monitor="val/miou", mode="max", every_n_steps=500)
    """

    order = 100  # after the other callbacks: last.pt holds the state they updated for the epoch

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        *,
        monitor: str = "val/loss",
        mode: str = "min",
        save_last: bool = True,
        save_best: bool = True,
        every_n_steps: int | None = None,
        keep_last: int = 1,
    ):
        if every_n_steps is not None and (int(every_n_steps) != every_n_steps or every_n_steps < 1):
            raise ValueError(f"`every_n_steps` must be a positive integer or None, got {every_n_steps!r}")
        if int(keep_last) != keep_last or keep_last < 1:
            raise ValueError(f"`keep_last` must be a positive integer, got {keep_last!r}")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.monitor, self.mode = monitor, check_mode(mode)
        self._monitor_given = monitor != "val/loss"
        self.save_last, self.save_best = save_last, save_best
        self.every_n_steps, self.keep_last = every_n_steps, int(keep_last)
        self.best: float | None = None
        self.best_path: Path | None = None
        self.last_path: Path | None = None

    def folder(self, trainer: Trainer) -> Path:
        """Where this callback writes, always inside ``trainer.run_dir``.

        Example:
            >>> ModelCheckpoint().dirpath is None
            True
        """
        if trainer.run_dir is None:
            raise ValueError("`ModelCheckpoint` needs `Trainer(run_dir=...)` to know where to write")
        folder = Path(trainer.run_dir) / (self.dirpath if self.dirpath is not None else "checkpoints")
        run = Path(trainer.run_dir).resolve()
        if run not in (folder.resolve(), *folder.resolve().parents):
            raise ValueError(
                f"`ModelCheckpoint(dirpath={str(self.dirpath)!r})` is outside run_dir {run}; use a "
                "relative folder inside the run directory"
            )
        return folder

    def on_fit_start(self, trainer: Trainer) -> None:
        """Fall back to ``train/loss`` when the default ``val/loss`` cannot exist.

        Example:
            >>> ModelCheckpoint().on_fit_start(trainer)  # doctest: +SKIP
        """
        self.folder(trainer)
        if not self._monitor_given and not trainer.has_validation:
            self.monitor = "train/loss"

    def on_train_batch_end(self, trainer: Trainer, state: LoopState, output: StepOutput) -> None:
        """Mid-epoch ``last.pt`` every ``every_n_steps`` optimizer steps, at an accumulation boundary.

        Example:
            >>> ModelCheckpoint(every_n_steps=100).on_train_batch_end(trainer, trainer.state, output)  # doctest: +SKIP
        """
        if not self.every_n_steps or not self.save_last:
            return
        boundary = trainer.at_step_boundary(state)
        if boundary and state.global_step > 0 and state.global_step % self.every_n_steps == 0:
            self._save_last(trainer, state.global_step)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """``last.pt`` every epoch; ``best.pt`` when the monitored value improves.

        Example:
            >>> ModelCheckpoint(monitor="val/miou", mode="max").on_epoch_end(trainer, logs)  # doctest: +SKIP
        """
        if self.save_best:
            if not self._monitor_given and self.monitor not in logs:
                self.monitor = "train/loss"  # the default val/loss needs a validation step that returns a loss
            value = monitored_value(logs, self.monitor, "ModelCheckpoint")
            if is_improvement(value, self.best, self.mode):
                self.best = value
                self.best_path = trainer.save_checkpoint(self.folder(trainer) / "best.pt")
        if self.save_last:
            self._save_last(trainer, trainer.state.global_step)

    def _save_last(self, trainer: Trainer, step: int) -> None:
        folder = self.folder(trainer)
        path = trainer.save_checkpoint(folder / "last.pt")
        if path is None:  # not the main process
            return
        self.last_path = path
        if self.keep_last > 1:
            _copy_atomic(path, folder / f"last-step{step}.pt")
            history = sorted(folder.glob("last-step*.pt"), key=_step_of)
            for old in history[: max(0, len(history) - (self.keep_last - 1))]:
                old.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        """The best monitored value so far.

        Example:
            >>> ModelCheckpoint().state_dict()
            {'best': None, 'monitor': 'val/loss'}
        """
        return {"best": self.best, "monitor": self.monitor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best monitored value (ignored when it was saved for another monitor).

        Example:
            >>> ckpt = ModelCheckpoint(); ckpt.load_state_dict({"best": 0.1, "monitor": "val/loss"}); ckpt.best
            0.1
        """
        if state.get("monitor", self.monitor) == self.monitor:
            self.best = state.get("best")


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _step_of(path: Path) -> int:
    digits = path.stem.removeprefix("last-step")
    return int(digits) if digits.isdigit() else -1
