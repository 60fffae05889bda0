"""Streaming classification accuracy (top-k), exact over an epoch.

Counts of right and counted samples are summed on the device of the inputs; ``compute()`` divides
them once. The same input contract as the segmentation metrics applies (logits ``[N, C]`` or labels
``[N]``; extra spatial dimensions work too), and ids outside ``[0, C)`` are reported by ``compute()``
rather than checked in ``update``, which never synchronises with the device.
"""

from __future__ import annotations

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
            "label_min": ((2,), "min"),
            "label_max": ((2,), "max"),
        }

    def _update(self, state: dict[str, torch.Tensor], preds: torch.Tensor, target: torch.Tensor) -> None:
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
        # The fewest kernels for the common case (no ignore_index, top-1): this runs every training step.
        kept = t != self.ignore_index if self.ignore_index is not None else None
        bad = (t < 0) if logits else (t < 0) | (p < 0)  # argmax of logits is always a valid id
        if classes is not None:
            bad = bad | (t >= classes) if logits else bad | (t >= classes) | (p >= classes)
        if kept is not None:
            bad = bad & kept
        if self.top_k > 1:
            top = preds.detach().topk(self.top_k, dim=1).indices.movedim(1, -1).reshape(-1, self.top_k)
            hit = (top == t.unsqueeze(1)).any(1)
        else:
            hit = p == t
        counted = ~bad if kept is None else kept & ~bad
        state["correct"] = state["correct"] + (hit & counted).sum()
        state["total"] = state["total"] + counted.sum()
        state["out_of_range"] = state["out_of_range"] + bad.sum()
        if kept is None:
            low, high = torch.stack((t, p)).aminmax(dim=1)
        else:
            low, high = label_extremes(t, p, kept)
        state["label_min"] = torch.minimum(state["label_min"], low)
        state["label_max"] = torch.maximum(state["label_max"], high)

    def _compute(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        raise_if_out_of_range(state, owner=type(self).__name__, num_classes=self.num_classes, ignore=self.ignore_index)
        dtype = torch.float32 if state["total"].device.type == "mps" else torch.float64
        return (state["correct"].to(dtype) / state["total"].to(dtype)).float()
