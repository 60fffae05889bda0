"""What one step computes, and the clear errors for the notes' classic failures.

A step function takes a batch already on the device and returns either the loss tensor or a
mapping with ``"loss"`` and, optionally, ``"outputs"`` and ``"targets"`` (fed to the metrics).
The default step is ``loss_fn(model(inputs), targets)`` for ``(inputs, targets)`` batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from trainkit.errors import TrainingError
from trainkit.utils.batch import INPUT, INPUT_KEYS, TARGET, TARGET_KEYS, key_for
from trainkit.utils.dtypes import to_batch_dtype

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


def split_batch(batch: Any) -> tuple[Any, Any]:
    """Split a batch into ``(inputs, targets)``: a 2-sequence, or a dict with keys of the batch roles table.

    The keys are those of :data:`trainkit.utils.batch.INPUT_KEYS` and ``TARGET_KEYS`` (the first present
    of each), the table ``collate`` reads too.

    Example:
        >>> split_batch({"name": ["a"], "image": torch.zeros(1, 2), "mask": torch.ones(1, dtype=torch.long)})
        (tensor([[0., 0.]]), tensor([1]))
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        input_key, target_key = key_for(batch, INPUT), key_for(batch, TARGET)
        if input_key is not None and target_key is not None:
            return batch[input_key], batch[target_key]
        raise TypeError(
            f"a dict batch needs an input key ({', '.join(INPUT_KEYS)}) and a target key "
            f"({', '.join(TARGET_KEYS)}); got keys {sorted(batch)}. Return (inputs, targets) from the dataset, "
            "or override `Trainer.training_step`"
        )
    kind = f"a {len(batch)}-sequence" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise TypeError(
        f"the default step expects (inputs, targets) batches, got {kind}; return (inputs, targets) from the "
        "dataset or override `Trainer.training_step` / pass `training_step=`"
    )


def is_class_index_loss(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` expects integer class ids as targets (CrossEntropy, NLL, trainkit's multiclass losses)."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return True
    return bool(getattr(loss_fn, "expects_class_indices", False))


class BatchFixer:
    """Apply the batch dtype contract to an ``(inputs, targets)`` batch of a collate of the user's; warn once a kind.

    The rules are :func:`trainkit.utils.dtypes.to_batch_dtype`'s, the function ``trainkit.data.collate``
    stacks with; this class only says what it knows about the run and explains:

    * floating inputs (float64 from NumPy) take the model's dtype (``input_dtype=``; the notes' ``expected
      scalar type Double but found Float``);
    * for CrossEntropy-like losses the targets are class ids (``class_ids=True``): integer, bool and
      whole-number float targets become int64 (``expected scalar type Long``), fractional ones raise, and
      ``[N, C, ...]`` float targets are left alone as the class probabilities these losses also take.

    Runs on the CPU before the host-to-device copy, so it costs no device synchronisation.

    Example:
        >>> import warnings
        >>> fixer = BatchFixer(torch.nn.Linear(2, 3), torch.nn.CrossEntropyLoss())
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     inputs, targets = fixer((torch.zeros(1, 2, dtype=torch.float64), torch.tensor([2.0])))
        >>> inputs.dtype, targets, [str(w.message).split(" but ")[0] for w in caught]
        (torch.float32, tensor([2]), ['inputs are float64', 'targets are float32'])
    """

    def __init__(self, model: nn.Module, loss_fn: Any):
        param = next(iter(model.parameters()), None)
        self.model_dtype = param.dtype if param is not None and param.is_floating_point() else None
        self.class_targets = is_class_index_loss(loss_fn)
        self.loss_name = type(loss_fn).__name__
        self._warned: set[str] = set()

    def __call__(self, batch: Any) -> Any:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            return batch
        inputs, targets = batch
        # Nothing to fix, the common case checked every step: inputs of the model's dtype, int64 targets
        # (anything not a tensor is left alone). Everything else takes the careful path below.
        tensor = torch.Tensor
        if (not isinstance(inputs, tensor) or inputs.dtype == self.model_dtype) and (
            not self.class_targets or not isinstance(targets, tensor) or targets.dtype == torch.int64
        ):
            return batch
        inputs = self._fix_inputs(inputs)
        targets = self._fix_targets(targets, inputs)
        return (inputs, targets) if isinstance(batch, tuple) else [inputs, targets]

    def _fix_inputs(self, inputs: Any) -> Any:
        dtype = self.model_dtype
        if dtype is None or not isinstance(inputs, torch.Tensor):
            return inputs
        fixed = to_batch_dtype(inputs, INPUT, input_dtype=dtype)
        if fixed is not inputs:
            self._warn_once(
                "inputs",
                f"inputs are {_dtype_name(inputs.dtype)} but the model's weights are {_dtype_name(dtype)}; converting "
                f"inputs to {_dtype_name(dtype)} (NumPy arrays default to float64: convert with `.float()` or use "
                "`trainkit.data.collate` to stop this warning)",
            )
        return fixed

    def _fix_targets(self, targets: Any, inputs: Any) -> Any:
        if not self.class_targets or not isinstance(targets, torch.Tensor) or targets.dtype == torch.int64:
            return targets
        if targets.is_floating_point() and _are_class_probabilities(targets, inputs):
            return targets  # CrossEntropyLoss also takes [N, C(, H, W)] probabilities (one-hot, label smoothing, mixup)
        fixed = to_batch_dtype(targets, TARGET, class_ids=True)
        if fixed.is_floating_point():
            raise TrainingError(
                f"targets are {_dtype_name(targets.dtype)} with non-integer values, but {self.loss_name} needs "
                "int64 class ids of shape [N, H, W] (or [N]); pass class ids (`target.long()`), or use a loss for "
                "soft targets"
            )
        if fixed is not targets:
            self._warn_once(
                "targets",
                f"targets are {_dtype_name(targets.dtype)} but {self.loss_name} needs int64 class ids; converting "
                "them with `.long()` (the notes' 'expected scalar type Long' error). Return int64 targets from the "
                "dataset, or use `trainkit.data.collate`, to stop this warning",
            )
        return fixed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)


def _are_class_probabilities(targets: torch.Tensor, inputs: Any) -> bool:
    """Class ids drop the inputs' channel dim ([N] for [N, F], [N, H, W] for [N, C, H, W]); probabilities keep it."""
    return (
        isinstance(inputs, torch.Tensor) and targets.ndim == inputs.ndim and targets.ndim >= 2 and targets.shape[1] > 1
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
