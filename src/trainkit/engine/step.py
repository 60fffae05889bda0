"""The training step, top to bottom (:class:`TrainStep`), and the clear errors for the notes' classic failures.

A step function (``Trainer.training_step``, ``step_fn=``) takes a batch already on the device and returns
either the loss tensor or a mapping with ``"loss"`` and, optionally, ``"outputs"`` and ``"targets"`` (fed
to the metrics). The default is ``loss_fn(model(inputs), targets)`` for ``(inputs, targets)`` batches
(:func:`default_step`). :class:`TrainStep` wraps it in what every training step does: zero the
gradients, autocast, backward, clip, optimizer and scaler steps, scheduler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from trainkit.engine.batches import split_batch
from trainkit.engine.loop_state import LoopState, _finite_on_all_ranks, _finite_or_record, check_learning_rates
from trainkit.engine.precision import NO_CONTEXT, MixedPrecision
from trainkit.errors import TrainingError

__all__ = [
    "StepOutput",
    "TrainStep",
    "as_step_output",
    "default_step",
    "explain_errors",
    "explained",
    "first_line",
    "output_key",
]

StepFn = Callable[[Any], Any]


@dataclass
class StepOutput:
    """The normalised result of a step: the loss and what the metrics need."""

    loss: torch.Tensor | None
    outputs: Any = None
    targets: Any = None


def as_step_output(result: Any) -> StepOutput:
    """Accept a loss tensor, a ``StepOutput`` or a mapping with ``"loss"``/``"outputs"``/``"targets"``."""
    if isinstance(result, StepOutput):
        return result
    if isinstance(result, torch.Tensor):
        return StepOutput(loss=result)
    if type(result) is dict or isinstance(result, Mapping):  # a plain dict skips the slower abstract-class check
        return StepOutput(loss=result.get("loss"), outputs=result.get("outputs"), targets=result.get("targets"))
    if result is None:
        return StepOutput(loss=None)
    raise TypeError(
        f"a training/validation step returned {type(result).__name__}; return the loss tensor or a dict "
        "with 'loss' (and optionally 'outputs' and 'targets' for metrics)"
    )


def default_step(model: nn.Module, loss_fn: Callable[..., torch.Tensor] | None, *, need_loss: bool = True) -> StepFn:
    """The step ``loss_fn(model(inputs), targets)`` for ``(inputs, targets)`` batches, under the output rule.

    A model that returns a dict or a sequence (torchvision's ``{"out", "aux"}``, deep supervision) is read
    by the rule of :mod:`trainkit.utils.outputs` when ``loss_fn`` takes tensors (PyTorch's and trainkit's
    losses): the loss is :class:`~trainkit.losses.AuxLoss`'s, the main output's loss plus 0.5 times each
    auxiliary output's (unless ``loss_fn`` is an ``AuxLoss`` saying otherwise). A loss function of your
    own receives the outputs as the model returns them. The metrics get the outputs as they are too
    (trainkit's apply the rule themselves).

    Example:
        >>> step = default_step(torch.nn.Identity(), torch.nn.functional.mse_loss)
        >>> float(step((torch.ones(2), torch.zeros(2)))["loss"])
        1.0
        >>> step = default_step(lambda x: {"out": x, "aux": x}, torch.nn.functional.mse_loss)
        >>> float(step((torch.ones(2), torch.zeros(2)))["loss"])  # 1.0 + 0.5 * 1.0
        1.5
    """
    from trainkit.losses.aux import AuxLoss

    rule = (
        loss_fn if loss_fn is None or isinstance(loss_fn, AuxLoss) or not _takes_tensors(loss_fn) else AuxLoss(loss_fn)
    )

    def step(batch: Any) -> dict[str, Any]:
        inputs, targets = batch if type(batch) in (tuple, list) and len(batch) == 2 else split_batch(batch)
        outputs = model(inputs)
        if type(outputs) is torch.Tensor:  # the usual case, read as the rule reads a tensor
            loss = loss_fn(outputs, targets) if loss_fn is not None else None
        else:
            loss = rule(outputs, targets) if rule is not None else None
        if loss is None and need_loss:
            raise ValueError("the default training step needs `loss_fn`")
        return {"loss": loss, "outputs": outputs, "targets": targets}

    return step


def _takes_tensors(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` is one of PyTorch's or trainkit's losses, which take a tensor of logits."""
    module = getattr(type(loss_fn) if isinstance(loss_fn, nn.Module) else loss_fn, "__module__", None) or ""
    return module.startswith(("torch.nn", "trainkit.losses"))


def output_key(loss_fn: Any) -> str | None:
    """The main output's name given by an :class:`~trainkit.losses.AuxLoss` (``main=``), else ``None``.

    Example:
        >>> from trainkit.losses import AuxLoss
        >>> output_key(AuxLoss(torch.nn.CrossEntropyLoss(), main="seg")), output_key(torch.nn.CrossEntropyLoss())
        ('seg', None)
    """
    key = getattr(loss_fn, "main", None)
    return key if isinstance(key, str) else None


class TrainStep:
    """One training step for one batch: called by ``train_one_epoch`` for every batch, in order.

    With ``grad_accum=k`` the optimizer steps every k batches (or at the end of the epoch); each loss is
    divided by the size of its accumulation group, the last group's own size when ``num_batches`` says the
    epoch ends early. Under DDP the gradient all-reduce runs only on the micro-step that steps. The body of
    :meth:`__call__` is the whole step, top to bottom.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> step = TrainStep(model, opt, default_step(model, torch.nn.CrossEntropyLoss()), grad_accum=2)
        >>> from trainkit.engine.loop_state import LoopState
        >>> state = LoopState()
        >>> for _ in range(2):
        ...     out, loss = step((torch.randn(4, 2), torch.tensor([0, 1, 0, 1])), 4, state)
        ...     state.batch_idx += 1
        >>> state.global_step, loss.ndim
        (1, 0)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step_fn: StepFn,
        *,
        precision: MixedPrecision | None = None,
        scheduler: Any = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        on_nan: str = "raise",
        num_batches: int | None = None,
        check_now: bool = True,
    ):
        self.optimizer, self.step_fn, self.scheduler = optimizer, step_fn, scheduler
        self.precision = precision or MixedPrecision(False, torch.device("cpu"))
        self.grad_accum, self.clip_grad_norm, self.on_nan = grad_accum, clip_grad_norm, on_nan
        self.num_batches, self.check_now = num_batches, check_now
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.no_sync = getattr(model, "no_sync", None)  # looked up once: a missing nn.Module attribute is slow
        self.all_ranks_skip = on_nan == "skip" and _is_ddp(model)  # or DDP's all-reduce hangs on the others
        # A skipped batch must leave the buffers as they were: its forward already updated BatchNorm's running
        # statistics with NaN. Their values before each forward are kept (with on_nan="skip" only).
        self.buffers = list(model.buffers()) if on_nan == "skip" else []
        self.saved_buffers = [b.detach().clone() for b in self.buffers]
        self.autocast = self.precision.autocast()  # entered every step (sequentially: one object serves all)
        self.group_has_grad = False

    def __call__(self, batch: Any, batch_size: int, state: LoopState) -> tuple[StepOutput, torch.Tensor | None]:
        """Train on batch ``state.batch_idx``: the step's output, and its loss (``None`` when skipped as non-finite).

        Counts ``state.global_step`` when the accumulation group ends; the caller counts ``batch_idx``.
        """
        i = state.batch_idx
        group_start = i - i % self.grad_accum
        group_len = (
            self.grad_accum if self.num_batches is None else min(self.grad_accum, self.num_batches - group_start)
        )
        steps_now = i + 1 - group_start >= group_len
        if i == group_start:
            self.optimizer.zero_grad(set_to_none=True)
            self.group_has_grad = False
        if self.buffers:
            torch._foreach_copy_(self.saved_buffers, self.buffers)
        try:
            with _no_sync_unless(self.no_sync, steps_now):  # forward and backward of a micro-step
                with self.autocast:
                    out = as_step_output(self.step_fn(batch))
                loss = _require_loss(out)
                finite = _finite_or_record(loss, state, self.check_now, self.on_nan)
                if self.all_ranks_skip:
                    finite = _finite_on_all_ranks(finite, loss.device)
                if not finite and self.buffers:  # skipped: put back the statistics this forward changed
                    with torch.no_grad():
                        torch._foreach_copy_(self.buffers, self.saved_buffers)
                if finite:
                    self.precision.backward(loss / group_len if group_len > 1 else loss)
                    self.group_has_grad = True
            if steps_now:
                if self.group_has_grad:  # every micro-batch of the group may have been skipped (on_nan="skip")
                    if self.clip_grad_norm is not None:
                        self.precision.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
                    stepped = self.precision.step(self.optimizer)  # False when fp16 found inf/NaN gradients
                    self.precision.update()
                    if stepped and self.scheduler is not None:
                        self.scheduler.step()
                        check_learning_rates(self.optimizer, f"after optimizer step {state.global_step + 1}")
                state.global_step += 1
        except (RuntimeError, IndexError, ValueError) as err:  # `explain_errors`, at no cost per step
            better = explained(err, batch_size=batch_size, where=f"training step {state.global_step} (batch {i})")
            if better is None:
                raise
            raise better from err
        return out, (loss if finite else None)


class explain_errors:
    """Re-raise the notes' classic failures as :class:`TrainingError` with the fix in the message.

    A plain class rather than ``@contextlib.contextmanager``, which costs a generator a step; the
    training loop catches with ``try``/``except`` and :func:`explained` instead, which costs nothing
    until something is raised.

    Example:
        >>> with explain_errors(batch_size=8, where="training step 0"):
        ...     torch.zeros(2, 3) @ torch.zeros(2, 3)
        Traceback (most recent call last):
        ...
        trainkit.errors.TrainingError: training step 0 failed: the inputs' shape does not fit the model: ...
    """

    __slots__ = ("batch_size", "where")

    def __init__(self, *, batch_size: int | None, where: str) -> None:
        self.batch_size, self.where = batch_size, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: Any) -> Literal[False]:
        better = explained(err, batch_size=self.batch_size, where=self.where) if err is not None else None
        if better is not None:
            raise better from err
        return False


def explained(err: BaseException, *, batch_size: int | None, where: str) -> TrainingError | None:
    """The :class:`TrainingError` that explains ``err`` (raised during ``where``), or ``None`` to re-raise it as is.

    Example:
        >>> print(explained(RuntimeError("Target 7 is out of bounds."), batch_size=4, where="training step 3"))
        training step 3 failed: a target class id is >= the number of output channels; ... Original error: Target 7 ...
    """
    if isinstance(err, torch.OutOfMemoryError):
        size = f"batch size {batch_size}" if batch_size else "this batch"
        return TrainingError(
            f"out of memory during {where} with {size}: lower `batch_size` (e.g. to {max(1, (batch_size or 2) // 2)}) "
            "and keep the effective batch with `grad_accum=`, turn on `amp='auto'`, use smaller inputs (`size=`) or "
            f"a smaller model. Original error: {first_line(err)}"
        )
    if isinstance(err, (RuntimeError, IndexError, ValueError)):  # torch raises ValueError for some shape mismatches
        hint = _hint_for(str(err))
        if hint is not None:
            return TrainingError(f"{where} failed: {hint}. Original error: {first_line(err)}")
    return None


def _hint_for(message: str) -> str | None:
    text = message.lower()
    if "expected target dtype to be long" in text or "expected scalar type long" in text:
        return (
            "the loss needs int64 class-id targets (CrossEntropyLoss/NLLLoss) but got another dtype; convert with "
            "`target.long()` or return int64 masks from the dataset (`trainkit.data.collate` does this)"
        )
    if ("must have the same dtype" in text or "should be the same" in text or "expected scalar type" in text) and (
        "double" in text or "half" in text or "bfloat16" in text or "float" in text
    ):
        return (
            "the inputs and the model's weights have different dtypes (the notes' 'expected scalar type Double but "
            "found Float': NumPy arrays are float64); convert inputs with `.float()` or use `trainkit.data.collate`"
        )
    if (
        "same device" in text
        or "expected device" in text
        or "is not on the expected device" in text
        or ("input type" in text and "weight type" in text)
    ):
        return (
            "tensors are on two devices; let the Trainer move batches (`device=`), create extra tensors with "
            "`device=inputs.device`, and move the loss's own tensors (e.g. class `weight=`) with `loss_fn.to(device)`"
        )
    if ("out of bounds" in text and "target" in text) or "device-side assert" in text:
        return (
            "a target class id is >= the number of output channels; check `num_classes`/`out_channels` against the "
            "mask values (run `trainkit check`), and map void pixels to `ignore_index`"
        )
    if any(s in text for s in _TARGET_SHAPE_ERRORS):
        return (
            "the targets' shape does not fit the model's outputs in `loss_fn`: CrossEntropyLoss takes [N, C, H, W] "
            "logits with [N, H, W] int64 class ids at the same H, W (drop a mask channel with `mask.squeeze(1)`; "
            "resize masks together with images in a joint transform)"
        )
    if "expected more than 1 value per channel when training" in text:
        return (
            "a batch of 1 sample reached a BatchNorm layer in training mode, which needs at least 2 values per "
            "channel: drop the last, incomplete batch (`DataLoader(..., drop_last=True)`) or use a larger batch"
        )
    if any(s in text for s in _INPUT_SHAPE_ERRORS):
        return (
            "the inputs' shape does not fit the model: compare the batch's shape with the first layer's "
            "`in_features`/`in_channels` (e.g. gray images for an RGB model: the dataset's `channels=`)"
        )
    return None


# Substrings of PyTorch's messages for targets that do not match the outputs, and inputs that do not fit the model.
_TARGET_SHAPE_ERRORS = (
    "size mismatch (got input",
    "only batches of spatial targets supported",
    "expected target size",
    "to match target batch_size",
)
_INPUT_SHAPE_ERRORS = ("shapes cannot be multiplied", "channels, but got")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type name), for messages that quote it."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _require_loss(out: StepOutput) -> torch.Tensor:
    if not isinstance(out.loss, torch.Tensor):
        raise TypeError(
            f"the training step returned loss={type(out.loss).__name__}; it must return a scalar tensor "
            "(or a dict with 'loss'). A model that returns a dict of losses needs a `training_step` that sums them"
        )
    if out.loss.numel() != 1:
        raise ValueError(
            f"the loss has shape {tuple(out.loss.shape)}; it must be a scalar. Use reduction='mean' in the loss "
            "or reduce it in the step"
        )
    return out.loss


def _no_sync_unless(
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None, stepping: bool
) -> contextlib.AbstractContextManager[Any]:
    """DDP: skip the gradient all-reduce on accumulation micro-steps (``no_sync`` is DDP's ``model.no_sync``)."""
    if stepping or no_sync is None:
        return NO_CONTEXT
    return no_sync()


def _is_ddp(model: nn.Module) -> bool:
    inner = getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model
    return isinstance(inner, nn.parallel.DistributedDataParallel)
