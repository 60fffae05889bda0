"""Streaming classification accuracy (top-k), exact over an epoch.

Counts of right and counted samples are summed on the device of the inputs; ``compute()`` divides
them once. The same input contract as the segmentation metrics applies (logits ``[N, C]`` or labels
``[N]``; extra spatial dimensions work too), and ids outside ``[0, C)`` are reported by ``compute()``
rather than checked in ``update``, which never synchronises with the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from trainkit.metrics._base import (
    Metric,
    as_labels,
    check_ignore_index,
    check_int_option,
    check_threshold,
    label_extremes,
    raise_if_out_of_range,
)

__all__ = ["Accuracy"]


class Accuracy(Metric):
    """Fraction of samples whose target is among the ``top_k`` highest logits (top-1: the argmax).

    Inputs: logits ``[N, C]`` with target ``[N]``; integer labels ``[N]``; or, for binary tasks,
    float logits ``[N]`` / ``[N, 1]`` read as ``logit > threshold`` (logits, not probabilities).

    Args:
        num_classes: Number of classes, checked against the logits; ``None`` takes it from the
            logits' channel count (and skips the upper range check for label inputs).
        top_k: Count a sample as right when its target is among the ``top_k`` largest logits
            (needs logits with at least ``top_k`` channels).
        ignore_index: Target value whose samples are not counted. ``None`` by default, unlike the
            segmentation metrics' 255, because 255 is a real class id in many classification sets.
        threshold: Logit threshold for binary inputs; 0.0 is probability 0.5.
        sync_on_compute: All-reduce (a copy of) the counts across ranks in ``compute()``.

    Example:
        >>> metric = Accuracy(num_classes=3)
        >>> metric.update(torch.tensor([[2.0, 0.1, 0.3], [0.2, 0.1, 0.9]]), torch.tensor([0, 1]))
        >>> float(metric.compute())
        0.5
    """

    def __init__(
        self,
        num_classes: int | None = None,
        top_k: int = 1,
        *,
        ignore_index: int | None = None,
        threshold: float = 0.0,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.num_classes = None if num_classes is None else check_int_option("num_classes", num_classes, minimum=2)
        self.top_k = check_int_option("top_k", top_k, minimum=1)
        if self.num_classes is not None and self.top_k > self.num_classes:
            raise ValueError(f"`top_k={top_k}` exceeds `num_classes={num_classes}`; use `top_k <= num_classes`")
        self.ignore_index = check_ignore_index(ignore_index)
        self.threshold = check_threshold(threshold)

    def _extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, top_k={self.top_k}, ignore_index={self.ignore_index}"

    def _state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {
            "correct": ((), "sum"),
            "total": ((), "sum"),
            "out_of_range": ((), "sum"),
            "target_min": ((), "min"),
            "target_max": ((), "max"),
            "pred_min": ((), "min"),
            "pred_max": ((), "max"),
        }

    def _update(self, state: dict[str, torch.Tensor], preds: torch.Tensor, target: torch.Tensor) -> None:
        if self._is_plain_logits(preds, target):
            self._update_logits(state, preds, target)
            return
        owner = type(self).__name__
        pred, tgt = as_labels(preds, target, num_classes=self.num_classes, threshold=self.threshold, owner=owner)
        logits = preds.ndim == target.ndim + 1 and preds.shape[1] > 1
        if self.top_k > 1 and (not logits or preds.shape[1] < self.top_k):
            raise ValueError(
                f"`{owner}(top_k={self.top_k})` needs logits [N, C, ...] with C >= {self.top_k}; got preds "
                f"{tuple(preds.shape)} for target {tuple(target.shape)}"
            )
        if logits:
            classes: int | None = preds.shape[1]
        elif preds.is_floating_point():  # binary logits
            classes = 2
        else:
            classes = self.num_classes
        t, p = tgt.reshape(-1), pred.reshape(-1)
        if t.numel() == 0:
            return
        kept = t != self.ignore_index if self.ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        bad = (t < 0) if logits else (t < 0) | (p < 0)  # argmax of logits is always a valid id
        if classes is not None:
            bad = bad | (t >= classes) if logits else bad | (t >= classes) | (p >= classes)
        bad = bad & kept
        if self.top_k > 1:
            top = preds.detach().topk(self.top_k, dim=1).indices.movedim(1, -1).reshape(-1, self.top_k)
            hit = (top == t.unsqueeze(1)).any(1)
        else:
            hit = p == t
        counted = kept & ~bad
        state["correct"] = state["correct"] + (hit & counted).sum()
        state["total"] = state["total"] + counted.sum()
        state["out_of_range"] = state["out_of_range"] + bad.sum()
        low, high = label_extremes(t, p, kept)
        for i, who in enumerate(("target", "pred")):
            state[f"{who}_min"] = torch.minimum(state[f"{who}_min"], low[i])
            state[f"{who}_max"] = torch.maximum(state[f"{who}_max"], high[i])

    def _is_plain_logits(self, preds: torch.Tensor, target: torch.Tensor) -> bool:
        """The training-loop case: int64 targets, logits with ``num_classes`` channels, top-1, nothing ignored."""
        return (
            self.top_k == 1
            and self.ignore_index is None
            and target.dtype == torch.int64
            and preds.ndim == target.ndim + 1
            and preds.shape[1] == self.num_classes
            and preds.shape[0] == target.shape[0]
            and preds.shape[2:] == target.shape[1:]
            and preds.is_floating_point()
            and target.numel() > 0
        )

    # Batches of at most this many targets are kept and reduced `_FOLD_EVERY` at a time: at most
    # 64 * 4096 * 16 bytes, 4 MB. Larger batches (pixels) are reduced at once.
    _KEEP_AT_MOST = 4096
    _FOLD_EVERY = 64

    def _update_logits(self, state: dict[str, torch.Tensor], preds: torch.Tensor, target: torch.Tensor) -> None:
        """Two kernels a small batch, half of a hand-written ``correct += (logits.argmax(1) == y).sum()``.

        This runs every training step, where each kernel costs more than its arithmetic. The argmax of
        logits is always a valid id, so only the target's extremes are kept (an id outside
        ``[0, num_classes)`` makes ``compute()`` raise, so elements are not counted one by one). A small
        batch keeps its predicted ids and ``target - predicted`` (both new tensors: the caller may reuse
        its target tensor), from which 64 batches' hits and targets are recovered and reduced at once.
        """
        pred = preds.argmax(1)
        if target.numel() > self._KEEP_AT_MOST:
            _add_hits(state, pred, target)
            return
        self._deferred.append((pred, target - pred))
        if len(self._deferred) >= self._FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if self._deferred and self._state is not None:
            kept, self._deferred = self._deferred, []
            pred, offset = (torch.cat([x.reshape(-1) for x in column]) for column in zip(*kept, strict=True))
            _add_hits(self._state, pred, offset + pred)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Restore the counts of :meth:`state_dict`; also reads the layout of trainkit 0.1.0 checkpoints.

        Example:
            >>> a, b = Accuracy(num_classes=2), Accuracy(num_classes=2)
            >>> a.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
            >>> b.load_state_dict(a.state_dict()); float(b.compute())
            1.0
        """
        if "label_min" in state_dict and "label_max" in state_dict and "target_min" not in state_dict:
            state_dict = dict(state_dict)  # before: one [target, pred] tensor for each extreme
            (state_dict["target_min"], state_dict["pred_min"]) = state_dict.pop("label_min").unbind()
            (state_dict["target_max"], state_dict["pred_max"]) = state_dict.pop("label_max").unbind()
        super().load_state_dict(state_dict)

    def _compute(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = ("out_of_range", "target_min", "target_max", "pred_min", "pred_max")
        count, tmin, tmax, pmin, pmax = torch.stack([state[k] for k in keys]).tolist()  # one host read
        raise_if_out_of_range(
            count, (tmin, tmax), (pmin, pmax), owner=type(self).__name__, num_classes=self.num_classes,
            ignore=self.ignore_index,
        )  # fmt: skip
        dtype = torch.float32 if state["total"].device.type == "mps" else torch.float64
        return (state["correct"].to(dtype) / state["total"].to(dtype)).float()


def _add_hits(state: dict[str, torch.Tensor], pred: torch.Tensor, target: torch.Tensor) -> None:
    """Add the hits of predicted ids ``pred`` against ``target`` and the target's extremes to ``state``."""
    low, high = target.aminmax()
    state["correct"] = state["correct"] + (pred == target).sum()
    state["total"] = state["total"] + target.numel()
    state["target_min"] = torch.minimum(state["target_min"], low)
    state["target_max"] = torch.maximum(state["target_max"], high)
