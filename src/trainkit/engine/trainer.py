"""``Trainer``: the functional loops plus precision, callbacks, logging, checkpoints and DDP.

``fit`` in pseudocode::

    restore checkpoint (resume) or seed
    for epoch in range(start, epochs):
        set_epoch(loader, epoch)                       # sampler shuffling, per-sample augmentation seeds
        train = train_one_epoch(model, loader, ...)    # callbacks see every batch
        val = evaluate(model, val_loader, ...)         # when given
        scheduler.step()                               # per-epoch schedules
        history.append({"epoch", "train/loss", "val/loss", "val/<metric>", "lr", ...})
        metrics.csv, TensorBoard, on_epoch_end (last.pt, best.pt, early stopping)
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.engine import checkpoint as ckpt_io
from trainkit.engine._step import StepFn, StepOutput
from trainkit.engine.callbacks import Callback, CallbackList, ModelCheckpoint
from trainkit.engine.distributed import DistributedContext, local_device
from trainkit.engine.interrupts import GracefulInterrupt, StopRequested, resume_hint
from trainkit.engine.loops import LoopState, check_learning_rates, default_step, evaluate, predict, train_one_epoch
from trainkit.engine.precision import MixedPrecision
from trainkit.engine.progress import Progress
from trainkit.engine.resumable import ResumableBatchSampler, rebuild_loader
from trainkit.errors import CheckpointError
from trainkit.utils.device import move_to_device, resolve_device
from trainkit.utils.logging import CSVLogger, TensorBoardLogger
from trainkit.utils.seed import get_rng_state, seed_everything, set_rng_state

__all__ = ["Trainer"]


class Trainer:
    """Fit, evaluate and predict with any ``nn.Module``.

    Args:
        model: the model; moved to ``device`` (and wrapped in DDP under ``torchrun``).
        optimizer: built on the model's parameters.
        loss_fn: ``loss_fn(outputs, targets)``; optional when ``training_step`` computes the loss.
        metrics: ``{name: metric}`` with ``update``/``compute``/``reset`` (trainkit or torchmetrics);
            logged as ``train/<name>`` and ``val/<name>``.
        scheduler: a learning-rate scheduler, stepped per ``scheduler_interval``; never stepped for
            an optimizer step that the fp16 scaler skipped. ``ReduceLROnPlateau`` gets
            ``scheduler_monitor``'s value.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: the history key for ``ReduceLROnPlateau``.
        amp: ``"auto"``, ``"fp16"``, ``"bf16"`` or ``False`` (see :class:`MixedPrecision`).
        grad_accum: batches per optimizer step.
        clip_grad_norm: clip the gradients' global norm to this value.
        callbacks: :class:`~trainkit.callbacks.Callback` objects. With ``run_dir`` and no
            :class:`~trainkit.callbacks.ModelCheckpoint`, one is added (``last.pt``, ``best.pt``).
        run_dir: where ``metrics.csv``, TensorBoard events, checkpoints and ``curves.png`` go;
            ``None`` writes nothing.
        device: ``"auto"`` (CUDA, then MPS, then CPU; the local rank's GPU under torchrun) or a device.
        seed: seeds every RNG when ``fit`` starts afresh (a resume restores the saved RNG instead).
        progress: tqdm bars on a terminal; one line an epoch otherwise or when ``False``.
        on_nan: ``"raise"`` or ``"skip"`` a step whose loss is NaN/inf.
        batch_transform: applied to every batch on the device (e.g. ``BatchNormalize``).
        training_step: ``fn(batch) -> loss | {"loss", "outputs", "targets"}`` instead of overriding
            :meth:`training_step`.
        validation_step: likewise for :meth:`validation_step`.
        channels_last: use the channels-last memory format for the model and 4-D inputs.
        compile: ``torch.compile`` the model (``True`` or a dict of ``torch.compile`` options).
        ddp_kwargs: options for ``DistributedDataParallel`` (``find_unused_parameters``,
            ``static_graph``, ``gradient_as_bucket_view``, ...), checked in every run.
        sync_batchnorm: convert BatchNorm layers to ``SyncBatchNorm`` under DDP (CUDA only). See
            ``docs/distributed.md`` for what changes under ``torchrun``.

    Attributes:
        model: what is trained (the user's module, possibly wrapped in DDP / ``torch.compile``).
        module: the user's module, unwrapped.
        history: one dict of floats an epoch.
        extra_state: plain data (str, numbers, lists, dicts) saved in every checkpoint under
            ``"extra"``, e.g. the arguments needed to rebuild the model for prediction.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
        >>> trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(),
        ...                   device="cpu", progress=False)
        >>> history = trainer.fit(data, epochs=2)  # doctest: +ELLIPSIS
        epoch 1/2 ...
        >>> [row["epoch"] for row in history]
        [1, 2]
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        *,
        metrics: Mapping[str, Any] | None = None,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        amp: str | bool | None = "auto",
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        callbacks: Iterable[Callback] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = "auto",
        seed: int | None = None,
        progress: bool = True,
        on_nan: str = "raise",
        batch_transform: Callable[[Any], Any] | None = None,
        training_step: StepFn | None = None,
        validation_step: StepFn | None = None,
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
        ddp_kwargs: Mapping[str, Any] | None = None,
        sync_batchnorm: bool = False,
    ):
        _check_args(model, optimizer, loss_fn, scheduler_interval, grad_accum, clip_grad_norm, on_nan, training_step)
        self.device = local_device(resolve_device(device))  # under torchrun, "cuda" is the local rank's GPU
        self.dist = DistributedContext.detect(self.device)
        self.module = (
            model.to(self.device, memory_format=torch.channels_last) if channels_last else model.to(self.device)
        )
        if isinstance(loss_fn, nn.Module):
            loss_fn = loss_fn.to(self.device)
        self.model = self.dist.wrap_model(self.module, self.device, sync_batchnorm=sync_batchnorm, **(ddp_kwargs or {}))
        if compile:
            self.model = torch.compile(self.model, **(compile if isinstance(compile, dict) else {}))
        self.optimizer, self.loss_fn, self.scheduler = optimizer, loss_fn, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.precision = MixedPrecision(amp, self.device)
        self.grad_accum, self.clip_grad_norm, self.on_nan = int(grad_accum), clip_grad_norm, on_nan
        self.val_metrics = dict(metrics or {})
        self.train_metrics = {k: copy.deepcopy(m) for k, m in self.val_metrics.items()}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed, self.progress = seed, progress
        self.batch_transform = _with_channels_last(batch_transform) if channels_last else batch_transform
        self._training_step_fn, self._validation_step_fn = training_step, validation_step
        self._default_train_step = default_step(self.model, self.loss_fn)
        self._default_val_step = default_step(self.model, self.loss_fn, need_loss=False)
        callbacks = list(callbacks or [])
        if self.run_dir is not None and not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
            callbacks.append(ModelCheckpoint())
        self.callbacks = CallbackList(callbacks)
        self.history: list[dict[str, float]] = []
        self.state = LoopState()
        self.epoch_logs: dict[str, float] = {}
        self.should_stop = False
        self.has_validation = False
        self._train_loader: Any = None
        self._tb: TensorBoardLogger | None = None
        self._resume_loader_state: dict[str, Any] | None = None
        self._interrupt = GracefulInterrupt(enabled=False)
        self.extra_state: dict[str, Any] = {}

    # -- steps a subclass may override -------------------------------------------------------

    def training_step(self, batch: Any) -> Any:
        """One training forward pass and loss; return the loss or ``{"loss", "outputs", "targets"}``.

        Runs under autocast; the Trainer does backward, clipping and the optimizer step. Override
        for models whose step is not ``loss_fn(model(inputs), targets)``, e.g. a detection model
        that returns a dict of losses.

        Example:
            >>> class DetectionTrainer(Trainer):
            ...     def training_step(self, batch):
            ...         images, targets = batch
            ...         return sum(self.model(images, targets).values())
        """
        if self._training_step_fn is not None:
            return self._training_step_fn(batch)
        return self._default_train_step(batch)

    def validation_step(self, batch: Any) -> Any:
        """One evaluation forward pass (under ``inference_mode``); same return shape as ``training_step``.

        Example:
            >>> class MyTrainer(Trainer):
            ...     def validation_step(self, batch):
            ...         images, masks = batch
            ...         logits = self.model(images)["out"]
            ...         return {"loss": self.loss_fn(logits, masks), "outputs": logits, "targets": masks}
        """
        if self._validation_step_fn is not None:
            return self._validation_step_fn(batch)
        return self._default_val_step(batch)

    # -- public API ----------------------------------------------------------------------------

    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        epochs: int = 1,
        resume: str | os.PathLike[str] | None = None,
    ) -> list[dict[str, float]]:
        """Train for ``epochs`` epochs in total (a resumed run continues to the same total).

        Args:
            train_loader: a ``DataLoader`` (or any iterable of batches).
            val_loader: evaluated after every epoch when given.
            epochs: the total number of epochs.
            resume: a checkpoint path; ``"last"`` for ``<run_dir>/checkpoints/last.pt``; or ``"auto"``:
                resume from that ``last.pt`` when it exists, else start afresh, so one script serves the first
                start and every restart (``torchrun --max-restarts``, a requeued job). Under DDP rank 0's view
                decides for all ranks, and every rank loads the checkpoint.

        Returns:
            ``history``: one dict of floats an epoch.

        Raises:
            KeyboardInterrupt: after Ctrl-C (SIGINT), once ``last.pt`` is written (see the note).
            SystemExit: ``SystemExit(143)`` after SIGTERM, once ``last.pt`` is written.

        Note:
            **Resume.** A run killed at any point continues from its last checkpoint (``resume="last"`` or
            a path) and ends with bitwise the same weights and history as a run never interrupted (on the
            CPU, whatever ``num_workers``, when augmentations draw from ``trainkit.data.sample_rng`` as
            ``SegmentationDataset`` does). The checkpoint holds the model, optimizer, scheduler, scaler, RNG
            states, the epoch's sampler permutation and position, the accumulation phase and the running
            sums of the epoch; the consumed batches are skipped without loading them.
            ``ModelCheckpoint(every_n_steps=N)`` bounds the work a crash loses to N optimizer steps.

            **Ctrl-C and SIGTERM.** During ``fit`` the first signal makes the loop finish the optimizer step
            in progress (it never stops inside a ``grad_accum`` group; a validation pass that has begun is
            completed), write ``last.pt`` into the checkpoint folder (``<run_dir>/checkpoints``; nothing
            without ``run_dir``), print the ``resume=`` argument (and under the ``trainkit`` command the
            command line ending in ``--resume last``) and raise ``KeyboardInterrupt`` (SIGINT, exit status
            130) or ``SystemExit(143)`` (SIGTERM). A second signal stops at once, without saving. The
            previous signal handlers are restored when ``fit`` ends. Handlers are installed only in the
            main thread and not under DDP, where ranks would stop at different steps: resume DDP runs
            from their ``every_n_steps`` checkpoints.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(),
            ...             device="cpu", progress=False)
            >>> t.fit([(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))], epochs=1)[0]["epoch"]  # doctest: +ELLIPSIS
            epoch 1/1 ...
            1
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"`epochs` must be a positive integer, got {epochs!r}")
        _check_not_empty(train_loader, "train_loader")
        if val_loader is not None:
            _check_not_empty(val_loader, "val_loader")
        self._train_loader = self._prepare_train_loader(train_loader)
        val_loader = self._prepare_eval_loader(val_loader)
        self.has_validation = val_loader is not None
        self.should_stop = False
        self._start(resume)
        bar = Progress(enabled=self.progress and self.dist.is_main, total_epochs=epochs)
        bar.quiet = not self.dist.is_main
        csv_log = self._open_loggers()
        bar.start_fit(self.state.epoch)
        self._interrupt = GracefulInterrupt(enabled=not self.dist.enabled).install()
        try:
            self.callbacks.dispatch("on_fit_start", self)
            while self.state.epoch < epochs and not self.should_stop:
                logs = self._run_epoch(val_loader, bar)
                if csv_log is not None:  # the whole file, atomically: a failed run never truncates an older one
                    csv_log.start(self.history)
                if self._tb is not None:
                    self._tb.log_scalars(logs, int(logs["epoch"]))
                bar.epoch_line(logs)
                self.callbacks.dispatch("on_epoch_end", self, logs)
                self.should_stop = self.dist.any_true(self.should_stop, self.device)
                self._interrupt.check()
        except StopRequested:
            bar.close()
            err = self._stop_after_signal()
            self.callbacks.dispatch("on_exception", self, err)
            raise err from None
        except BaseException as err:
            self.callbacks.dispatch("on_exception", self, err)
            raise
        finally:
            self._interrupt.restore()
            bar.close()
            if self._tb is not None:
                self._tb.close()
        self.callbacks.dispatch("on_fit_end", self)
        self._plot_curves()
        self.dist.barrier()  # no rank returns (and reads run_dir) before rank 0 has written its files
        return self.history

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Loss and metrics over ``loader``: ``{"loss": ..., "<metric>": ...}``, exact across ranks.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu")
            >>> sorted(t.evaluate([(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]))
            ['loss']
        """
        loader = self._prepare_eval_loader(loader)
        return evaluate(
            self.model,
            loader,
            metrics=self.val_metrics,
            device=self.device,
            precision=self.precision,
            loss_fn=self.loss_fn,
            step_fn=self._custom_step("validation_step"),
            batch_transform=self.batch_transform,
            progress=Progress(enabled=self.progress and self.dist.is_main),
            reduce=self.dist.all_reduce_sum,
        )

    def predict(self, loader: Iterable[Any]) -> list[Any]:
        """The model's outputs for every batch of ``loader``, on the CPU (eval mode, inference mode).

        Example:
            >>> model = torch.nn.Linear(2, 3)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> t.predict([torch.randn(4, 2)])[0].shape
            torch.Size([4, 3])
        """
        return predict(
            self.module, loader, device=self.device, precision=self.precision, batch_transform=self.batch_transform
        )

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path | None:
        """Write a resumable checkpoint (main process only; other ranks return ``None``).

        Example:
            >>> import tempfile
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> t.save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt").name
            'ckpt.pt'
        """
        # Under DDP a mid-epoch checkpoint holds every rank's running sums: a collective, so every rank calls this.
        ranks = self.dist.gather(self._epoch_state()) if self.dist.enabled and self.state.batch_idx > 0 else None
        if not self.dist.is_main:
            return None
        state = self._checkpoint_state()
        if ranks is not None:
            state["epoch_state"] = {"ranks": ranks}
        return ckpt_io.save_checkpoint(path, state)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler, counters, history, callbacks and RNG from ``path``.

        ``fit(resume=path)`` calls this; call it yourself to evaluate a saved run.

        Example:
            >>> import tempfile
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> p = t.save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt")
            >>> t.load_checkpoint(p)["epoch"]
            0
        """
        ckpt = ckpt_io.load_checkpoint(
            path,
            self.module,
            self.optimizer,
            self.scheduler if self.scheduler is not None else None,
            map_location="cpu",
        )
        if ckpt.get("scaler"):
            self.precision.load_state_dict(ckpt["scaler"])
        self.state = LoopState(
            epoch=int(ckpt.get("epoch", 0)),
            batch_idx=int(ckpt.get("batch_idx", 0)),
            global_step=int(ckpt.get("global_step", 0)),
        )
        self.history = [dict(row) for row in ckpt.get("history", [])]
        self.callbacks.load_state_dict(ckpt.get("callbacks", {}))
        self.epoch_logs = dict(ckpt.get("epoch_logs", {}))
        epoch_state = self.dist.epoch_state_of(ckpt) if self.state.batch_idx > 0 else {}
        if epoch_state is None:  # written by another number of processes: the epoch restarts
            self.state.batch_idx, epoch_state = 0, {}
        if self.state.batch_idx > 0 and epoch_state:
            self.state.loss_sum = (
                epoch_state["loss_sum"].to(self.device) if epoch_state.get("loss_sum") is not None else None
            )
            self.state.samples = int(epoch_state.get("samples", 0))
            self.state.metrics_updated = bool(epoch_state.get("metrics"))
            for name, metric in self.train_metrics.items():
                saved = epoch_state.get("metrics", {}).get(name)
                if saved is not None and hasattr(metric, "load_state_dict"):
                    metric.load_state_dict(saved)
        if ckpt.get("rng") is not None:
            set_rng_state(ckpt["rng"])
        self._resume_loader_state = ckpt.get("loader")
        return ckpt

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Send step-level scalars to TensorBoard (main process, when installed).

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu").log_scalars({"lr": 0.1}, 0)
        """
        if self._tb is not None:
            self._tb.log_scalars(values, step)

    def at_step_boundary(self, state: LoopState) -> bool:
        """Whether the last batch completed an optimizer step (no gradients are pending).

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", grad_accum=2)
            >>> t.at_step_boundary(LoopState(batch_idx=3)), t.at_step_boundary(LoopState(batch_idx=4))
            (False, True)
        """
        return state.batch_idx % self.grad_accum == 0

    # -- internals -----------------------------------------------------------------------------

    def _run_epoch(self, val_loader: Iterable[Any] | None, bar: Progress) -> dict[str, float]:
        epoch = self.state.epoch
        loader, total = self._epoch_batches(epoch)
        if self.state.batch_idx == 0:
            self.epoch_logs = {"lr": float(self.optimizer.param_groups[0]["lr"])}
            self.callbacks.dispatch("on_epoch_start", self, epoch + 1)
        watch = self.callbacks.has("on_train_batch_end") or self._interrupt.installed
        on_batch_end = self._on_batch_end if watch else None
        train = train_one_epoch(
            self.model, loader, self.optimizer, self.loss_fn,
            device=self.device, precision=self.precision,
            scheduler=self.scheduler if self.scheduler_interval == "step" else None,
            grad_accum=self.grad_accum, clip_grad_norm=self.clip_grad_norm, metrics=self.train_metrics,
            step_fn=self._custom_step("training_step"), batch_transform=self.batch_transform, on_nan=self.on_nan,
            state=self.state, progress=bar, on_batch_end=on_batch_end, num_batches=total,
        )  # fmt: skip
        logs: dict[str, float] = {"epoch": epoch + 1}
        logs.update({f"train/{k}": v for k, v in self._reduce_train(train).items()})
        if val_loader is not None:
            val = {f"val/{k}": v for k, v in self.evaluate(val_loader).items()}
            self.callbacks.dispatch("on_validation_end", self, val)
            logs.update(val)
        logs.update(self.epoch_logs)
        self._step_epoch_scheduler(logs)
        self.state.epoch, self.state.batch_idx = epoch + 1, 0
        self.history.append(logs)
        return logs

    def _epoch_batches(self, epoch: int) -> tuple[Iterable[Any], int | None]:
        """The iterable for this epoch: a fresh pass, or the rest of an interrupted one."""
        from trainkit.data import set_epoch

        loader = self._train_loader
        set_epoch(loader, epoch)
        total = len(loader) if hasattr(loader, "__len__") else None
        sampler = getattr(loader, "batch_sampler", None)
        if self.state.batch_idx == 0 or not isinstance(sampler, ResumableBatchSampler):
            if self.state.batch_idx > 0:
                warnings.warn(
                    "resuming mid-epoch with a loader trainkit cannot rebuild (not a map-style DataLoader): the epoch "
                    "restarts from its first batch",
                    stacklevel=3,
                )
                self.state.batch_idx = 0
            return loader, total
        # Mid-epoch resume: replay the epoch's permutation, skip consumed batches, then put back the RNG
        # state of the moment the checkpoint was written.
        rng = get_rng_state()
        sampler.replay(getattr(self, "_resume_loader_state", None), skip=self.state.batch_idx)
        iterator = iter(loader)
        set_rng_state(rng)
        return iterator, total

    def _custom_step(self, name: str) -> StepFn | None:
        """The overridden or passed step, or ``None`` for the default step (which also fixes batch dtypes)."""
        overridden = getattr(type(self), name) is not getattr(Trainer, name)
        given = self._training_step_fn if name == "training_step" else self._validation_step_fn
        return getattr(self, name) if overridden or given is not None else None

    def _on_batch_end(self, state: LoopState, output: StepOutput) -> None:
        self.callbacks.dispatch("on_train_batch_end", self, state, output)
        if self._interrupt.requested and self.at_step_boundary(state):
            self._interrupt.check()

    def _stop_after_signal(self) -> BaseException:
        """After SIGINT/SIGTERM: write ``last.pt`` (with ``run_dir``), say how to resume, return the exit error."""
        path = self.save_checkpoint(self._last_checkpoint_path(self.run_dir)) if self.run_dir is not None else None
        where = f"epoch {self.state.epoch + 1}, batch {self.state.batch_idx} (step {self.state.global_step})"
        saved = f"saved {path}; " if path is not None else ""
        print(f"trainkit: stopped at {where}; {saved}{resume_hint(path)}", file=sys.stderr, flush=True)
        return self._interrupt.exit_error()

    def _last_checkpoint_path(self, run_dir: Path) -> Path:
        """``last.pt`` in the ``ModelCheckpoint`` folder (``<run_dir>/checkpoints`` by default)."""
        folder = next((cb.folder(self) for cb in self.callbacks.callbacks if isinstance(cb, ModelCheckpoint)), None)
        return (folder or run_dir / "checkpoints") / "last.pt"

    def _reduce_train(self, train: dict[str, float]) -> dict[str, float]:
        """Under DDP: the loss summed over every rank's samples (metrics reduce their own counts in ``compute``).

        ``DistributedSampler`` pads the epoch with repeated samples (at most ``world_size - 1``), which
        are trained on and therefore counted here too.
        """
        if not self.dist.enabled or "loss" not in train:
            return train
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_sum = self.state.loss_sum.to(self.device, torch.float64) if self.state.loss_sum is not None else zero
        total = self.dist.all_reduce_sum(torch.stack([loss_sum, zero + self.state.samples]))
        return {**train, "loss": float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")}

    def _step_epoch_scheduler(self, logs: dict[str, float]) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            monitor = self.scheduler_monitor if self.scheduler_monitor in logs else "train/loss"
            self.scheduler.step(logs[monitor])
        else:
            self.scheduler.step()
        check_learning_rates(self.optimizer, f"after epoch {int(logs['epoch'])}")

    def _start(self, resume: str | os.PathLike[str] | None) -> None:
        self._resume_loader_state = None
        path = self._resolve_resume(resume) if resume is not None else None
        if path is None:
            if self.seed is not None:
                seed_everything(self.seed)
            self.history, self.state = [], LoopState()
            return
        self.load_checkpoint(path)
        if self.dist.is_main:
            print(f"resumed from {path} at epoch {self.state.epoch + 1}, batch {self.state.batch_idx}", flush=True)

    def _resolve_resume(self, resume: str | os.PathLike[str]) -> Path | None:
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(
                f"`resume` must be a checkpoint path, 'last', 'auto' or None, got {type(resume).__name__} {resume!r}"
            )
        if str(resume) not in ("last", "auto"):
            return Path(resume)
        if self.run_dir is None:
            raise ValueError(f"`resume={str(resume)!r}` needs `run_dir` (it loads <run_dir>/checkpoints/last.pt)")
        path = self._last_checkpoint_path(self.run_dir)
        if self.dist.file_on_main(path, self.device):  # one answer on every rank: all resume or none does
            return path
        if str(resume) == "auto":
            return None  # the first start of a run: train from scratch
        raise CheckpointError(f"`resume='last'`: {path} does not exist yet; start without `resume`")

    def _open_loggers(self) -> CSVLogger | None:
        if self.run_dir is None or not self.dist.is_main:
            return None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"`run_dir={str(self.run_dir)!r}` cannot be created: {err.strerror or err}") from err
        if not os.access(self.run_dir, os.W_OK):
            raise ValueError(f"`run_dir={str(self.run_dir)!r}` is not writable; choose another folder")
        csv_log = CSVLogger(self.run_dir / "metrics.csv")
        tb = TensorBoardLogger(self.run_dir / "tensorboard")
        self._tb = tb if tb.available else None
        return csv_log

    def _checkpoint_state(self) -> dict[str, Any]:
        sampler = getattr(self._train_loader, "batch_sampler", None)
        mid_epoch = self.state.batch_idx > 0
        state: dict[str, Any] = {
            "model": ckpt_io.unwrap_model(self.module).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.precision.state_dict(),
            "epoch": self.state.epoch,
            "batch_idx": self.state.batch_idx,
            "global_step": self.state.global_step,
            "rng": get_rng_state(),
            "loader": sampler.epoch_state if mid_epoch and isinstance(sampler, ResumableBatchSampler) else None,
            "history": [dict(row) for row in self.history],
            "callbacks": self.callbacks.state_dict(),
            "epoch_logs": dict(self.epoch_logs) if mid_epoch else {},
            "extra": dict(self.extra_state),
            "world_size": self.dist.world_size,
        }
        if mid_epoch:
            state["epoch_state"] = self._epoch_state()
        return state

    def _epoch_state(self) -> dict[str, Any]:
        """This process's running loss and train-metric counts of the epoch so far (CPU tensors)."""
        metrics = {k: m.state_dict() for k, m in self.train_metrics.items() if hasattr(m, "state_dict")}
        return {
            "loss_sum": self.state.loss_sum.detach().cpu() if self.state.loss_sum is not None else None,
            "samples": self.state.samples,
            "metrics": move_to_device(metrics, torch.device("cpu"), non_blocking=False),
        }

    def _prepare_train_loader(self, loader: Iterable[Any]) -> Iterable[Any]:
        sampler = self.dist.train_sampler(loader, seed=self.seed or 0) if hasattr(loader, "dataset") else None
        rebuilt = rebuild_loader(loader, sampler=sampler, pin_memory=self.device.type == "cuda")
        if rebuilt is None:
            if self.dist.enabled:
                warnings.warn(
                    "under DDP the training loader is not a map-style DataLoader, so it is not sharded: "
                    "every rank sees all of it",
                    stacklevel=3,
                )
            return loader
        return rebuilt

    def _prepare_eval_loader(self, loader: Iterable[Any] | None) -> Iterable[Any] | None:
        if loader is None:
            return None
        return self.dist.shard_eval_loader(loader, pin_memory=self.device.type == "cuda")

    def _plot_curves(self) -> None:
        if self.run_dir is None or not self.dist.is_main or not self.history:
            return
        from trainkit.utils.plots import plot_curves

        metrics = tuple(k for k in self.history[-1] if k.startswith("val/") and k != "val/loss")
        plot_curves(self.history, self.run_dir / "curves.png", metrics=metrics)

    def __repr__(self) -> str:
        return (
            f"Trainer(model={type(self.module).__name__}, device={str(self.device)!r}, "
            f"amp={self.precision.mode!r}, world_size={self.dist.world_size})"
        )


def _check_args(
    model: Any, optimizer: Any, loss_fn: Any, interval: str, grad_accum: Any, clip: Any, on_nan: str, training_step: Any
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}; e.g. "
            "`torch.optim.Adam(model.parameters(), lr=1e-3)`"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}; e.g. `torch.nn.CrossEntropyLoss()`")
    if interval not in ("epoch", "step"):
        raise ValueError(f"`scheduler_interval` must be 'epoch' or 'step', got {interval!r}")
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"`grad_accum` must be a positive integer, got {grad_accum!r}")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"`clip_grad_norm` must be a positive number or None, got {clip!r}")
    if on_nan not in ("raise", "skip"):
        raise ValueError(f"`on_nan` must be 'raise' or 'skip', got {on_nan!r}")
    if any(g["lr"] < 0 for g in optimizer.param_groups if isinstance(g.get("lr"), (int, float))):
        raise ValueError(f"the optimizer has a negative learning rate {[g['lr'] for g in optimizer.param_groups]}")


def _check_not_empty(loader: Any, name: str) -> None:
    try:
        n = len(loader)
    except TypeError:
        return
    if n == 0:
        dataset = getattr(loader, "dataset", None)
        size = f" (dataset of {len(dataset)} samples)" if dataset is not None and hasattr(dataset, "__len__") else ""
        raise ValueError(
            f"`{name}` yields no batches{size}; check the dataset folder, and `drop_last=True` with a batch size "
            "larger than the dataset"
        )


def _with_channels_last(transform: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    def apply(batch: Any) -> Any:
        if transform is not None:
            batch = transform(batch)
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor) and batch[0].ndim == 4:
            return type(batch)([batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]])
        return batch

    return apply
