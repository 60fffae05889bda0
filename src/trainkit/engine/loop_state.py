"""Where a training epoch stands (``LoopState``), and the checks the loop makes on it.

``LoopState`` holds the epoch's counters and its running loss on the device. The non-finite loss
check lives here too: immediate on the CPU (or with ``on_nan="skip"``), and deferred on accelerators,
where the first bad batch is kept on the device and read at the next progress refresh. So does the
check that a scheduler left every learning rate at zero or above.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trainkit.errors import NonFiniteLossError

__all__ = ["LoopState", "check_learning_rates", "raise_if_nonfinite"]

_NO_BAD_BATCH = 2**62  # `LoopState.nonfinite_at` while every loss of the epoch was finite


@dataclass
class LoopState:
    """Where a training epoch stands; saved in mid-epoch checkpoints so a resume continues exactly.

    Attributes:
        epoch: the epoch being trained (0-based).
        batch_idx: batches of this epoch already consumed.
        global_step: optimizer steps attempted since the start of training.
        loss_sum: sum of ``loss * batch_size`` over this epoch (on the device).
        samples: samples seen this epoch.

    Example:
        >>> state = LoopState(epoch=2)
        >>> state.add_loss(torch.tensor(0.5), 4)
        >>> state.epoch, state.samples, state.mean_loss()
        (2, 4, 0.5)
    """

    epoch: int = 0
    batch_idx: int = 0
    global_step: int = 0
    loss_sum: torch.Tensor | None = None
    samples: int = 0
    metrics_updated: bool = False
    nonfinite_at: torch.Tensor | None = field(default=None, repr=False)
    nonfinite_count: torch.Tensor | None = field(default=None, repr=False)

    def begin_epoch(self, epoch: int) -> None:
        """Reset the per-epoch counters for ``epoch``.

        Example:
            >>> state = LoopState(batch_idx=5, samples=40)
            >>> state.begin_epoch(3)
            >>> state.epoch, state.batch_idx, state.samples
            (3, 0, 0)
        """
        self.epoch, self.batch_idx, self.samples = epoch, 0, 0
        self.metrics_updated = False
        self.loss_sum = self.nonfinite_at = self.nonfinite_count = None

    def count_nonfinite(self, loss: torch.Tensor, batch: int) -> None:
        """Count a NaN/inf ``loss`` and keep the first such ``batch`` index, on the device (no synchronisation).

        Example:
            >>> state = LoopState()
            >>> state.count_nonfinite(torch.tensor(1.0), 0); state.count_nonfinite(torch.tensor(float("nan")), 1)
            >>> int(state.nonfinite_count), int(state.nonfinite_at)
            (1, 1)
        """
        bad = ~torch.isfinite(loss.detach().reshape(()))
        here = torch.where(bad, batch, _NO_BAD_BATCH)
        if self.nonfinite_count is None or self.nonfinite_at is None:
            self.nonfinite_count, self.nonfinite_at = bad.long(), here
        else:
            self.nonfinite_count = self.nonfinite_count + bad
            self.nonfinite_at = torch.minimum(self.nonfinite_at, here)

    def mean_loss(self) -> float:
        """The epoch's mean loss so far (reads the device).

        Example:
            >>> LoopState().mean_loss()
            nan
        """
        if self.loss_sum is None or self.samples == 0:
            return float("nan")
        return float(self.loss_sum.item()) / self.samples

    def add_loss(self, loss: torch.Tensor, n: int) -> None:
        """Accumulate a batch's mean loss on its device, with no synchronisation.

        Example:
            >>> state = LoopState()
            >>> state.add_loss(torch.tensor(1.0), 2)
            >>> state.add_loss(torch.tensor(4.0), 1)
            >>> state.mean_loss()
            2.0
        """
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=_acc_dtype(loss.device), device=loss.device)
        value = loss.detach()
        self.loss_sum.add_(value.reshape(()) if value.ndim else value, alpha=n)  # in place: one kernel
        self.samples += n


def check_learning_rates(optimizer: torch.optim.Optimizer, when: str) -> None:
    """Raise ``ValueError`` if a scheduler drove a learning rate below zero (or to NaN).

    Reads the Python floats in ``optimizer.param_groups`` (no device synchronisation); tensor
    learning rates are not inspected.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> check_learning_rates(opt, "after epoch 1")
    """
    for i, group in enumerate(optimizer.param_groups):
        lr = group.get("lr")
        if isinstance(lr, (int, float)) and not lr >= 0:
            raise ValueError(
                f"the `scheduler` set the learning rate of param group {i} to {lr} {when}; a learning rate must be "
                ">= 0: check the schedule (e.g. a `LambdaLR` factor that turns negative, or more steps than it was "
                "built for)"
            )


def raise_if_nonfinite(state: LoopState) -> None:
    """Raise :class:`NonFiniteLossError` if a NaN/inf loss was recorded (reads the device once).

    Example:
        >>> raise_if_nonfinite(LoopState())  # nothing recorded: returns
    """
    if state.nonfinite_at is None:
        return
    at = int(state.nonfinite_at.item())
    if at != _NO_BAD_BATCH:
        raise NonFiniteLossError(
            f"loss is NaN or infinite at epoch {state.epoch + 1}, batch {at} of the epoch; lower the learning rate, "
            "clip gradients (`clip_grad_norm=1.0`), check the inputs for NaN, or pass `on_nan='skip'`"
        )


def _finite_or_record(loss: torch.Tensor, state: LoopState, check_now: bool, on_nan: str) -> bool:
    if check_now:
        # One scalar read: ~40 us a step cheaper on the CPU than `torch.isfinite(loss).all()` (several kernels).
        if math.isfinite(loss.detach().item()):
            return True
        if on_nan == "skip":
            return False
        raise NonFiniteLossError(
            f"loss is {float(loss.detach().float().sum())} at step {state.global_step} (epoch {state.epoch + 1}, "
            f"batch {state.batch_idx}); lower the learning rate, clip gradients (`clip_grad_norm=1.0`), check the "
            "inputs for NaN, or pass `on_nan='skip'`"
        )
    # Accelerators: keep the first bad batch's index on the device (a running minimum, three kernels a step);
    # read at the next refresh.
    here = torch.where(torch.isfinite(loss.detach().reshape(())), _NO_BAD_BATCH, state.batch_idx)
    state.nonfinite_at = here if state.nonfinite_at is None else torch.minimum(state.nonfinite_at, here)
    return True


def _running_values(state: LoopState) -> dict[str, float]:
    raise_if_nonfinite(state)
    return {"loss": state.mean_loss()}


def _finite_on_all_ranks(finite: bool, device: torch.device) -> bool:
    flag = torch.tensor(float(finite), device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() > 0)


def loss_totals(
    state: LoopState, device: torch.device, reduce: Callable[[torch.Tensor], torch.Tensor] | None, *flags: bool
) -> torch.Tensor:
    """``[loss sum, samples, *flags]`` of this pass, summed over ranks by ``reduce`` (sums, never means).

    Every rank makes the same collective, also one whose shard was empty (its sums are zero).

    Example:
        >>> state = LoopState(); state.add_loss(torch.tensor(0.5), 4)
        >>> loss_totals(state, torch.device("cpu"), None).tolist()
        [2.0, 4.0]
    """
    zero = torch.zeros((), dtype=_acc_dtype(device), device=device)
    loss_sum = state.loss_sum.to(device, zero.dtype) if state.loss_sum is not None else zero
    total = torch.stack([loss_sum, zero + state.samples, *(zero + flag for flag in flags)])
    return reduce(total) if reduce is not None else total


def mean_of(total: torch.Tensor) -> float:
    """``loss sum / samples`` from :func:`loss_totals`, ``nan`` without samples.

    Example:
        >>> mean_of(torch.tensor([2.0, 4.0]))
        0.5
    """
    return float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64
