"""Streaming classification accuracy (top-k), exact over an epoch.

Counts of right and counted samples are summed on the device of the inputs; ``compute()`` divides
them once. The same input contract and the same update path as the segmentation metrics apply
(logits ``[N, C]`` or labels ``[N]``; extra spatial dimensions work too), and ids outside ``[0, C)``
are reported by ``compute()`` rather than checked in ``update``, which never synchronises with the device.
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

    def _ids(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        pred, tgt, classes = as_labels(
            preds,
            target,
            num_classes=self.num_classes,
            threshold=self.threshold,
            owner=type(self).__name__,
            top_k=self.top_k,
        )
        # (target, predicted) ids; with top_k > 1, the target and the ids of the k largest logits.
        return (torch.stack([tgt, pred]) if self.top_k == 1 else torch.cat([tgt.unsqueeze(0), pred])), classes

    def _count(self, state: dict[str, torch.Tensor], ids: torch.Tensor, classes: int | None) -> None:
        target, pred = ids[0], ids[1]  # rows 2.. (top_k > 1): more predicted ids, valid like `pred`
        kept = None if self.ignore_index is None else target != self.ignore_index
        if kept is not None:
            ids.mul_(kept)  # ignored samples read 0 everywhere, valid ids, in the range checks below
        extremes = {"target": target.aminmax(), "pred": pred.aminmax()}
        pair = ids[:2]
        target_inside, pred_inside = (pair >= 0 if classes is None else pair.clamp(0, classes - 1) == pair).unbind()
        valid = target_inside & pred_inside
        inside = valid.sum()
        if kept is not None:
            valid &= kept
        hit = target == pred
        for other in ids[2:]:
            hit |= target == other
        state["correct"] = state["correct"] + (hit & valid).sum()
        state["total"] = state["total"] + (inside if kept is None else valid.sum())
        state["out_of_range"] = state["out_of_range"] + (ids.shape[1] - inside)
        for who, (low, high) in extremes.items():
            state[f"{who}_min"] = torch.minimum(state[f"{who}_min"], low)
            state[f"{who}_max"] = torch.maximum(state[f"{who}_max"], high)

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
