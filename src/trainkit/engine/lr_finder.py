"""The learning-rate range test (Smith, 2017; as in fastai's and Lightning's ``lr_find``): ``Trainer.lr_find``.

In pseudocode::

    keep model weights, buffers and gradients, optimizer state, scaler, train/eval modes and every RNG state
    for step j in 0 .. num_steps - 1:
        lr = min_lr * (max_lr / min_lr) ** (j / (num_steps - 1))       # exponential, set in every param group
        loss = the trainer's own TrainStep over grad_accum batches     # precision, accumulation, clipping
        smoothed = debiased exponential moving average of the loss     # `smooth`
        stop when smoothed > diverge * its minimum so far, or the loss is NaN/inf
    put everything back, bitwise; suggest the lr halfway down the longest descent (fastai's "valley")

The loader is read from its start, again and again if it has fewer batches than the test needs. The
trainer's scheduler is not stepped, and its :class:`~trainkit.engine.state.RunState` is not touched.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainkit.engine._arguments import check_not_empty
from trainkit.engine.batches import BatchFixer, device_batches
from trainkit.engine.loop_state import LoopState
from trainkit.engine.step import TrainStep, default_step
from trainkit.utils.seed import get_rng_state, set_rng_state

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

__all__ = ["LRFinderResult", "lr_find"]


@dataclass(frozen=True)
class LRFinderResult:
    """What :func:`lr_find` measured: one learning rate and loss per optimizer step, and a suggestion.

    Attributes:
        lrs: the learning rate of each step, growing exponentially.
        losses: the smoothed loss of each step (a debiased moving average; what the plot and the
            suggestion use).
        raw_losses: each step's loss as measured (the mean over its ``grad_accum`` batches).
        suggestion: the learning rate halfway down the longest descent of the smoothed curve (fastai's
            "valley"), or ``None`` when too few steps were made to find one (lower ``min_lr``).
        diverged: the test stopped early because the loss blew up (``diverge``) or became NaN/inf.

    Example:
        >>> result = LRFinderResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 9.0], raw_losses=[1.0, 0.4, 20.0],
        ...                         suggestion=1e-2, diverged=True)
        >>> print(result)
        LR range test: 3 steps from 0.001 to 0.1, stopped as the loss diverged; suggested lr 0.01 (valley)
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    diverged: bool

    def plot(self, path: str | Path) -> Path:
        """Write the smoothed loss against the learning rate (log scale) as a PNG, with the suggestion marked.

        Imports matplotlib here (its object-oriented API with the Agg canvas: no pyplot state is touched).

        Example:
            >>> import tempfile
            >>> result = LRFinderResult([1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.8], [1.0, 0.4, 1.0], 1e-2, False)
            >>> result.plot(tempfile.mkdtemp() + "/lr_find.png").read_bytes()[:4]
            b'\\x89PNG'
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=100, layout="constrained")
        ax = fig.subplots()
        ax.plot(self.lrs, self.raw_losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
        ax.plot(self.lrs, self.losses, color="tab:blue", linewidth=2, label="smoothed loss")
        if self.suggestion is not None:
            at = self.lrs.index(self.suggestion)
            ax.plot(
                [self.suggestion], [self.losses[at]], "o", color="tab:red", label=f"suggestion {self.suggestion:.2g}"
            )
        finite = [v for v in self.losses if math.isfinite(v)]
        if finite:  # the blow-up at the end would squash the curve: show as far above the start as it descends
            low = min(finite + [v for v in self.raw_losses if math.isfinite(v)])
            top = min(max(finite), 2 * finite[0] - low) if finite[0] > low else max(finite)
            margin = 0.05 * (top - low) or 0.05 * abs(low) or 0.05
            ax.set_ylim(low - margin, top + margin)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("learning-rate range test")
        ax.grid(alpha=0.3)
        ax.legend()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(fig).print_png(str(out))
        return out

    def __str__(self) -> str:
        if not self.lrs:
            return "LR range test: no step made"
        end = ", stopped as the loss diverged" if self.diverged else ""
        found = f"suggested lr {self.suggestion:.3g} (valley)" if self.suggestion is not None else "no suggestion"
        return f"LR range test: {len(self.lrs)} steps from {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}{end}; {found}"


def lr_find(
    trainer: Trainer,
    loader: Iterable[Any],
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge: float = 4.0,
) -> LRFinderResult:
    """Run the learning-rate range test with ``trainer``'s model, optimizer and step; leave them as they were.

    Each of ``num_steps`` optimizer steps trains on ``trainer.grad_accum`` batches with the trainer's own
    :class:`~trainkit.engine.step.TrainStep` (precision, accumulation, clipping, custom ``training_step``)
    at a learning rate growing exponentially from ``min_lr`` to ``max_lr`` (the same in every param group).
    Afterwards the model's weights, buffers and gradients, its train/eval modes, the optimizer's state and
    param groups, the scaler and the RNG states of torch, CUDA, NumPy and ``random`` are bitwise what they
    were before; the scheduler is never stepped. To put them back, the weights, gradients and optimizer state
    are copied to CPU memory for the duration of the test.

    Args:
        trainer: the :class:`~trainkit.Trainer` whose pieces are tested.
        loader: training batches (re-read from the start when it has fewer than the test needs).
        min_lr: the first learning rate (> 0).
        max_lr: the last learning rate (> ``min_lr``).
        num_steps: optimizer steps at most (at least 2).
        smooth: the weight of the past in the loss's moving average, in ``[0, 1)`` (0: no smoothing).
        diverge: stop when the smoothed loss exceeds this many times its minimum (> 1; for a positive loss).

    Returns:
        An :class:`LRFinderResult` with ``lrs``, ``losses``, ``suggestion`` and ``plot(path)``.

    Raises:
        ValueError: an argument is out of range, ``loader`` yields no batches, or the trainer has no loss.

    Example:
        >>> import trainkit
        >>> _ = torch.manual_seed(0); x = torch.randn(64, 4); y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        >>> model = torch.nn.Linear(4, 1)
        >>> trainer = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(),
        ...                            device="cpu")
        >>> result = lr_find(trainer, [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)], min_lr=1e-4)
        >>> 0.01 < result.suggestion < 1.0, result.diverged, trainer.optimizer.param_groups[0]["lr"]
        (True, True, 0.1)
    """
    _check_arguments(min_lr, max_lr, num_steps, smooth, diverge)
    step_fn = trainer._custom_step("training_step")
    if trainer.loss_fn is None and step_fn is None:
        raise ValueError(
            "`lr_find` needs the trainer's `loss_fn=` (e.g. `torch.nn.CrossEntropyLoss()`), or `training_step=` / a "
            "subclass overriding `training_step` that returns the loss"
        )
    check_not_empty(loader, "loader")
    ratio = max_lr / min_lr
    planned = [min_lr * ratio ** (j / (num_steps - 1)) for j in range(num_steps)]
    kept = _Snapshot(trainer)
    try:
        lrs, raw, smoothed, diverged = _range_test(trainer, loader, planned, step_fn, smooth, diverge)
    finally:
        kept.restore(trainer)
    return LRFinderResult(lrs, smoothed, raw, _valley(lrs, smoothed, num_steps), diverged)


def _check_arguments(min_lr: Any, max_lr: Any, num_steps: Any, smooth: Any, diverge: Any) -> None:
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not number(min_lr) or min_lr <= 0:
        raise ValueError(f"`min_lr` must be a positive finite number, got {min_lr!r}; e.g. 1e-7")
    if not number(max_lr) or max_lr <= min_lr:
        raise ValueError(f"`max_lr` must be a finite number larger than `min_lr={min_lr!r}`, got {max_lr!r}; e.g. 10")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"`num_steps` must be an integer >= 2, got {num_steps!r}; e.g. 100")
    if not number(smooth) or not 0 <= smooth < 1:
        raise ValueError(f"`smooth` must be a number in [0, 1), got {smooth!r}; e.g. 0.98 (0: no smoothing)")
    if not number(diverge) or diverge <= 1:
        raise ValueError(
            f"`diverge` must be a number > 1, got {diverge!r}; e.g. 4.0 stops when the smoothed loss is 4 times its "
            "minimum"
        )


def _range_test(
    trainer: Trainer,
    loader: Iterable[Any],
    planned: list[float],
    step_fn: Any,
    smooth: float,
    diverge: float,
) -> tuple[list[float], list[float], list[float], bool]:
    """Train ``len(planned)`` optimizer steps at the planned rates; return ``(lrs, raw, smoothed, diverged)``."""
    accum, optimizer = trainer.grad_accum, trainer.optimizer
    step = TrainStep(
        trainer.model, optimizer, step_fn or default_step(trainer.model, trainer.loss_fn),
        precision=trainer.precision, grad_accum=accum, clip_grad_norm=trainer.clip_grad_norm,
        on_nan="skip", check_now=True,  # a NaN/inf loss ends the test instead of raising
    )  # fmt: skip
    fixer = BatchFixer(trainer.model, trainer.loss_fn) if step_fn is None else None
    batches = _batches(loader, trainer.device, fixer, trainer.batch_transform, len(planned) * accum)
    state = LoopState()
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    average, best, total, count = 0.0, math.inf, 0.0, 0
    trainer.model.train()
    for n, batch in batches:
        j, first = divmod(state.batch_idx, accum)
        if first == 0:
            for group in optimizer.param_groups:
                group["lr"] = planned[j]
            total, count = 0.0, 0
        _, loss = step(batch, n, state)
        state.batch_idx += 1
        if loss is None:  # NaN/inf: skipped by the step, and the end of the test
            return lrs, raw, smoothed, True
        total, count = total + float(loss.detach()) * n, count + n
        if state.batch_idx % accum:
            continue
        value = _mean_over_ranks(trainer, total, count)
        average = smooth * average + (1 - smooth) * value
        current = average / (1 - smooth ** (j + 1))  # debiased: the first value is the first loss
        if not math.isfinite(current):
            return lrs, raw, smoothed, True
        lrs.append(planned[j])
        raw.append(value)
        smoothed.append(current)
        if j > 0 and current > diverge * best:
            return lrs, raw, smoothed, True
        best = min(best, current)
    if len(lrs) < len(planned):
        warnings.warn(
            f"`lr_find`: the loader ran out after {len(lrs)} of {len(planned)} steps (an iterator or generator is "
            "used up after one pass); pass a `DataLoader` or a list to test the whole range",
            UserWarning,
            stacklevel=3,
        )
    return lrs, raw, smoothed, False


def _batches(
    loader: Iterable[Any], device: torch.device, fixer: Any, transform: Any, needed: int
) -> Iterator[tuple[int, Any]]:
    """``needed`` device batches from ``loader``, re-reading it from its start as often as it takes."""
    given = 0
    while given < needed:
        before = given
        for item in device_batches(loader, device, fixer=fixer, transform=transform):
            yield item
            given += 1
            if given == needed:
                return
        if given == before:  # an empty pass: nothing more will come
            if given == 0:
                raise ValueError("`loader` yielded no batches; pass a `DataLoader` or a list of training batches")
            return


def _mean_over_ranks(trainer: Trainer, total: float, count: int) -> float:
    """The step's mean loss; under DDP over every rank's batches, so every rank stops at the same step."""
    if not trainer.dist.enabled:
        return total / count
    summed = trainer.dist.all_reduce_sum(
        torch.tensor([total, float(count)], dtype=torch.float64, device=trainer.device)
    )
    return float(summed[0] / summed[1])


def _valley(lrs: list[float], losses: list[float], num_steps: int) -> float | None:
    """fastai's ``valley``: the lr halfway down the longest decreasing run of the smoothed losses.

    As fastai does, the first tenth of the planned steps (the loss has not moved yet) and the last five
    points (the blow-up) are left out. ``None`` when fewer than 2 points remain.
    """
    start, stop = num_steps // 10, len(losses) - 5
    if stop - start < 2:
        return None
    values = losses[start:stop]
    longest = [1] * len(values)  # longest decreasing subsequence ending at each point (O(n^2), n <= num_steps)
    best_end = 0
    for i in range(1, len(values)):
        for k in range(i):
            if values[i] < values[k] and longest[i] < longest[k] + 1:
                longest[i] = longest[k] + 1
        if longest[i] > longest[best_end]:
            best_end = i
    best_start = best_end - longest[best_end] + 1
    third = (best_end - best_start) / 3
    return lrs[start + best_start + int(third) + int(third / 2)]


class _Snapshot:
    """Everything ``lr_find`` changes, copied (tensors to the CPU) so it can be put back bitwise."""

    def __init__(self, trainer: Trainer):
        module = trainer.module
        self.tensors = [*module.parameters(), *module.buffers()]  # non-persistent buffers too
        self.values = [_to_cpu(t) for t in self.tensors]
        self.grads = [_to_cpu(p.grad) if p.grad is not None else None for p in module.parameters()]
        self.modes = [(m, m.training) for m in trainer.model.modules()]  # the DDP wrapper's flag too
        state = trainer.optimizer.state_dict()
        self.optimizer = {"state": _to_cpu(state["state"]), "param_groups": copy.deepcopy(state["param_groups"])}
        self.scaler = copy.deepcopy(trainer.precision.state_dict())
        self.rng = get_rng_state()

    def restore(self, trainer: Trainer) -> None:
        with torch.no_grad():
            for tensor, value in zip(self.tensors, self.values, strict=True):
                tensor.copy_(value)
        for param, grad in zip(trainer.module.parameters(), self.grads, strict=True):
            param.grad = grad.to(param.device) if grad is not None else None
        for module, training in self.modes:
            module.training = training
        trainer.optimizer.load_state_dict(self.optimizer)
        trainer.precision.load_state_dict(self.scaler)
        set_rng_state(self.rng)


def _to_cpu(value: Any) -> Any:
    """A copy of ``value`` with every tensor copied to the CPU (a new tensor even when it is there already)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return copy.deepcopy(value)
