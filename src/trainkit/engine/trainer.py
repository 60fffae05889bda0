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

Who owns what: the run's counters, history and seed are one :class:`~trainkit.engine.state.RunState`
(``trainer.state``), passed to the loops and callbacks; the training loader is prepared once by
:class:`~trainkit.engine.loaders.TrainLoader` (``trainer.train_loader``); ``run_dir``'s files belong to
:class:`~trainkit.engine.run_dir.RunDir` (``trainer.outputs``). The loop's body is ``_fit_epoch.run_epoch``;
what a checkpoint holds and how a run starts or resumes, ``resume``; the argument checks, ``_arguments``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.engine import checkpoint as ckpt_io
from trainkit.engine._arguments import check_args, check_not_empty, with_channels_last
from trainkit.engine._fit_epoch import last_good, train_epochs
from trainkit.engine.callbacks import Callback, CallbackList, ModelCheckpoint
from trainkit.engine.distributed import DistributedContext, local_device
from trainkit.engine.interrupts import GracefulInterrupt
from trainkit.engine.loaders import TrainLoader, prepare_eval_loader
from trainkit.engine.loop_state import LoopState
from trainkit.engine.loops import evaluate, predict, predict_iter
from trainkit.engine.lr_finder import LRFinderResult, lr_find
from trainkit.engine.precision import MixedPrecision
from trainkit.engine.progress import Progress
from trainkit.engine.resume import check_savable, checkpoint_state, epoch_sums, restore_checkpoint, start_run
from trainkit.engine.run_dir import RunDir
from trainkit.engine.seeding import Seeding
from trainkit.engine.state import RunState
from trainkit.engine.step import StepFn, default_step, output_key
from trainkit.utils.device import resolve_device

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
            ``None`` writes nothing. One run writes into a folder at a time (a lock), and a fresh run into a
            folder that holds a run is refused: continue it with ``fit(resume="last")`` or pass
            ``RunDir(path, overwrite=True)`` to replace it (:class:`~trainkit.engine.run_dir.RunDir`).
        device: ``"auto"`` (CUDA, then MPS, then CPU; the local rank's GPU under torchrun) or a device.
        seed: an int seeds every RNG when ``fit`` starts afresh (a resume restores the saved RNG instead) and
            derives each training sample's random draws from ``(seed, epoch, position)``, so augmentations do
            not depend on ``num_workers`` nor on an interruption; ``None`` draws a seed for the samples (saved
            in checkpoints). A :class:`~trainkit.engine.seeding.Seeding` also chooses where samples are seeded
            (``Seeding(0, sample_seeding="always")`` makes ``num_workers=0`` match too).
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
        state: the run's :class:`~trainkit.engine.state.RunState` (epoch, batch, step, history, seed).
        history: one dict of floats an epoch (``state.history``). A second ``fit`` continues the run to its
            new ``epochs`` total.
        train_loader: the :class:`~trainkit.engine.loaders.TrainLoader` of the current ``fit``.
        outputs: the :class:`~trainkit.engine.run_dir.RunDir` writing ``metrics.csv``, TensorBoard, curves.
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
        run_dir: str | os.PathLike[str] | RunDir | None = None,
        device: str | torch.device | None = "auto",
        seed: int | Seeding | None = None,
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
        check_args(model, optimizer, loss_fn, scheduler_interval, grad_accum, clip_grad_norm, on_nan)
        self.device = local_device(resolve_device(device))  # under torchrun, "cuda" is the local rank's GPU
        self.dist = DistributedContext.detect(self.device)
        self.module = model.to(self.device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if isinstance(loss_fn, nn.Module):
            loss_fn = loss_fn.to(self.device)
        self.model: nn.Module = self.dist.wrap_model(
            self.module, self.device, sync_batchnorm=sync_batchnorm, **(ddp_kwargs or {})
        )
        if compile:  # an OptimizedModule: an nn.Module that runs the compiled graph
            self.model = torch.compile(self.model, **(compile if isinstance(compile, dict) else {}))  # type: ignore[assignment]
        self.optimizer, self.loss_fn, self.scheduler = optimizer, loss_fn, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.precision = MixedPrecision(amp, self.device)
        self.grad_accum, self.clip_grad_norm, self.on_nan = int(grad_accum), clip_grad_norm, on_nan
        self.val_metrics = dict(metrics or {})
        self.train_metrics = {k: copy.deepcopy(m) for k, m in self.val_metrics.items()}
        self.outputs = RunDir.of(run_dir, is_main=self.dist.is_main)
        self.run_dir = self.outputs.path
        self.seeding = Seeding.of(seed)
        self.progress = progress
        self.batch_transform = with_channels_last(batch_transform) if channels_last else batch_transform
        self._training_step_fn, self._validation_step_fn = training_step, validation_step
        self._default_train_step = default_step(self.model, self.loss_fn)
        self._default_val_step = default_step(self.model, self.loss_fn, need_loss=False)
        callbacks = list(callbacks or [])
        if self.run_dir is not None and not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
            callbacks.append(ModelCheckpoint())
        self.callbacks = CallbackList(callbacks)
        self.state = RunState(seed=self.seeding.seed)
        self.has_validation = False
        self.train_loader: TrainLoader | None = None
        self._started = False  # a run was started (or resumed) by `fit`; a second `fit` continues it
        self.interrupt = GracefulInterrupt(enabled=False)
        self.extra_state: dict[str, Any] = {}

    # -- the run state, by its familiar names ---------------------------------------------------

    @property
    def history(self) -> list[dict[str, float]]:
        """One dict of floats a finished epoch (``state.history``).

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu").history
            []
        """
        return self.state.history

    @property
    def epoch_logs(self) -> dict[str, float]:
        """Extra values for the current epoch's history row (``state.epoch_logs``); callbacks may add to it.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu").epoch_logs
            {}
        """
        return self.state.epoch_logs

    @property
    def should_stop(self) -> bool:
        """Set to ``True`` (e.g. in a callback) to end ``fit`` after the current epoch.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> t.should_stop = True; t.state.should_stop
            True
        """
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = bool(value)

    @property
    def seed(self) -> int | None:
        """The run's seed: the one given, or after ``fit`` starts the one drawn (or read from the checkpoint).

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", seed=3).seed
            3
        """
        return self.state.seed

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
            CPU, for any map-style dataset and any ``num_workers``: each sample's augmentation is seeded from
            ``(seed, epoch, position)``, see :class:`~trainkit.engine.seeding.Seeding`). The checkpoint holds
            the model, optimizer, scheduler, scaler, RNG states, the seed, the epoch's sampler permutation and
            position, the accumulation phase and the running sums of the epoch; the consumed batches are
            skipped without loading them.
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
        if self.loss_fn is None and self._custom_step("training_step") is None:
            raise ValueError(
                "`Trainer.fit` needs `loss_fn=` (e.g. `torch.nn.CrossEntropyLoss()`), or `training_step=` / a "
                "subclass overriding `training_step` that returns the loss"
            )
        check_not_empty(train_loader, "train_loader")
        if val_loader is not None:
            check_not_empty(val_loader, "val_loader")
        self.outputs.open(self._checkpoint_folder())  # the lock first: a second writer is refused before any write
        try:
            if resume is not None or not self._started:  # a second `fit` of this trainer continues its run
                start_run(self, resume)  # refuses to replace the run a folder holds, unless overwrite=True
                self._started = True
            if not self._epochs_left(epochs):
                return self.history
            self.state.should_stop = False
            self.train_loader = TrainLoader(
                train_loader,
                self.dist,
                seed=self.state.seed if self.state.seed is not None else 0,
                sample_seeding=self.seeding.sample_seeding,
                pin_memory=self.device.type == "cuda",
            )
            val_loader = prepare_eval_loader(val_loader, self.dist, device=self.device)
            self.has_validation = val_loader is not None
            bar = Progress(enabled=self.progress and self.dist.is_main, total_epochs=epochs)
            bar.quiet = not self.dist.is_main
            bar.start_fit(self.state.epoch)
            self.interrupt = GracefulInterrupt(enabled=not self.dist.enabled).install()
            try:
                train_epochs(self, epochs, val_loader, bar)
            except BaseException:
                self.train_loader.close()  # no worker process outlives a run that ended on an error
                raise
            self.callbacks.dispatch("on_fit_end", self)
            self.outputs.plot(self.history)
        finally:
            self.outputs.close()
        self.dist.barrier()  # no rank returns (and reads run_dir) before rank 0 has written its files
        return self.history

    def _epochs_left(self, epochs: int) -> bool:
        """Whether the run has epochs left to train; say so when it has none (``epochs`` is the total)."""
        done = self.state.epoch
        if epochs < done:
            raise ValueError(
                f"`epochs={epochs}` but this run has already trained {done} epochs; `epochs` is the total, not the "
                f"number to add: pass `epochs` > {done} to train more"
            )
        if epochs == done and not self.state.mid_epoch:
            if self.dist.is_main:
                print(f"the run has already trained {done} of {epochs} epochs; nothing to do (raise `epochs` to "
                      "train more)", flush=True)  # fmt: skip
            return False
        return True

    def _checkpoint_folder(self) -> Path | None:
        last = self.last_checkpoint_path()
        return last.parent if last is not None else None

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Loss and metrics over ``loader``: ``{"loss": ..., "<metric>": ...}``, exact across ranks.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu")
            >>> sorted(t.evaluate([(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]))
            ['loss']
        """
        return evaluate(
            self.model,
            self.dist.shard_eval_loader(loader, pin_memory=self.device.type == "cuda"),
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
            self.module,
            loader,
            device=self.device,
            precision=self.precision,
            batch_transform=self.batch_transform,
            main=output_key(self.loss_fn),
        )

    def predict_iter(
        self, loader: Iterable[Any], *, postprocess: Callable[[torch.Tensor], Any] | None = None
    ) -> Iterator[Any]:
        """The model's output for each batch of ``loader``, yielded on the CPU as it comes (memory stays flat).

        Example:
            >>> model = torch.nn.Linear(2, 3)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> [tuple(ids.shape) for ids in t.predict_iter([torch.randn(4, 2)] * 2, postprocess=lambda y: y.argmax(1))]
            [(4,), (4,)]
        """
        return predict_iter(
            self.module,
            loader,
            device=self.device,
            precision=self.precision,
            batch_transform=self.batch_transform,
            main=output_key(self.loss_fn),
            postprocess=postprocess,
        )

    def lr_find(
        self,
        loader: Iterable[Any],
        *,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_steps: int = 100,
        smooth: float = 0.98,
        diverge: float = 4.0,
    ) -> LRFinderResult:
        """Smith's learning-rate range test with this trainer's step; everything is left bitwise as it was.

        The learning rate grows exponentially from ``min_lr`` to ``max_lr`` over ``num_steps`` optimizer
        steps (each of ``grad_accum`` batches, with this trainer's precision and clipping) until the smoothed
        loss exceeds ``diverge`` times its minimum. Model, optimizer, scaler and RNG states are restored
        afterwards; see :func:`~trainkit.engine.lr_finder.lr_find` for the arguments.

        Example:
            >>> model = torch.nn.Linear(4, 1)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(), device="cpu")
            >>> result = t.lr_find([(torch.randn(16, 4), torch.randn(16, 1))], num_steps=20)
            >>> len(result.lrs) <= 20, t.optimizer.param_groups[0]["lr"]
            (True, 0.1)
        """
        return lr_find(self, loader, min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, smooth=smooth, diverge=diverge)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path | None:
        """Write a resumable checkpoint (main process only; other ranks return ``None``).

        Example:
            >>> import tempfile
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu")
            >>> t.save_checkpoint(tempfile.mkdtemp() + "/ckpt.pt").name
            'ckpt.pt'
        """
        check_savable(self, path, last_good(self))  # never a checkpoint with NaN/inf weights, nor after a NaN loss
        # Under DDP a mid-epoch checkpoint holds every rank's running sums: a collective, so every rank calls this.
        ranks = self.dist.gather(epoch_sums(self)) if self.dist.enabled and self.state.mid_epoch else None
        if not self.dist.is_main:
            return None
        state = checkpoint_state(self)
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
        return restore_checkpoint(self, path)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Send step-level scalars to TensorBoard (main process, when installed).

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu").log_scalars({"lr": 0.1}, 0)
        """
        self.outputs.log_scalars(values, step)

    def at_step_boundary(self, state: LoopState) -> bool:
        """Whether the last batch completed an optimizer step (no gradients are pending).

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", grad_accum=2)
            >>> t.at_step_boundary(LoopState(batch_idx=3)), t.at_step_boundary(LoopState(batch_idx=4))
            (False, True)
        """
        return state.batch_idx % self.grad_accum == 0

    def last_checkpoint_path(self) -> Path | None:
        """Where ``resume="last"`` looks: ``last.pt`` in the ``ModelCheckpoint`` folder; ``None`` without ``run_dir``.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> t = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), device="cpu", run_dir="runs/a")
            >>> t.last_checkpoint_path().as_posix()
            'runs/a/checkpoints/last.pt'
        """
        if self.run_dir is None:
            return None
        saver = next((cb for cb in self.callbacks.callbacks if isinstance(cb, ModelCheckpoint)), None)
        return (saver.folder(self) if saver is not None else self.run_dir / "checkpoints") / "last.pt"

    # -- internals -----------------------------------------------------------------------------

    def _custom_step(self, name: str) -> StepFn | None:
        """The overridden or passed step, or ``None`` for the default step (which also fixes batch dtypes)."""
        overridden = getattr(type(self), name) is not getattr(Trainer, name)
        given = self._training_step_fn if name == "training_step" else self._validation_step_fn
        return getattr(self, name) if overridden or given is not None else None

    def __repr__(self) -> str:
        return (
            f"Trainer(model={type(self.module).__name__}, device={str(self.device)!r}, "
            f"amp={self.precision.mode!r}, world_size={self.dist.world_size})"
        )
