"""The streaming-metric protocol, the shared state machinery and the input contract of every metric.

A metric keeps integer counts in tensors that live on the device of the first ``update``. ``update``
works with tensor operations only (no ``.item()``, no ``.cpu()``, no Python branch on a tensor value),
so a training loop on a GPU never waits for the host because of a metric. Everything that needs a value
on the host (range checks, the final division) happens in ``compute()``.

Every metric takes one path, whatever its arguments: ``update`` turns the batch into class ids, a
``[2, N, ...]`` int64 tensor of (target, predicted) ids, and keeps it; the kept ids are counted
together when they reach 256 batches or 16,384 ids, and before anything reads the counts (``compute``,
``state_dict``, ``merge_``, ``to``). On the small batches of a classification loop a kernel costs more
than its arithmetic (5-20 us each on a CPU), so an update launches two (the ``max`` of the ids and the ``stack``
that copies the ids) where a hand-written ``correct += (logits.argmax(1) == y).sum()`` launches four;
the counting, with its range checks and ``ignore_index``, runs once for the group.

Input contract (checked at the boundary, from shapes and dtypes only):

==========================================  ==============================================================
``preds`` given as                          read as
==========================================  ==============================================================
logits ``[N, C, ...]``, target ``[N, ...]``  labels ``preds.argmax(1)`` (``C`` must equal ``num_classes``)
logits ``[N, 1, ...]``, ``num_classes=2``    binary labels ``preds[:, 0] > threshold`` (logits, not probs)
float ``[N, ...]`` like target, 2 classes    binary labels ``preds > threshold`` (logits, not probs)
integer ``[N, ...]`` like target             labels, used as they are
==========================================  ==============================================================
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from trainkit.utils.outputs import argmax_classes, main_output

__all__ = ["Metric"]

# How each kind of state combines across ranks, checkpoints and `merge_`, and its value before any update.
_REDUCE_OPS = ("sum", "min", "max")
_EMPTY = {"sum": 0, "min": torch.iinfo(torch.int64).max, "max": torch.iinfo(torch.int64).min}


class Metric(abc.ABC):
    """Base class and protocol of trainkit's streaming metrics: ``update`` / ``compute`` / ``reset``.

    Any object with these three methods (a torchmetrics metric, for instance) can be passed to the
    Trainer; this class adds what trainkit's own metrics share:

    - state tensors created lazily on the device of the first ``update`` and kept there;
    - ``state_dict()`` / ``load_state_dict()`` with plain tensors (safe under ``weights_only=True``);
    - ``merge_(other)`` to add the counts of another metric of the same kind (e.g. from another
      worker or a saved shard);
    - under an initialised ``torch.distributed`` group of more than one process, ``compute()``
      all-reduces a *copy* of the state (``sync_on_compute=True``), so every rank sees the global
      value and calling ``compute()`` twice never double-counts.

    Subclasses declare their state in ``_state_spec`` (name, shape, reduce op), turn a batch into
    (target, predicted) ids in ``_ids``, add ids to the state in ``_count`` and read it in ``_compute``.

    Args:
        sync_on_compute: All-reduce the state across ranks in ``compute()`` when a process group of
            more than one process is initialised.

    Example:
        >>> from trainkit.metrics import PixelAccuracy
        >>> metric = PixelAccuracy(num_classes=2)
        >>> metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        >>> round(float(metric.compute()), 4)
        0.6667
    """

    def __init__(self, *, sync_on_compute: bool = True) -> None:
        if not isinstance(sync_on_compute, bool):
            raise TypeError(f"`sync_on_compute` must be True or False; got {sync_on_compute!r}")
        self.sync_on_compute = sync_on_compute
        self._state: dict[str, torch.Tensor] | None = None  # replaced through `_set_state` only
        self._device: torch.device | None = None  # where the state lives (read on every update)
        self._pending: list[torch.Tensor] = []  # [2, N, ...] (target, predicted) ids not counted yet
        self._pending_size = 0  # their number of elements
        self._pending_classes: int | None = None  # the class count they are checked against

    # ----------------------------------------------------------------- subclass interface
    @abc.abstractmethod
    def _state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name → (shape, reduce op) of every int64 state tensor. Reduce ops: 'sum', 'min', 'max'."""

    @abc.abstractmethod
    def _ids(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """Check the batch's shapes and dtypes; return its ids and the class count ``C`` to check them against.

        The ids are a new int64 tensor ``[2, N, ...]``, ``ids[0]`` the targets and ``ids[1]`` the predicted
        ids (new, because the caller may refill its target tensor after ``update``); a metric may add rows
        (``Accuracy(top_k=k)`` keeps the k predicted ids). ``C`` is ``None`` when only negative ids are errors.
        """

    @abc.abstractmethod
    def _count(self, state: dict[str, torch.Tensor], ids: torch.Tensor, classes: int | None) -> None:
        """Add ``[2, n]`` (target, predicted, ...) ids, kept by one or more updates, to ``state`` with tensor ops.

        ``ids`` belong to the call and may be overwritten. State entries are replaced
        (``state[k] = state[k] + counts``), not updated in place: a state made under
        ``torch.inference_mode()`` (an evaluation loop) then stays usable outside it.
        """

    @abc.abstractmethod
    def _compute(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Turn a (synced) state into the metric's value."""

    # ----------------------------------------------------------------- public protocol
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions (logits or labels) and targets to the running counts.

        Shapes and dtypes are checked here; the batch's ids are kept and counted with others (see the
        module docstring), and ids outside ``[0, C)`` are reported by ``compute()``.

        Args:
            preds: Logits ``[N, C, ...]`` or labels shaped like ``target`` (see the module docstring); a
                model's dict or tuple output gives its main output (:mod:`trainkit.utils.outputs`).
            target: Integer class ids ``[N, ...]``.

        Raises:
            TypeError: ``preds`` or ``target`` is not a tensor, or has a dtype that cannot be read.
            ValueError: shapes do not fit each other or ``num_classes``, or the tensors sit on two devices.

        Example:
            >>> from trainkit.metrics import MeanIoU
            >>> metric = MeanIoU(num_classes=2)
            >>> metric.update(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8)))
            >>> metric.state_dict()["confmat"].sum().item()
            128
        """
        if isinstance(preds, Mapping) or (isinstance(preds, (tuple, list)) and preds and torch.is_tensor(preds[0])):
            preds = main_output(preds)  # a model's dict/tuple output: its main output, by the output rule
        if not isinstance(preds, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError(
                f"`{type(self).__name__}.update(preds, target)` takes two tensors; "
                f"got {type(preds).__name__} and {type(target).__name__}"
            )
        device = target.device
        if preds.device != device:
            raise ValueError(
                f"`{type(self).__name__}.update`: preds are on {preds.device} but target is on {device}; "
                "move both to one device (e.g. `target.to(preds.device)`)"
            )
        if device != self._device:
            if self._state is not None:
                raise ValueError(
                    f"`{type(self).__name__}.update` got tensors on {device}, but its counts live on "
                    f"{self._device} since the first update; keep inputs on one device, or call "
                    f"`metric.to({str(device)!r})` first"
                )
            self._set_state(self._zero_state(device))
        # Detach only what records a graph: `detach()` makes a new tensor object each call.
        ids, classes = self._ids(
            preds.detach() if preds.requires_grad else preds,
            target.detach() if target.requires_grad else target,
        )
        size = ids.numel()
        if size == 0:
            return
        if ids.ndim > 2:
            ids = ids.flatten(1)
        if self._pending and classes != self._pending_classes:
            self._count_pending()  # each group is checked against one class count
        self._pending.append(ids)
        self._pending_size += size
        self._pending_classes = classes
        if len(self._pending) >= self._COUNT_EVERY or self._pending_size >= self._COUNT_AT:
            self._count_pending()

    def compute(self) -> torch.Tensor:
        """Return the metric over everything seen since the last ``reset()`` (across ranks when synced).

        Before any ``update`` the counts are all zero, so ratios are ``nan`` (no error is raised).

        Example:
            >>> from trainkit.metrics import PixelAccuracy
            >>> PixelAccuracy(num_classes=2).compute()
            tensor(nan)
        """
        return self._compute(self._synced_state())

    def reset(self) -> None:
        """Forget all counts; the next ``update`` starts a new epoch (and may use another device).

        Example:
            >>> from trainkit.metrics import PixelAccuracy
            >>> metric = PixelAccuracy(num_classes=2)
            >>> metric.update(torch.tensor([1]), torch.tensor([1]))
            >>> metric.reset()
            >>> metric.compute()
            tensor(nan)
        """
        self._set_state(None)
        self._pending, self._pending_size = [], 0

    def to(self, device: str | torch.device) -> Metric:
        """Move the counts (if any) to ``device``; returns ``self`` like ``nn.Module.to``.

        Example:
            >>> from trainkit.metrics import MeanIoU
            >>> MeanIoU(num_classes=3).to("cpu").compute()
            tensor(nan)
        """
        self._count_pending()
        if self._state is not None:
            self._set_state({k: v.to(device) for k, v in self._state.items()})
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return a copy of the counts as plain int64 tensors (zeros on the CPU before any update).

        Example:
            >>> from trainkit.metrics import ConfusionMatrix
            >>> sorted(ConfusionMatrix(num_classes=2).state_dict())
            ['confmat', 'label_max', 'label_min', 'out_of_range']
        """
        self._count_pending()
        state = self._state if self._state is not None else self._zero_state(torch.device("cpu"))
        return {k: v.clone() for k, v in state.items()}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the counts with those from :meth:`state_dict` (kept on the device they arrive on).

        Raises:
            ValueError: keys or shapes differ from this metric's (e.g. another ``num_classes``).

        Example:
            >>> from trainkit.metrics import ConfusionMatrix
            >>> a, b = ConfusionMatrix(num_classes=2), ConfusionMatrix(num_classes=2)
            >>> a.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
            >>> b.load_state_dict(a.state_dict())
            >>> b.compute().tolist()
            [[0, 0], [1, 1]]
        """
        spec = self._state_spec()
        if set(state_dict) != set(spec):
            raise ValueError(
                f"`{type(self).__name__}.load_state_dict` expected keys {sorted(spec)}; got {sorted(state_dict)}"
            )
        for name, (shape, _) in spec.items():
            if tuple(state_dict[name].shape) != shape:
                raise ValueError(
                    f"`{type(self).__name__}.load_state_dict`: {name!r} has shape {tuple(state_dict[name].shape)}, "
                    f"expected {shape}; was it saved from a metric with other settings ({self!r})?"
                )
        self._set_state({name: state_dict[name].to(torch.int64).clone() for name in spec})
        self._pending, self._pending_size = [], 0

    def merge_(self, other: Metric) -> Metric:
        """Add the counts of ``other`` (same class and settings) into this metric, in place; returns ``self``.

        Raises:
            TypeError: ``other`` is another kind of metric.
            ValueError: ``other`` has other settings (state shapes differ).

        Example:
            >>> from trainkit.metrics import PixelAccuracy
            >>> a, b = PixelAccuracy(num_classes=2), PixelAccuracy(num_classes=2)
            >>> a.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
            >>> b.update(torch.tensor([0, 0]), torch.tensor([1, 1]))
            >>> float(a.merge_(b).compute())
            0.5
        """
        if type(other) is not type(self):
            raise TypeError(f"`{type(self).__name__}.merge_` needs another {type(self).__name__}; got {type(other)}")
        self._count_pending()
        other._count_pending()
        if other._state is None:
            return self
        mine = self.state_dict() if self._state is None else self._state
        device = next(iter(mine.values())).device
        theirs = {k: v.to(device) for k, v in other._state.items()}
        spec = self._state_spec()
        for name, (shape, _) in spec.items():
            if tuple(theirs[name].shape) != shape:
                raise ValueError(f"`{type(self).__name__}.merge_`: {other!r} has other settings than {self!r}")
        self._set_state({name: _combine(mine[name], theirs[name], op) for name, (_, op) in spec.items()})
        return self

    def __copy__(self) -> Metric:
        """A copy with its own counts (state tensors are replaced on update, never changed in place)."""
        self._count_pending()  # counting may change the kept ids in place, so they are never shared
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._state = dict(self._state) if self._state is not None else None
        clone._pending = []
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._extra_repr()})"

    def _extra_repr(self) -> str:
        return ""

    # ----------------------------------------------------------------- machinery
    # Kept ids are counted when they reach `_COUNT_EVERY` batches or `_COUNT_AT` elements, and before
    # anything reads the state; `reset` and `load_state_dict` drop them. 2**14 int64 elements are 128 KB:
    # larger temporaries come as fresh memory that the OS maps page by page, which made counting a group of
    # 2**16 elements 5% slower than counting its four parts. Measured with `benchmarks/loop_overhead.py
    # --micro` on the 2-core CPU (docs/benchmarks.md), counting every batch at once costs 5-6x the
    # hand-written accuracy update on batches of 32; counting 256 at a time adds about 0.5 us a batch.
    _COUNT_EVERY = 256
    _COUNT_AT = 1 << 14

    def _count_pending(self) -> None:
        """Count the kept ids into ``self._state`` (one ``_count`` call for the whole group)."""
        if not self._pending or self._state is None:
            return
        pending, self._pending, self._pending_size = self._pending, [], 0
        ids = pending[0] if len(pending) == 1 else torch.cat(pending, dim=1)
        # `_count` may change `ids` in place: only this metric holds them (`__copy__` counts them first), but
        # a tensor made under inference mode can be changed in place only under it.
        if ids.is_inference() and not torch.is_inference_mode_enabled():
            ids = ids.clone()
        self._count(self._state, ids, self._pending_classes)

    def _set_state(self, state: dict[str, torch.Tensor] | None) -> None:
        self._state = state
        self._device = None if state is None else next(iter(state.values())).device

    def _zero_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        spec = self._state_spec().items()
        return {name: torch.full(shape, _EMPTY[op], dtype=torch.int64, device=device) for name, (shape, op) in spec}

    def _synced_state(self) -> dict[str, torch.Tensor]:
        """The state to compute from: local, or an all-reduced copy under a multi-process group."""
        self._count_pending()
        distributed = self.sync_on_compute and dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_world_size() <= 1:
            return self._state if self._state is not None else self._zero_state(torch.device("cpu"))
        # Every rank must join the collectives, also a rank that saw no batch: give it zeros on the
        # device its backend communicates from.
        if self._state is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            state = self._zero_state(device or torch.device("cpu"))
        else:
            state = {k: v.clone() for k, v in self._state.items()}
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        for name, (_, op) in self._state_spec().items():
            dist.all_reduce(state[name], op=ops[op])
        return state


def _combine(a: torch.Tensor, b: torch.Tensor, op: str) -> torch.Tensor:
    if op == "sum":
        return a + b
    return torch.minimum(a, b) if op == "min" else torch.maximum(a, b)


def check_int_option(name: str, value: Any, *, minimum: int) -> int:
    """Validate an integer constructor option such as ``num_classes`` and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}")
    return value


def check_threshold(value: Any) -> float:
    """Validate a logit ``threshold`` option and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`threshold` must be a number (a logit, 0.0 = probability 0.5); got {value!r}")
    return float(value)


def check_ignore_index(value: Any) -> int | None:
    """Validate ``ignore_index`` (an int or ``None``) and return it."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"`ignore_index` must be an int or None; got {value!r} ({type(value).__name__})")
    return value


def as_labels(
    preds: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int | None,
    threshold: float,
    owner: str,
    top_k: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Read ``preds`` as class ids by the module's input contract; return ``(pred_ids, target, C)``.

    Both id tensors are int64. ``C`` is the class count the ids are to be checked against: the channel
    count of logits, 2 for binary logits, else ``num_classes`` (``None``: only negative ids are errors).
    With ``top_k > 1`` (logits only) the predicted ids are those of the ``top_k`` largest logits, largest
    first, as ``[top_k, N, ...]``.
    Only shapes and dtypes are inspected, never values, so this never synchronises with the device.
    This runs on every training step: checks that hold for most calls come first and are cheap.
    """
    if top_k > 1 and (preds.ndim != target.ndim + 1 or preds.shape[1] < top_k):
        raise ValueError(
            f"`{owner}(top_k={top_k})` needs logits [N, C, ...] with C >= {top_k}; got preds "
            f"{tuple(preds.shape)} for target {tuple(target.shape)}"
        )
    if target.dtype is not torch.int64:
        if target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"`{owner}.update`: target must hold integer class ids; got {target.dtype}. "
                "Convert it with `target.long()` (masks are int64 `[N, H, W]`)"
            )
        target = target.long()
    if preds.ndim == target.ndim + 1:
        if preds.shape[0] != target.shape[0] or (preds.ndim > 2 and preds.shape[2:] != target.shape[1:]):
            raise ValueError(
                f"`{owner}.update`: logits {tuple(preds.shape)} do not fit target {tuple(target.shape)}; "
                "expected logits [N, C, ...] for target [N, ...] (same N and spatial size)"
            )
        channels = preds.shape[1]
        if channels == 1:
            if num_classes not in (2, None):
                raise ValueError(
                    f"`{owner}.update`: single-channel logits {tuple(preds.shape)} are binary, but "
                    f"`num_classes={num_classes}`; give one logit channel per class [N, {num_classes}, ...]"
                )
            return _binary(preds[:, 0], owner, threshold), target, 2
        if num_classes is not None and channels != num_classes:
            raise ValueError(
                f"`{owner}.update`: logits {tuple(preds.shape)} have {channels} channels but "
                f"`num_classes={num_classes}`; expected logits [N, {num_classes}, ...]"
            )
        if top_k > 1:
            return preds.topk(top_k, dim=1).indices.movedim(1, 0), target, channels
        return argmax_classes(preds), target, channels
    if preds.shape != target.shape:
        raise ValueError(
            f"`{owner}.update`: preds {tuple(preds.shape)} do not fit target {tuple(target.shape)}; expected "
            "logits [N, C, ...] or labels shaped like target"
        )
    if preds.is_floating_point():
        if num_classes not in (2, None):
            raise TypeError(
                f"`{owner}.update`: float preds shaped like target {tuple(target.shape)} are read as binary "
                f"logits, but `num_classes={num_classes}`; pass logits [N, C, ...] or integer labels "
                "(`preds.argmax(1)`)"
            )
        return _binary(preds, owner, threshold), target, 2
    if preds.is_complex():
        raise TypeError(f"`{owner}.update`: preds have dtype {preds.dtype}; expected float logits or integer labels")
    return (preds if preds.dtype == torch.int64 else preds.long()), target, num_classes


def _binary(logits: torch.Tensor, owner: str, threshold: float) -> torch.Tensor:
    if not logits.is_floating_point():
        raise TypeError(
            f"`{owner}.update`: single-channel preds must be float logits; got {logits.dtype}. "
            "Pass integer labels shaped like target instead"
        )
    return (logits > threshold).long()


def raise_if_out_of_range(
    count: int,
    target: tuple[int, int],
    pred: tuple[int, int],
    *,
    owner: str,
    num_classes: int | None,
    ignore: Any,
) -> None:
    """Raise the deferred range error when ``update`` saw ids outside ``[0, num_classes)``.

    ``count`` is the number of elements found out of range (each checked against the class count of
    its batch), ``target`` and ``pred`` the smallest and largest ids seen.
    """
    inside = num_classes is None or all(low >= 0 and high < num_classes for low, high in (target, pred))
    if count == 0 and inside:
        return
    if num_classes is None:  # checked per batch against the logits' channel count C
        limit: int | str = "C"
        seen = [f"target ids seen span {target[0]}..{target[1]}"]
    else:
        limit, seen = num_classes, []
        for who, (low, high) in (("target", target), ("predicted", pred)):
            if low < 0:
                seen.append(f"{who} id {low} (smallest seen)")
            if high >= num_classes:
                seen.append(f"{who} id {high} (largest seen)")
    how_many = f"{count} element(s)" if count else "elements"
    raise ValueError(
        f"`{owner}.compute`: {how_many} since the last `reset()` had class ids outside [0, {limit}): "
        f"{', '.join(seen)}; `num_classes={num_classes}`, `ignore_index={ignore}`. Fix `num_classes`, map the "
        "mask values to class ids (e.g. `value_map=` in `SegmentationDataset`), or set `ignore_index` to the "
        "value that marks unlabeled pixels; then call `reset()`"
    )
