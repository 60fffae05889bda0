"""What a ``Trainer`` checkpoint holds, how a trainer is put back from one, and how a run starts.

A checkpoint is plain data (tensors and Python primitives, so ``weights_only=True`` loads it): the
model, optimizer, scheduler and scaler states, the :class:`~trainkit.engine.state.RunState` (counters,
history, seed), every RNG state, the callbacks' state and ``extra_state``. A checkpoint written
mid-epoch also holds the RNG states the epoch's order was drawn from and the running loss and
train-metric counts, so a resume ends bitwise where an uninterrupted run would.

These functions read and write the trainer's public attributes only (``module``, ``optimizer``,
``scheduler``, ``precision``, ``state``, ``callbacks``, ``train_metrics``, ``train_loader``,
``extra_state``, ``dist``); ``Trainer.fit``, ``save_checkpoint`` and ``load_checkpoint`` call them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainkit.engine import checkpoint as ckpt_io
from trainkit.engine.loop_state import raise_if_nonfinite
from trainkit.errors import CheckpointError, NonFiniteLossError
from trainkit.utils.device import move_to_device
from trainkit.utils.seed import get_rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = ["check_savable", "checkpoint_state", "epoch_sums", "resolve_resume", "restore_checkpoint", "start_run"]


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint dict of this process: states, run state, RNG, and mid-epoch the epoch's order and sums.

    Reads the RNG state (without drawing from it).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> state = checkpoint_state(t)
        >>> state["epoch"], state["batch_idx"], "epoch_state" in state
        (0, 0, False)
    """
    mid_epoch = trainer.state.mid_epoch
    loader = trainer.train_loader
    state: dict[str, Any] = {
        "model": ckpt_io.unwrap_model(trainer.module).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "optimizer_class": type(trainer.optimizer).__name__,
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.precision.state_dict(),
        **trainer.state.state_dict(),
        "rng": get_rng_state(),
        "loader": loader.epoch_state() if mid_epoch and loader is not None else None,
        "callbacks": trainer.callbacks.state_dict(),
        "extra": dict(trainer.extra_state),
        "world_size": trainer.dist.world_size,
    }
    if mid_epoch:
        state["epoch_state"] = epoch_sums(trainer)
    return state


def check_savable(trainer: Trainer, path: str | os.PathLike[str], last_good: str) -> None:
    """Refuse to write a checkpoint after a NaN/inf loss or with NaN/inf weights (``NonFiniteLossError``).

    A loss check deferred on an accelerator (read at the next refresh) is made now, so no checkpoint is
    written after a non-finite step; then every floating tensor of the model is checked (one device read).
    ``last_good`` says where the last good state is, for the message.

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> check_savable(t, "last.pt", "none")  # finite weights: nothing to say
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(float("nan"))
        >>> check_savable(t, "last.pt", "the last good checkpoint is best.pt")
        Traceback (most recent call last):
        ...
        trainkit.errors.NonFiniteLossError: not saving last.pt: the model holds NaN or infinite values (weight) ...
    """
    try:
        raise_if_nonfinite(trainer.state)
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"not saving {path}: {err}; {last_good}") from None
    floats = [(k, t) for k, t in ckpt_io.unwrap_model(trainer.module).state_dict().items() if t.is_floating_point()]
    if not floats:
        return
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()
    bad = [name for (name, _), ok in zip(floats, finite, strict=True) if not ok]
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteLossError(
            f"not saving {path}: the model holds NaN or infinite values ({listed}) after optimizer step "
            f"{trainer.state.global_step}: training diverged; {last_good}. Lower the learning rate or clip "
            "gradients (`clip_grad_norm=1.0`), then resume from that checkpoint"
        )


def epoch_sums(trainer: Trainer) -> dict[str, Any]:
    """This process's running loss and train-metric counts of the epoch so far (CPU tensors).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
        >>> epoch_sums(t)
        {'loss_sum': None, 'samples': 0, 'metrics_updated': False, 'metrics': {}}
    """
    state = trainer.state
    metrics = {k: m.state_dict() for k, m in trainer.train_metrics.items() if hasattr(m, "state_dict")}
    return {
        "loss_sum": state.loss_sum.detach().cpu() if state.loss_sum is not None else None,
        "samples": state.samples,
        "metrics_updated": state.metrics_updated,
        "metrics": move_to_device(metrics, torch.device("cpu"), non_blocking=False),
    }


def restore_checkpoint(trainer: Trainer, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``path`` into ``trainer``: states, run state, callbacks, the epoch's sums, then the RNG.

    The RNG state is set last, so nothing restored after it draws from it. Returns the checkpoint dict.

    Example:
        >>> import tempfile
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", seed=4)
        >>> p = t.save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt")
        >>> restore_checkpoint(t, p)["global_step"], t.state.global_step
        (0, 0)
    """
    given_rates = _initial_rates(trainer.optimizer)
    ckpt = ckpt_io.load_checkpoint(path, trainer.module, trainer.optimizer, trainer.scheduler, map_location="cpu")
    saved_class, own_class = ckpt.get("optimizer_class"), type(trainer.optimizer).__name__
    if saved_class is not None and saved_class != own_class:
        raise CheckpointError(
            f"{path} was written with a {saved_class} optimizer and this run has a {own_class}: an optimizer's state "
            f"does not carry over to another kind. Resume with `torch.optim.{saved_class}`, or start a new run from "
            "the weights alone (`trainkit.load_checkpoint(path, model)`, then `fit` without `resume`)"
        )
    _apply_rebuilt_schedule(trainer.scheduler, trainer.optimizer)
    if _initial_rates(trainer.optimizer) != given_rates:
        warnings.warn(
            f"resuming from {path}: the optimizer's state comes from the checkpoint, learning rate included "
            f"({_initial_rates(trainer.optimizer)}, not the {given_rates} of the optimizer given). To train on with "
            "another learning rate, set it after the resume, e.g. in a callback's `on_fit_start`: "
            "`for group in trainer.optimizer.param_groups: group['lr'] = 1e-4` (a scheduler goes on driving it)",
            UserWarning,
            stacklevel=5,
        )
    if ckpt.get("scaler"):
        trainer.precision.load_state_dict(ckpt["scaler"])
    state = trainer.state
    state.load_state_dict(ckpt)
    trainer.callbacks.load_state_dict(ckpt.get("callbacks", {}))
    saved_epoch = trainer.dist.epoch_state_of(ckpt) if state.mid_epoch else {}
    if saved_epoch is None:  # written by another number of processes: the epoch restarts
        state.batch_idx, saved_epoch = 0, {}
    if state.mid_epoch and saved_epoch:
        loss_sum = saved_epoch.get("loss_sum")
        state.loss_sum = loss_sum.to(trainer.device) if loss_sum is not None else None
        state.samples = int(saved_epoch.get("samples", 0))
        state.metrics_updated = bool(saved_epoch.get("metrics_updated", saved_epoch.get("metrics")))
        for name, metric in trainer.train_metrics.items():
            saved = saved_epoch.get("metrics", {}).get(name)
            if saved is not None and hasattr(metric, "load_state_dict"):
                metric.load_state_dict(saved)
    state.loader_state = ckpt.get("loader") if state.mid_epoch else None
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return ckpt


def _apply_rebuilt_schedule(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Give the optimizer the learning rate the restored ``LambdaLR`` sets at its step, from its own function.

    A run extended with more epochs rebuilds its schedule for the new length (a ``LambdaLR`` keeps no
    plain function in its state), but the optimizer comes back with the rate the old schedule had set, so
    the first step of the new epoch would train at that stale rate. ``LambdaLR`` computes each rate from
    scratch (``base_lr * f(step)``), so for an unchanged schedule this is the very rate saved: resume stays
    bitwise exact. Chainable schedulers compute each rate from the last and are left as loaded.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    step = scheduler.last_epoch
    rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, rates, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    scheduler._last_lr = list(rates)  # what get_last_lr() reports


def _initial_rates(optimizer: torch.optim.Optimizer) -> list[Any]:
    """Each group's learning rate as configured: a scheduler's ``initial_lr`` when one set it, else ``lr``."""
    return [group.get("initial_lr", group.get("lr")) for group in optimizer.param_groups]


def start_run(trainer: Trainer, resume: str | os.PathLike[str] | None) -> None:
    """Start a fresh run (seed it; draw a seed when none is given) or load the checkpoint ``resume`` names.

    A fresh run into a ``run_dir`` that holds a run is refused (``ValueError``) unless its ``RunDir`` says
    ``overwrite=True``.

    A fresh run seeds every RNG with ``trainer.seeding.seed`` when given; without one, a seed for the
    per-sample seeding is drawn (the same on every rank) and kept in ``trainer.state.seed``. A resumed run
    continues with its checkpoint's seed (older checkpoints without one keep the trainer's).

    Example:
        >>> from trainkit.engine.trainer import Trainer
        >>> model = torch.nn.Linear(2, 2)
        >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", seed=0)
        >>> start_run(t, None)
        >>> t.state.seed, t.state.history, t.state.epoch
        (0, [], 0)
    """
    path = resolve_resume(trainer, resume) if resume is not None else None
    if path is None:
        refused = trainer.outputs.replacing_message() if trainer.dist.is_main else None
        if trainer.dist.any_true(refused is not None, trainer.device):  # every rank stops, not only rank 0
            raise ValueError(refused or "rank 0 refused to replace the run in `run_dir` (see its error)")
        trainer.state.load_state_dict({})
        seed = trainer.seeding.seed
        if seed is not None:
            seed_everything(seed)
        else:  # one drawn seed for every rank: the per-sample seeds must agree across processes
            seed = int(trainer.dist.gather(trainer.seeding.resolved())[0])
        trainer.state.seed = seed
        return
    trainer.load_checkpoint(path)
    if trainer.state.seed is None:  # a checkpoint from before seeds were saved
        trainer.state.seed = trainer.seeding.seed if trainer.seeding.seed is not None else 0
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
    path = trainer.last_checkpoint_path()
    if path is None:
        raise ValueError(f"`resume={str(resume)!r}` needs `run_dir` (it loads <run_dir>/checkpoints/last.pt)")
    if trainer.dist.file_on_main(path, trainer.device):  # one answer on every rank: all resume or none does
        return path
    if str(resume) == "auto":
        return None  # the first start of a run: train from scratch
    raise CheckpointError(f"`resume='last'`: {path} does not exist yet; start without `resume`")
