"""Batches from the loader to the device: the dtype contract for a user's collate, the copy, the prefetch.

:func:`device_batches` yields ``(batch_size, batch_on_device)``: :class:`BatchFixer` applies the batch dtype
contract (``trainkit.utils.dtypes``, the rules ``trainkit.data.collate`` stacks with) on the CPU, the batch
is copied with the one walker of ``trainkit.utils.batch``, and the on-device ``batch_transform`` runs. On
CUDA the copy (and transform) of batch ``i + 1`` is issued on a side stream before batch ``i`` is handed
to the step, so the copy runs while the GPU computes; the compute stream waits for it with an event,
never with a host synchronisation. Elsewhere batches are moved one at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from trainkit.errors import TrainingError
from trainkit.utils.batch import (
    INPUT,
    INPUT_KEYS,
    TARGET,
    TARGET_KEYS,
    batch_size_of,
    key_for,
    map_tensors,
    move_to_device,
)
from trainkit.utils.dtypes import to_batch_dtype

__all__ = ["BatchFixer", "device_batches", "is_class_index_loss", "split_batch"]

_END = object()

OVERLAP = True
"""Copy the next batch on a side stream on CUDA (``benchmarks/gpu.py`` turns it off to measure the gain)."""


def device_batches(
    loader: Iterable[Any],
    device: torch.device,
    *,
    fixer: Callable[[Any], Any] | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(batch_size, batch_on_device)`` for every batch of ``loader``.

    ``fixer`` runs on the CPU batch (dtype fixes cost no device sync there); ``transform`` runs on
    the device batch.

    Example:
        >>> [n for n, _ in device_batches([torch.zeros(2, 3), torch.zeros(1, 3)], torch.device("cpu"))]
        [2, 1]
    """
    if device.type != "cuda" or not OVERLAP:
        for batch in loader:
            n, moved = _to_device(batch, device, fixer, transform)
            yield n, moved
        return
    yield from _prefetched(loader, device, fixer, transform)


def _to_device(
    batch: Any, device: torch.device, fixer: Callable[[Any], Any] | None, transform: Callable[[Any], Any] | None
) -> tuple[int, Any]:
    n = batch_size_of(batch)
    if fixer is not None:
        batch = fixer(batch)
    batch = move_to_device(batch, device)
    return n, (transform(batch) if transform is not None else batch)


def _prefetched(
    loader: Iterable[Any],
    device: torch.device,
    fixer: Callable[[Any], Any] | None,
    transform: Callable[[Any], Any] | None,
) -> Iterator[tuple[int, Any]]:
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)
    iterator = iter(loader)

    def load(batch: Any) -> tuple[int, Any]:
        side.wait_stream(main)  # do not overwrite memory the main stream may still read
        with torch.cuda.stream(side):
            return _to_device(batch, device, fixer, transform)

    upcoming = next(iterator, _END)
    if upcoming is _END:
        return
    pending = load(upcoming)
    while True:
        main.wait_stream(side)
        n, batch = pending
        _record(batch, main)
        upcoming = next(iterator, _END)
        if upcoming is not _END:
            pending = load(upcoming)  # issued before this batch's step: the copy overlaps the compute
        yield n, batch
        if upcoming is _END:
            return


def _record(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that tensors made on the side stream are used on ``stream``."""

    def record(tensor: torch.Tensor) -> None:
        if tensor.is_cuda:
            tensor.record_stream(stream)

    map_tensors(batch, record)


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
