"""What a ``Trainer`` checkpoint holds, how a trainer is put back from one, and how a run resumes.

A checkpoint is plain data (tensors and Python primitives, so ``weights_only=True`` loads it):
the model, optimizer, scheduler and scaler states, the loop counters, every RNG state, the
history, the callbacks' state and ``extra_state``. A checkpoint written mid-epoch also holds the
epoch's sampler permutation and position and the running loss and train-metric counts, so a resume
ends bitwise where an uninterrupted run would: ``start_run`` picks the checkpoint ``resume`` names
(or seeds a fresh run), and ``epoch_batches`` replays the interrupted epoch's order past the batches
already trained on; after Ctrl-C or SIGTERM, ``stop_after_signal`` writes ``last.pt`` and prints how
to resume. These are plain functions of the trainer; ``Trainer.fit``, ``Trainer.save_checkpoint``
and ``Trainer.load_checkpoint`` call them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainkit.engine import checkpoint as ckpt_io
from trainkit.engine.callbacks import ModelCheckpoint
from trainkit.engine.interrupts import resume_hint
from trainkit.engine.loop_state import LoopState
from trainkit.engine.resumable import ResumableBatchSampler
from trainkit.errors import CheckpointError
from trainkit.utils.device import move_to_device
from trainkit.utils.seed import get_rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = [
    "checkpoint_state",
    "epoch_batches",
    "epoch_state",
    "last_checkpoint_path",
    "resolve_resume",
    "restore_checkpoint",
    "start_run",
    "stop_after_signal",
]


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint dict of this process: states, counters, RNG, history, and mid-epoch the epoch's sums.

    Reads the RNG state (without drawing from it).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> state = checkpoint_state(t)
        >>> state["epoch"], state["batch_idx"], "epoch_state" in state
        (0, 0, False)
    """
    sampler = getattr(trainer._train_loader, "batch_sampler", None)
    mid_epoch = trainer.state.batch_idx > 0
    state: dict[str, Any] = {
        "model": ckpt_io.unwrap_model(trainer.module).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.precision.state_dict(),
        "epoch": trainer.state.epoch,
        "batch_idx": trainer.state.batch_idx,
        "global_step": trainer.state.global_step,
        "rng": get_rng_state(),
        "loader": sampler.epoch_state if mid_epoch and isinstance(sampler, ResumableBatchSampler) else None,
        "history": [dict(row) for row in trainer.history],
        "callbacks": trainer.callbacks.state_dict(),
        "epoch_logs": dict(trainer.epoch_logs) if mid_epoch else {},
        "extra": dict(trainer.extra_state),
        "world_size": trainer.dist.world_size,
    }
    if mid_epoch:
        state["epoch_state"] = epoch_state(trainer)
    return state


def epoch_state(trainer: Trainer) -> dict[str, Any]:
    """This process's running loss and train-metric counts of the epoch so far (CPU tensors).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> epoch_state(t)
        {'loss_sum': None, 'samples': 0, 'metrics_updated': False, 'metrics': {}}
    """
    metrics = {k: m.state_dict() for k, m in trainer.train_metrics.items() if hasattr(m, "state_dict")}
    return {
        "loss_sum": trainer.state.loss_sum.detach().cpu() if trainer.state.loss_sum is not None else None,
        "samples": trainer.state.samples,
        "metrics_updated": trainer.state.metrics_updated,
        "metrics": move_to_device(metrics, torch.device("cpu"), non_blocking=False),
    }


def restore_checkpoint(trainer: Trainer, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``path`` into ``trainer``: states, counters, history, callbacks, the epoch's sums, then the RNG.

    The RNG state is set last, so nothing restored after it draws from it. Returns the checkpoint dict.

    Example:
        >>> import tempfile
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> p = t.save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt")
        >>> restore_checkpoint(t, p)["global_step"], t.state.global_step
        (0, 0)
    """
    ckpt = ckpt_io.load_checkpoint(
        path,
        trainer.module,
        trainer.optimizer,
        trainer.scheduler if trainer.scheduler is not None else None,
        map_location="cpu",
    )
    if ckpt.get("scaler"):
        trainer.precision.load_state_dict(ckpt["scaler"])
    trainer.state = LoopState(
        epoch=int(ckpt.get("epoch", 0)),
        batch_idx=int(ckpt.get("batch_idx", 0)),
        global_step=int(ckpt.get("global_step", 0)),
    )
    trainer.history = [dict(row) for row in ckpt.get("history", [])]
    trainer.callbacks.load_state_dict(ckpt.get("callbacks", {}))
    trainer.epoch_logs = dict(ckpt.get("epoch_logs", {}))
    saved_epoch = trainer.dist.epoch_state_of(ckpt) if trainer.state.batch_idx > 0 else {}
    if saved_epoch is None:  # written by another number of processes: the epoch restarts
        trainer.state.batch_idx, saved_epoch = 0, {}
    if trainer.state.batch_idx > 0 and saved_epoch:
        trainer.state.loss_sum = (
            saved_epoch["loss_sum"].to(trainer.device) if saved_epoch.get("loss_sum") is not None else None
        )
        trainer.state.samples = int(saved_epoch.get("samples", 0))
        trainer.state.metrics_updated = bool(saved_epoch.get("metrics_updated", saved_epoch.get("metrics")))
        for name, metric in trainer.train_metrics.items():
            saved = saved_epoch.get("metrics", {}).get(name)
            if saved is not None and hasattr(metric, "load_state_dict"):
                metric.load_state_dict(saved)
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    trainer._resume_loader_state = ckpt.get("loader")
    return ckpt


def start_run(trainer: Trainer, resume: str | os.PathLike[str] | None) -> None:
    """Seed a fresh run (``trainer.seed``), or load the checkpoint ``resume`` names and say so on the main process.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", seed=0)
        >>> start_run(t, None)
        >>> t.history, t.state.epoch
        ([], 0)
    """
    trainer._resume_loader_state = None
    path = resolve_resume(trainer, resume) if resume is not None else None
    if path is None:
        if trainer.seed is not None:
            seed_everything(trainer.seed)
        trainer.history, trainer.state = [], LoopState()
        return
    trainer.load_checkpoint(path)
    if trainer.dist.is_main:
        print(f"resumed from {path} at epoch {trainer.state.epoch + 1}, batch {trainer.state.batch_idx}", flush=True)


def resolve_resume(trainer: Trainer, resume: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``fit(resume=...)`` loads: a path, or ``last.pt`` for ``"last"``/``"auto"``; ``None``: afresh.

    Example:
        >>> import tempfile
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", run_dir=tempfile.mkdtemp())
        >>> resolve_resume(t, "auto") is None  # no last.pt yet
        True
    """
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(
            f"`resume` must be a checkpoint path, 'last', 'auto' or None, got {type(resume).__name__} {resume!r}"
        )
    if str(resume) not in ("last", "auto"):
        return Path(resume)
    if trainer.run_dir is None:
        raise ValueError(f"`resume={str(resume)!r}` needs `run_dir` (it loads <run_dir>/checkpoints/last.pt)")
    path = last_checkpoint_path(trainer, trainer.run_dir)
    if trainer.dist.file_on_main(path, trainer.device):  # one answer on every rank: all resume or none does
        return path
    if str(resume) == "auto":
        return None  # the first start of a run: train from scratch
    raise CheckpointError(f"`resume='last'`: {path} does not exist yet; start without `resume`")


def last_checkpoint_path(trainer: Trainer, run_dir: Path) -> Path:
    """``last.pt`` in the ``ModelCheckpoint`` folder (``<run_dir>/checkpoints`` by default).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> last_checkpoint_path(t, Path("runs/a")).as_posix()
        'runs/a/checkpoints/last.pt'
    """
    folder = next((cb.folder(trainer) for cb in trainer.callbacks.callbacks if isinstance(cb, ModelCheckpoint)), None)
    return (folder or run_dir / "checkpoints") / "last.pt"


def epoch_batches(trainer: Trainer, epoch: int) -> tuple[Iterable[Any], int | None]:
    """The iterable for this epoch: a fresh pass, or the rest of an interrupted one; and its length if known.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> t._train_loader = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
        >>> epoch_batches(t, 0)[1]
        1
    """
    from trainkit.data import set_epoch

    loader = trainer._train_loader
    set_epoch(loader, epoch)
    total = len(loader) if hasattr(loader, "__len__") else None
    sampler = getattr(loader, "batch_sampler", None)
    if trainer.state.batch_idx == 0 or not isinstance(sampler, ResumableBatchSampler):
        if trainer.state.batch_idx > 0:
            warnings.warn(
                "resuming mid-epoch with a loader trainkit cannot rebuild (not a map-style DataLoader): the epoch "
                "restarts from its first batch",
                stacklevel=3,
            )
            trainer.state.batch_idx = 0
        return loader, total
    # Mid-epoch resume: replay the epoch's permutation, skip consumed batches, then put back the RNG
    # state of the moment the checkpoint was written.
    rng = get_rng_state()
    sampler.replay(getattr(trainer, "_resume_loader_state", None), skip=trainer.state.batch_idx)
    iterator = iter(loader)
    set_rng_state(rng)
    return iterator, total


def stop_after_signal(trainer: Trainer) -> BaseException:
    """After SIGINT/SIGTERM: write ``last.pt`` (with ``run_dir``), say how to resume, return the exit error.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> type(stop_after_signal(t)).__name__  # no run_dir: nothing written; the hint goes to stderr
        'KeyboardInterrupt'
    """
    path = (
        trainer.save_checkpoint(last_checkpoint_path(trainer, trainer.run_dir)) if trainer.run_dir is not None else None
    )
    where = f"epoch {trainer.state.epoch + 1}, batch {trainer.state.batch_idx} (step {trainer.state.global_step})"
    saved = f"saved {path}; " if path is not None else ""
    print(f"trainkit: stopped at {where}; {saved}{resume_hint(path)}", file=sys.stderr, flush=True)
    return trainer._interrupt.exit_error()
