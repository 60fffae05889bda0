"""One epoch of ``Trainer.fit``: the training pass, validation, the per-epoch scheduler step, the history row.

``run_epoch`` is the body of ``fit``'s loop (see the pseudocode in ``trainer.py``); the trainer's
``state`` (a :class:`~trainkit.engine.state.RunState`) says which epoch, and how many of its batches a
resumed run has already trained on; ``trainer.train_loader`` gives the epoch's batches. The only state
written here is ``trainer.state``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from trainkit.engine.interrupts import StopRequested, resume_hint
from trainkit.engine.loop_state import LoopState, check_learning_rates, loss_totals, mean_of
from trainkit.engine.loops import train_one_epoch
from trainkit.engine.progress import Progress
from trainkit.engine.step import StepOutput
from trainkit.errors import NonFiniteLossError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = ["last_good", "reduce_train_loss", "run_epoch", "step_epoch_scheduler", "train_epochs"]


def run_epoch(trainer: Trainer, val_loader: Iterable[Any] | None, bar: Progress) -> dict[str, float]:
    """Train (the rest of) ``trainer.state.epoch``, validate, step the per-epoch scheduler; return the history row.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu")
        >>> from trainkit.engine.loaders import TrainLoader
        >>> t.train_loader = TrainLoader([(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))], t.dist, seed=0)
        >>> sorted(run_epoch(t, None, Progress(enabled=False)))
        ['epoch', 'lr', 'train/loss']
    """
    state, loader = trainer.state, trainer.train_loader
    if loader is None:
        raise RuntimeError("`run_epoch` needs `trainer.train_loader` (set by `Trainer.fit`)")
    epoch = state.epoch
    total = loader.num_batches
    batches = loader.batches(epoch, skip=state.batch_idx, epoch_state=state.loader_state)
    state.loader_state = None
    if loader.restarted:
        state.batch_idx = 0
    if state.batch_idx == 0:
        state.epoch_logs = {"lr": float(trainer.optimizer.param_groups[0]["lr"])}
        trainer.callbacks.dispatch("on_epoch_start", trainer, epoch + 1)
    hooked = trainer.callbacks.has("on_train_batch_end")
    watch = hooked or trainer.interrupt.installed
    on_batch_end = functools.partial(_on_batch_end, trainer, hooked) if watch else None
    train = train_one_epoch(
        trainer.model, batches, trainer.optimizer, trainer.loss_fn,
        device=trainer.device, precision=trainer.precision,
        scheduler=trainer.scheduler if trainer.scheduler_interval == "step" else None,
        grad_accum=trainer.grad_accum, clip_grad_norm=trainer.clip_grad_norm, metrics=trainer.train_metrics,
        step_fn=trainer._custom_step("training_step"), batch_transform=trainer.batch_transform,
        on_nan=trainer.on_nan, state=trainer.state, progress=bar, on_batch_end=on_batch_end, num_batches=total,
    )  # fmt: skip
    logs: dict[str, float] = {"epoch": epoch + 1}
    logs.update({f"train/{k}": v for k, v in reduce_train_loss(trainer, train).items()})
    if val_loader is not None:
        trainer.callbacks.dispatch("on_validation_start", trainer)
        val = {f"val/{k}": v for k, v in trainer.evaluate(val_loader).items()}
        trainer.callbacks.dispatch("on_validation_end", trainer, val)
        logs.update(val)
    logs.update(state.epoch_logs)
    step_epoch_scheduler(trainer, logs)
    state.end_epoch(logs)
    return logs


def reduce_train_loss(trainer: Trainer, train: dict[str, float]) -> dict[str, float]:
    """Under DDP: the loss summed over every rank's samples (metrics reduce their own counts in ``compute``).

    ``DistributedSampler`` pads the epoch with repeated samples (at most ``world_size - 1``), which
    are trained on and therefore counted here too.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> reduce_train_loss(t, {"loss": 0.5})  # one process: unchanged
        {'loss': 0.5}
    """
    if not trainer.dist.enabled or "loss" not in train:
        return train
    return {**train, "loss": mean_of(loss_totals(trainer.state, trainer.device, trainer.dist.all_reduce_sum))}


def step_epoch_scheduler(trainer: Trainer, logs: dict[str, float]) -> None:
    """Step a ``scheduler_interval="epoch"`` scheduler (``ReduceLROnPlateau`` with the monitored value).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), 0.1)
        >>> t = Trainer(model, opt, device="cpu", scheduler=torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
        >>> opt.step()
        >>> step_epoch_scheduler(t, {"epoch": 1, "train/loss": 1.0})
        >>> opt.param_groups[0]["lr"]
        0.05
    """
    if trainer.scheduler is None or trainer.scheduler_interval != "epoch":
        return
    if isinstance(trainer.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        monitor = trainer.scheduler_monitor if trainer.scheduler_monitor in logs else "train/loss"
        trainer.scheduler.step(logs[monitor])
    else:
        trainer.scheduler.step()
    check_learning_rates(trainer.optimizer, f"after epoch {int(logs['epoch'])}")


def _on_batch_end(trainer: Trainer, hooked: bool, state: LoopState, output: StepOutput) -> None:
    if hooked:
        trainer.callbacks.dispatch("on_train_batch_end", trainer, state, output)
    if trainer.interrupt.requested and trainer.at_step_boundary(state):
        trainer.interrupt.check()


def train_epochs(trainer: Trainer, epochs: int, val_loader: Iterable[Any] | None, bar: Progress) -> None:
    """The epochs of ``fit`` up to ``epochs`` (or a stop): each epoch, its logs and callbacks; the error paths.

    ``trainer.interrupt`` is installed by the caller and restored here, as the bar is closed. After
    SIGINT/SIGTERM it writes ``last.pt`` and raises the exit error; a NaN/inf loss names the last good
    checkpoint; any error reaches the callbacks' ``on_exception``.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> from trainkit.engine.loaders import TrainLoader
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu",
        ...             progress=False)
        >>> t.train_loader = TrainLoader([(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))], t.dist, seed=0)
        >>> train_epochs(t, 2, None, Progress(enabled=False)); t.state.epoch  # doctest: +ELLIPSIS
        epoch 1 ...
        epoch 2 ...
        2
    """
    try:
        trainer.callbacks.dispatch("on_fit_start", trainer)
        while trainer.state.epoch < epochs and not trainer.should_stop:
            logs = run_epoch(trainer, val_loader, bar)
            trainer.outputs.log_epoch(trainer.history)
            bar.epoch_line(logs)
            trainer.callbacks.dispatch("on_epoch_end", trainer, logs)
            trainer.should_stop = trainer.dist.any_true(trainer.should_stop, trainer.device)
            trainer.interrupt.check()
    except StopRequested:
        bar.close()
        err = _stop_after_signal(trainer)
        trainer.callbacks.dispatch("on_exception", trainer, err)
        raise err from None
    except NonFiniteLossError as err:
        better = err if "not saving" in str(err) else NonFiniteLossError(f"{err}; {last_good(trainer)}")
        trainer.callbacks.dispatch("on_exception", trainer, better)
        raise better from (None if better is err else err)
    except BaseException as err:
        trainer.callbacks.dispatch("on_exception", trainer, err)
        raise
    finally:
        trainer.interrupt.restore()
        bar.close()


def last_good(trainer: Trainer) -> str:
    """Where the last state written before a NaN/inf is, for the messages that report one.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> last_good(Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu"))[:30]
        'no checkpoint holds an earlier'
    """
    last = trainer.last_checkpoint_path()
    if last is not None and last.is_file():
        return f"the last good state is {last} (resume with `resume={str(last)!r}`)"
    return "no checkpoint holds an earlier state (`ModelCheckpoint(every_n_steps=N)` keeps one every N steps)"


def _stop_after_signal(trainer: Trainer) -> BaseException:
    """After SIGINT/SIGTERM: write ``last.pt`` (with ``run_dir``), say how to resume, return the exit error."""
    last = trainer.last_checkpoint_path()
    path = trainer.save_checkpoint(last) if last is not None else None
    state = trainer.state
    where = f"epoch {state.epoch + 1}, batch {state.batch_idx} (step {state.global_step})"
    saved = f"saved {path}; " if path is not None else ""
    print(f"trainkit: stopped at {where}; {saved}{resume_hint(path)}", file=sys.stderr, flush=True)
    return trainer.interrupt.exit_error()
