"""Segmentation metrics built on one streaming confusion matrix: ConfusionMatrix, MeanIoU, Dice, PixelAccuracy.

Every metric here accumulates the same ``[C, C]`` int64 matrix (rows = target class, columns =
predicted class) over all batches since ``reset()``, so the epoch value is exact: it is computed once
from the summed counts, never as a mean of per-batch means.

Pixels whose target equals ``ignore_index`` (255 by default, as in ``SegmentationDataset``) are left
out of every count. If ``ignore_index`` is a real class id (``0 <= ignore_index < num_classes``, e.g.
0 to skip the background), that class's target pixels are left out and its per-class value is ``nan``
and excluded from the mean, as in torchmetrics. Pass ``ignore_index=None`` when 255 is a real class.

No host-device sync in ``update``: the (target, predicted) ids are counted into flat cells
``target * C + pred`` with ``index_add_`` (``torch.bincount`` reads ``max().item()`` on CUDA, which
would stall the GPU every batch). Ids outside ``[0, C)`` are not checked on the host either: they are
counted apart, together with the smallest and largest ids seen, and ``compute()`` raises a
``ValueError`` naming them. How ``update`` keeps ids and counts them in groups is described in
:mod:`trainkit.metrics._base`.
"""

from __future__ import annotations

import abc

import torch

from trainkit.metrics._base import (
    Metric,
    as_labels,
    check_ignore_index,
    check_int_option,
    check_threshold,
    raise_if_out_of_range,
)

__all__ = ["ConfusionMatrix", "Dice", "MeanIoU", "PixelAccuracy"]


class _ConfusionMetric(Metric):
    """Shared state and update of the confusion-matrix metrics."""

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int | None = 255,
        threshold: float = 0.0,
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.num_classes = check_int_option("num_classes", num_classes, minimum=2)
        self.ignore_index = check_ignore_index(ignore_index)
        self.threshold = check_threshold(threshold)

    def _extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"

    def _state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        c = self.num_classes
        return {
            "confmat": ((c, c), "sum"),
            "out_of_range": ((), "sum"),
            "label_min": ((2,), "min"),
            "label_max": ((2,), "max"),
        }

    def _ids(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        pred, tgt, classes = as_labels(
            preds, target, num_classes=self.num_classes, threshold=self.threshold, owner=type(self).__name__
        )
        return torch.stack([tgt, pred]), classes

    def _count(self, state: dict[str, torch.Tensor], ids: torch.Tensor, classes: int | None) -> None:
        # Ignored pairs are counted with weight 0 and read (0, 0), a valid pair, for the extremes. Ids outside
        # [0, C) are moved onto the border of a (C + 2) x (C + 2) grid (-1 below, C above), so the grid's inner
        # C x C block is the confusion matrix and its border counts the elements out of range.
        c, width, n = self.num_classes, self.num_classes + 2, ids.shape[1]
        target, pred = ids.unbind()
        if self.ignore_index is None:
            weight = torch.ones((), dtype=torch.int64, device=ids.device).expand(n)
        else:
            weight = torch.ne(target, self.ignore_index, out=torch.empty(n, dtype=torch.int64, device=ids.device))
            ids.mul_(weight)
        low, high = ids.aminmax(dim=1)
        ids.clamp_(-1, c)
        cell = torch.add(pred, target, alpha=width).add_(width + 1)
        grid = torch.zeros(width * width, dtype=torch.int64, device=ids.device).index_add_(0, cell, weight)
        inner = grid.as_strided((c, c), (width, 1), width + 1)  # grid.view(width, width)[1:-1, 1:-1] in one call
        state["confmat"] = state["confmat"] + inner
        state["out_of_range"] = state["out_of_range"] + (grid.sum() - inner.sum())
        state["label_min"] = torch.minimum(state["label_min"], low)
        state["label_max"] = torch.maximum(state["label_max"], high)

    def _matrix(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        count = int(state["out_of_range"])  # the one host read; the extremes only when something is wrong
        if count:
            (tmin, pmin), (tmax, pmax) = state["label_min"].tolist(), state["label_max"].tolist()
            raise_if_out_of_range(
                count, (tmin, tmax), (pmin, pmax), owner=type(self).__name__, num_classes=self.num_classes,
                ignore=self.ignore_index,
            )  # fmt: skip
        return state["confmat"]

    def _stats(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """True positives, false positives and false negatives per class, as floats (float64 where supported)."""
        matrix = _as_float(self._matrix(state))
        tp = matrix.diagonal()
        return tp, matrix.sum(0) - tp, matrix.sum(1) - tp

    def _finish(self, per_class: torch.Tensor) -> torch.Tensor:
        """Blank the ignored class (if it is a real id) and return float32."""
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            per_class[self.ignore_index] = float("nan")
        return per_class.float()

    def confusion_matrix(self) -> torch.Tensor:
        """Return the int64 ``[C, C]`` confusion matrix (rows = target, columns = prediction).

        Raises:
            ValueError: some target or predicted id was outside ``[0, num_classes)``.

        Example:
            >>> from trainkit.metrics import MeanIoU
            >>> metric = MeanIoU(num_classes=2)
            >>> metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
            >>> metric.confusion_matrix().tolist()
            [[1, 1], [0, 1]]
        """
        return self._matrix(self._synced_state()).clone()


class ConfusionMatrix(_ConfusionMetric):
    """Streaming ``[C, C]`` confusion matrix: rows are target classes, columns predicted classes.

    Args:
        num_classes: Number of classes ``C`` (at least 2).
        ignore_index: Target value whose pixels are not counted (``None``: count every pixel).
        threshold: Logit threshold for binary inputs (``[N, 1, ...]`` or float preds shaped like
            target with ``num_classes=2``). These are logits, not probabilities: the default 0.0
            is probability 0.5; pass e.g. ``threshold=0.5`` if you feed probabilities.
        sync_on_compute: All-reduce (a copy of) the counts across ranks in ``compute()``.

    Example:
        >>> metric = ConfusionMatrix(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
        >>> metric.compute().tolist()
        [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    """

    def compute(self) -> torch.Tensor:
        """Return the int64 ``[C, C]`` matrix over everything seen since ``reset()``.

        Raises:
            ValueError: some target or predicted id was outside ``[0, num_classes)``.

        Example:
            >>> metric = ConfusionMatrix(num_classes=2)
            >>> metric.update(torch.tensor([[2.0, -1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
            >>> metric.compute().tolist()
            [[1, 1], [0, 0]]
        """
        return self._compute(self._synced_state())

    def _compute(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._matrix(state).clone()


class _ClassMean(_ConfusionMetric):
    """A per-class score from (TP, FP, FN), averaged over the classes that occur (``nan`` ones left out)."""

    def per_class(self) -> torch.Tensor:
        """Return the float32 ``[C]`` score of each class (``nan`` for absent or ignored classes).

        Example:
            >>> metric = MeanIoU(num_classes=3)
            >>> metric.update(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
            >>> metric.per_class()
            tensor([0.6667, 0.5000,    nan])
            >>> dice = Dice(num_classes=2)
            >>> dice.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
            >>> dice.per_class()
            tensor([0.6667, 0.8000])
        """
        return self._per_class(self._synced_state())

    def _per_class(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        tp, fp, fn = self._stats(state)
        return self._finish(self._score(tp, fp, fn))

    def _compute(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nanmean(self._per_class(state))

    @staticmethod
    @abc.abstractmethod
    def _score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        """The per-class score from true positives, false positives and false negatives."""


class MeanIoU(_ClassMean):
    """Mean intersection over union (Jaccard index) over an epoch: ``IoU_c = TP / (TP + FP + FN)``.

    A class absent from both target and prediction over the whole epoch has no IoU (``nan`` in
    :meth:`per_class`) and is left out of the mean, as torchmetrics' ``MulticlassJaccardIndex``
    (``average="macro"``) does. Libraries disagree here: for target ``[0, 1, 0, 0]``, prediction
    ``[0, 1, 0, 1]`` and 3 classes, trainkit and torchmetrics give (2/3 + 1/2) / 2 = 0.5833,
    segmentation_models_pytorch counts the absent class as 1 (0.722) and ignite as 0 (0.389).

    Args:
        num_classes: Number of classes ``C`` (at least 2).
        ignore_index: Target value whose pixels are not counted (``None``: count every pixel).
        threshold: Logit threshold for binary inputs (see :class:`ConfusionMatrix`).
        sync_on_compute: All-reduce (a copy of) the counts across ranks in ``compute()``.

    Example:
        >>> metric = MeanIoU(num_classes=3)
        >>> metric.update(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 0]))
        >>> round(float(metric.compute()), 4)
        0.5833
    """

    @staticmethod
    def _score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return tp / (tp + fp + fn)


class Dice(_ClassMean):
    """Mean Dice (F1) score over an epoch: ``Dice_c = 2 TP / (2 TP + FP + FN)``.

    Absent classes are handled as in :class:`MeanIoU`: ``nan`` per class, left out of the mean
    (torchmetrics' ``MulticlassF1Score(average="macro")`` gives the same value).

    Args:
        num_classes: Number of classes ``C`` (at least 2).
        ignore_index: Target value whose pixels are not counted (``None``: count every pixel).
        threshold: Logit threshold for binary inputs (see :class:`ConfusionMatrix`).
        sync_on_compute: All-reduce (a copy of) the counts across ranks in ``compute()``.

    Example:
        >>> metric = Dice(num_classes=2)
        >>> metric.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
        >>> round(float(metric.compute()), 4)
        0.7333
    """

    @staticmethod
    def _score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        return 2 * tp / (2 * tp + fp + fn)


class PixelAccuracy(_ConfusionMetric):
    """Fraction of counted pixels whose predicted class is right (torchmetrics' ``average="micro"``).

    :meth:`per_class` gives each class's recall (right pixels / target pixels of that class).

    Args:
        num_classes: Number of classes ``C`` (at least 2).
        ignore_index: Target value whose pixels are not counted (``None``: count every pixel).
        threshold: Logit threshold for binary inputs (see :class:`ConfusionMatrix`).
        sync_on_compute: All-reduce (a copy of) the counts across ranks in ``compute()``.

    Example:
        >>> metric = PixelAccuracy(num_classes=2)
        >>> metric.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [255, 0]]))
        >>> round(float(metric.compute()), 4)
        0.6667
    """

    def per_class(self) -> torch.Tensor:
        """Return the float32 ``[C]`` recall of each class (``nan`` when it has no target pixel).

        Example:
            >>> metric = PixelAccuracy(num_classes=3)
            >>> metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
            >>> metric.per_class()
            tensor([0.5000, 1.0000,    nan])
        """
        tp, _, fn = self._stats(self._synced_state())
        return self._finish(tp / (tp + fn))

    def _compute(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        matrix = _as_float(self._matrix(state))
        return (matrix.diagonal().sum() / matrix.sum()).float()


def _as_float(counts: torch.Tensor) -> torch.Tensor:
    """Counts as float64 for exact ratios, float32 on MPS (which has no float64)."""
    return counts.to(torch.float32 if counts.device.type == "mps" else torch.float64)
