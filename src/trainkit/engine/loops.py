"""The functional core: ``train_one_epoch``, ``evaluate`` and ``predict`` / ``predict_iter``.

``train_one_epoch`` in pseudocode (the step itself is :class:`~trainkit.engine.step.TrainStep`)::

    for batch_size, batch in device_batches(loader, device):   # dtype contract, copy, batch_transform
        out, loss = step(batch, batch_size, state)             # zero_grad, autocast, backward, clip, step
        if loss is not None:                                   # None: skipped as non-finite
            state.add_loss(loss, batch_size); metrics.update(out.outputs, out.targets)
        state.batch_idx += 1; on_batch_end(state, out); progress bar

Losses and metric counts stay on the device; they are read when the progress bar refreshes
(at most every 0.1 s) and at the end of the epoch, never once per step.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from trainkit.engine.batches import BatchFixer, device_batches, split_batch
from trainkit.engine.loop_state import LoopState, _running_values, loss_totals, mean_of, raise_if_nonfinite
from trainkit.engine.precision import NO_CONTEXT, MixedPrecision
from trainkit.engine.progress import Progress
from trainkit.engine.step import (
    StepFn,
    StepOutput,
    TrainStep,
    as_step_output,
    default_step,
    explain_errors,
    output_key,
)
from trainkit.utils.device import move_to_device, resolve_device
from trainkit.utils.outputs import main_output

__all__ = ["LoopState", "evaluate", "predict", "predict_iter", "train_one_epoch"]


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
    precision: MixedPrecision | None = None,
    scheduler: Any = None,
    grad_accum: int = 1,
    clip_grad_norm: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    step_fn: StepFn | None = None,
    batch_transform: Callable[[Any], Any] | None = None,
    on_nan: str = "raise",
    state: LoopState | None = None,
    progress: Progress | bool = False,
    on_batch_end: Callable[[LoopState, StepOutput], None] | None = None,
    num_batches: int | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` and return ``{"loss": ..., "<metric>": ...}``.

    Args:
        model: any ``nn.Module``; in train mode during the pass, then back in the mode it had before.
        loader: yields batches, ``(inputs, targets)`` for the default step.
        optimizer: steps every ``grad_accum`` batches.
        loss_fn: ``loss_fn(outputs, targets)``; not needed with ``step_fn``.
        device: where batches go (default: the model's device), checked by
            :func:`~trainkit.utils.resolve_device`.
        precision: a :class:`MixedPrecision` (default: fp32).
        scheduler: stepped after every optimizer step that was not skipped (per-step schedules;
            per-epoch schedules are the caller's, as in :class:`Trainer`).
        grad_accum: batches per optimizer step; each loss is divided by the group's size.
        clip_grad_norm: clip the global gradient norm to this value (after unscaling).
        metrics: ``{name: metric}``, each with ``update(outputs, targets)``/``compute()``/``reset()``.
            Reset here unless ``state`` resumes mid-epoch.
        step_fn: ``step_fn(batch) -> loss | {"loss", "outputs", "targets"}`` replacing the default
            ``loss_fn(model(inputs), targets)``.
        batch_transform: applied to each batch on the device (e.g. uint8 → normalised float).
        on_nan: ``"raise"`` (default) or ``"skip"`` the step when the loss is NaN/inf. Raising is checked
            immediately on the CPU and at each progress refresh on accelerators (no per-step sync);
            ``"skip"`` checks every step.
        state: a :class:`LoopState` to continue (mid-epoch resume) and update.
        progress: ``True`` or a :class:`Progress` for a batch bar.
        on_batch_end: called after every batch with the state and the step's output.
        num_batches: batches in this pass, when ``len(loader)`` does not say (used to size the last
            accumulation group).

    Returns:
        The epoch's mean loss (weighted by batch size) and the computed metrics, as floats.

    Raises:
        ValueError: ``device`` names a device PyTorch does not know or that is not present (``"cuda"``
            without a GPU).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> logs = train_one_epoch(model, data, opt, torch.nn.CrossEntropyLoss())
        >>> sorted(logs)
        ['loss']
    """
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"`grad_accum` must be a positive integer, got {grad_accum!r}")
    if on_nan not in ("raise", "skip"):
        raise ValueError(f"`on_nan` must be 'raise' or 'skip', got {on_nan!r}")
    if step_fn is None and loss_fn is None:
        raise ValueError("`train_one_epoch` needs `loss_fn` (or a `step_fn` that returns the loss)")
    device = resolve_device(device) if device is not None else _model_device(model)
    precision = precision or MixedPrecision(False, device)
    bar = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    state = state or LoopState()
    metrics = dict(metrics or {})
    if state.batch_idx == 0:
        state.begin_epoch(state.epoch)
        for metric in metrics.values():
            metric.reset()
    fixer = BatchFixer(model, loss_fn) if step_fn is None else None
    key = output_key(loss_fn)
    total = num_batches if num_batches is not None else _len_or_none(loader)
    step = TrainStep(
        model, optimizer, step_fn or default_step(model, loss_fn),
        precision=precision, scheduler=scheduler, grad_accum=grad_accum, clip_grad_norm=clip_grad_norm,
        on_nan=on_nan, num_batches=total, check_now=device.type == "cpu" or on_nan == "skip",
    )  # fmt: skip
    read_values = functools.partial(_running_values, state)
    own_metrics = _all_trainkit(metrics)

    was_training = _is_training(model)
    model.train()
    bar.start_batches(total, desc=f"train {state.epoch + 1}", initial=state.batch_idx)
    try:
        for n, batch in device_batches(loader, device, fixer=fixer, transform=batch_transform):
            out, loss = step(batch, n, state)
            if loss is not None:
                state.add_loss(loss, n)
                state.metrics_updated |= _update_metrics(metrics, out, own_metrics, key)
            state.batch_idx += 1
            if on_batch_end is not None:
                on_batch_end(state, out)
            bar.advance(read_values)
    finally:
        bar.end_batches()
        model.train(was_training)
    if state.batch_idx == 0:
        raise ValueError(
            f"the training loader yielded no batches in epoch {state.epoch + 1}; an iterator or generator is used up "
            "after one pass: pass a `DataLoader` or a list, and check the dataset is not empty"
        )
    raise_if_nonfinite(state)
    # A step that returns only the loss (e.g. a detection model's loss dict) leaves the metrics unfed.
    return {"loss": state.mean_loss(), **(compute_metrics(metrics) if state.metrics_updated else {})}


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[..., torch.Tensor] | None = None,
    metrics: Mapping[str, Any] | None = None,
    *,
    device: torch.device | str | None = None,
    precision: MixedPrecision | None = None,
    step_fn: StepFn | None = None,
    batch_transform: Callable[[Any], Any] | None = None,
    progress: Progress | bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` in eval mode under ``torch.inference_mode()``.

    The model's previous train/eval mode is restored afterwards. The loss is the mean over
    samples (batch means weighted by batch size); metrics are exact over the whole loader.

    Args:
        model: the model; ``model.eval()`` during the pass.
        loader: yields batches like the training loader.
        loss_fn: optional; without it and without ``step_fn`` no ``"loss"`` is reported.
        metrics: ``{name: metric}``, reset before the pass.
        device: where batches go (default: the model's device), checked by
            :func:`~trainkit.utils.resolve_device`.
        precision: autocast for the forward pass (default fp32).
        step_fn: ``step_fn(batch) -> loss | {"loss", "outputs", "targets"}``.
        batch_transform: applied to each batch on the device.
        progress: ``True`` or a :class:`Progress` for a batch bar.
        reduce: sums a tensor across processes (set by the Trainer under DDP).

    Returns:
        ``{"loss": ..., "<metric>": ...}`` as floats.

    Raises:
        ValueError: ``device`` names a device PyTorch does not know or that is not present.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
        >>> list(evaluate(model, data, torch.nn.CrossEntropyLoss()))
        ['loss']
    """
    device = resolve_device(device) if device is not None else _model_device(model)
    precision = precision or MixedPrecision(False, device)
    bar = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    metrics = dict(metrics or {})
    for metric in metrics.values():
        metric.reset()
    own_metrics = _all_trainkit(metrics)
    step = step_fn or default_step(model, loss_fn, need_loss=False)
    fixer = BatchFixer(model, loss_fn) if step_fn is None else None
    key = output_key(loss_fn)
    state = LoopState()
    was_training = _is_training(model)
    model.eval()
    bar.start_batches(_len_or_none(loader), desc="eval")
    try:
        with torch.inference_mode():
            batches = device_batches(loader, device, fixer=fixer, transform=batch_transform)
            for i, (n, batch) in enumerate(batches):
                with explain_errors(batch_size=n, where=f"evaluation (batch {i})"), precision.autocast():
                    out = as_step_output(step(batch))
                if out.loss is not None:
                    state.add_loss(out.loss, n)
                    state.count_nonfinite(out.loss, i)
                state.metrics_updated |= _update_metrics(metrics, out, own_metrics, key)
                bar.advance(lambda: {"loss": state.mean_loss()})
    finally:
        bar.end_batches()
        model.train(was_training)
    results: dict[str, float] = {}
    has_loss, fed = state.loss_sum is not None, state.metrics_updated
    bad: Any = state.nonfinite_count if state.nonfinite_count is not None else 0
    if has_loss or reduce is not None:
        total = loss_totals(state, device, reduce, has_loss, fed, bad)  # one collective for all of them
        if reduce is not None:
            has_loss, fed = float(total[2]) > 0, float(total[3]) > 0
        bad = total[4]
        if has_loss:
            results["loss"] = mean_of(total)
    _warn_nonfinite(int(bad), state.nonfinite_at)
    if fed or (reduce is None and _distributed()):  # every rank joins the metrics' all-reduce, fed or not
        results.update(compute_metrics(metrics))
    return results


def predict(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    precision: MixedPrecision | None = None,
    batch_transform: Callable[[Any], Any] | None = None,
    step_fn: StepFn | None = None,
    main: str | None = None,
    postprocess: Callable[[torch.Tensor], Any] | None = None,
) -> list[Any]:
    """Run ``model`` over ``loader`` in eval mode and return the batched outputs, moved to the CPU.

    ``list(predict_iter(...))``, for sets whose outputs fit in memory; :func:`predict_iter` streams them.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> outs = predict(model, [torch.randn(3, 4), torch.randn(2, 4)])
        >>> [o.shape[0] for o in outs]
        [3, 2]
    """
    outputs = predict_iter(
        model, loader, device=device, precision=precision, batch_transform=batch_transform, step_fn=step_fn,
        main=main, postprocess=postprocess,
    )  # fmt: skip
    return list(outputs)


def predict_iter(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    precision: MixedPrecision | None = None,
    batch_transform: Callable[[Any], Any] | None = None,
    step_fn: StepFn | None = None,
    main: str | None = None,
    postprocess: Callable[[torch.Tensor], Any] | None = None,
) -> Iterator[Any]:
    """Yield ``model``'s output for each batch of ``loader`` as it is computed, moved to the CPU.

    Nothing is kept between batches: memory stays flat over a loader of any length. A batch may be the
    inputs alone, ``(inputs, targets)`` (``(images, paths)`` of :class:`~trainkit.data.ImageDataset`) or a
    dict with an image/input key. ``device`` defaults to the model's. A dict or tuple output gives its main
    output (:mod:`trainkit.utils.outputs`; ``main`` names a dict's entry); ``postprocess`` then runs on the
    device, e.g. :func:`trainkit.inference.to_class_ids` (an int64 mask crosses instead of ``K`` float maps).
    The model is in eval mode until the generator ends or is closed; each batch runs under
    ``torch.inference_mode()``, the caller's code between batches does not.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> outputs = predict_iter(model, [torch.randn(5, 4)], postprocess=lambda logits: logits.argmax(1))
        >>> [tuple(ids.shape) for ids in outputs]
        [(5,)]
    """
    device = resolve_device(device) if device is not None else _model_device(model)
    precision = precision or MixedPrecision(False, device)
    was_training = _is_training(model)
    model.eval()
    try:
        batches = device_batches(loader, device, transform=batch_transform)
        for i in itertools.count():
            with torch.inference_mode():  # entered per batch: the caller's code between batches runs as usual
                item = next(batches, None)
                if item is None:
                    return
                n, batch = item
                with explain_errors(batch_size=n, where=f"prediction (batch {i})"), precision.autocast():
                    out = step_fn(batch) if step_fn is not None else model(_inputs_of(batch))
                if type(out) is not torch.Tensor and _has_main_output(out):
                    out = main_output(out, main)
                if postprocess is not None:
                    out = postprocess(out)
                out = move_to_device(out, torch.device("cpu"), non_blocking=False)
                del item, batch
            yield out
            del out  # the caller holds the only reference to this batch's output
    finally:
        model.train(was_training)


def _warn_nonfinite(count: int, first: torch.Tensor | None) -> None:
    """Warn (never raise) when ``count`` evaluation losses were NaN/inf, naming the first bad batch of this rank."""
    if count == 0:
        return
    where = f"the first at batch {int(first)}" if first is not None and int(first) < 2**62 else "on another rank"
    warnings.warn(
        f"evaluation: {count} batch(es) had a NaN or infinite loss ({where}), so the mean loss is not finite "
        "and is never chosen as the best; check the model for NaN weights (a learning rate too high) and the "
        "validation data for NaN values",
        UserWarning,
        stacklevel=3,
    )


def compute_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{name: float(metric.compute())}``; metrics returning a dict contribute ``name/key`` entries.

    Example:
        >>> compute_metrics({})
        {}
    """
    results: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        if isinstance(value, Mapping):
            results.update({f"{name}/{k}": _to_float(v) for k, v in value.items()})
        else:
            results[name] = _to_float(value)
    return results


def _update_metrics(metrics: Mapping[str, Any], out: StepOutput, own: bool, key: str | None = None) -> bool:
    """Feed the step's outputs and targets to the metrics; ``False`` when the step gave none.

    ``own``: every metric is one of trainkit's, which hold no parameters, so on detached tensors they
    record nothing and the update needs no ``torch.no_grad()``, and read a model's dict or tuple output
    by the output rule (its main output, ``key`` naming it); other metrics get the outputs as they are.
    """
    if not metrics or out.outputs is None or out.targets is None:
        return False
    outputs, targets = out.outputs, out.targets
    if own and type(outputs) is not torch.Tensor and _has_main_output(outputs):
        outputs = main_output(outputs, key)  # trainkit's metrics read a model's dict/tuple output by the rule
    grad_mode: contextlib.AbstractContextManager[Any] = torch.no_grad()
    if own and type(outputs) is torch.Tensor and type(targets) is torch.Tensor:
        grad_mode = NO_CONTEXT
        targets = targets.detach() if targets.requires_grad else targets
    if isinstance(outputs, torch.Tensor) and outputs.requires_grad:
        outputs = outputs.detach()
    with grad_mode:
        for metric in metrics.values():
            metric.update(outputs, targets)
    return True


def _has_main_output(outputs: Any) -> bool:
    """Whether the output rule applies: a dict, or a tuple/list of tensors (not a detection model's list of dicts)."""
    if isinstance(outputs, Mapping):
        return True
    return isinstance(outputs, (tuple, list)) and bool(outputs) and isinstance(outputs[0], torch.Tensor)


def _all_trainkit(metrics: Mapping[str, Any]) -> bool:
    """Whether every metric is an instance of one of trainkit's own classes (not a subclass of the user's)."""
    return all(type(metric).__module__.startswith("trainkit.metrics.") for metric in metrics.values())


def _inputs_of(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0]
    return split_batch(batch)[0]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _model_device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _len_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item()) if value.numel() > 1 else float(value.item())
    return float(value)


def _is_training(model: nn.Module) -> bool:
    """The train/eval mode of the user's module (a DDP wrapper keeps a flag of its own, which ``m.eval()`` leaves)."""
    inner = getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model
    return inner.module.training if isinstance(inner, nn.parallel.DistributedDataParallel) else model.training
