"""Class weights from per-class pixel counts, for ``weight=`` of the losses (and ``pos_weight`` in binary mode).

``trainkit check`` counts the pixels of each class over a dataset's masks; this turns those counts into
weights that raise the rare classes in a pixel-averaged loss (cross-entropy, focal). With the class
frequencies ``f_c = n_c / sum(n)`` (ignored pixels excluded):

=================  ===========================  ==================================================
``method``         weight before scaling        when
=================  ===========================  ==================================================
``inverse``        ``1 / f_c``                  every class the same total say; a class with 1 %
                                                of the pixels gets 10x the weight of one with 10 %
``inverse_sqrt``   ``1 / sqrt(f_c)``            the default: rare classes raised, less extremely
``log``            ``1 / ln(1.02 + f_c)``       ENet (Paszke et al. 2016): bounded, 1.4 to 50.5
=================  ===========================  ==================================================

The weights are scaled so that the classes with pixels average 1. Only their ratios matter to the
losses here, which divide by the weights' sum (as ``torch.nn.CrossEntropyLoss(weight=...)`` does). A
class with no pixel gets weight 0: there is nothing of it to weigh in the counted data (and a weight
that is not finite would break the loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["class_weights"]

_METHODS = ("inverse", "inverse_sqrt", "log")


def class_weights(
    counts: Mapping[int, float] | Sequence[float] | np.ndarray | torch.Tensor,
    *,
    method: str = "inverse_sqrt",
    num_classes: int | None = None,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Suggest per-class loss weights from per-class pixel counts.

    Args:
        counts: Pixels per class: a sequence, array or tensor where ``counts[c]`` belongs to class ``c``,
            or a mapping ``{class_id: pixels}`` such as ``trainkit.data.check(...).class_histogram``.
        method: ``"inverse"``, ``"inverse_sqrt"`` or ``"log"`` (see the module's table).
        num_classes: Number of classes; a mapping's missing ids count 0. ``None``: the length of the
            sequence, or the largest id of the mapping plus one.
        ignore_index: The mapping key of unlabeled pixels (255 by default), left out. A sequence holds
            classes only: one long enough to reach ``ignore_index`` is refused.

    Returns:
        A float32 ``[C]`` tensor for ``weight=`` of ``DiceCELoss``, ``FocalLoss`` or
        ``torch.nn.CrossEntropyLoss``. In binary mode, ``pos_weight = w[1] / w[0]``.

    Raises:
        TypeError: ``counts`` is not a sequence, array, tensor or mapping of numbers.
        ValueError: a count is negative or not finite, no class has pixels, ``method`` is unknown, or the
            ids do not fit ``num_classes``/``ignore_index``.

    Example:
        >>> class_weights([900, 90, 10])  # 90 %, 9 % and 1 % of the pixels
        tensor([0.2198, 0.6951, 2.0852])
        >>> class_weights({0: 900, 1: 90, 2: 10, 255: 5000}, method="inverse")  # check's histogram; 255 left out
        tensor([0.0297, 0.2970, 2.6733])
        >>> class_weights([750, 0, 250], method="log")  # class 1 has no pixel
        tensor([0.5902, 0.0000, 1.4098])
        >>> w = class_weights([9_000, 1_000], method="inverse")
        >>> round(float(w[1] / w[0]), 4)  # pos_weight of a binary loss: n_negative / n_positive
        9.0
    """
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}; got {method!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise TypeError(f"`num_classes` must be an int or None; got {num_classes!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1; got {num_classes}")
    values = _dense_counts(counts, num_classes=num_classes, ignore_index=ignore_index)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"`counts` must be finite pixel counts >= 0; got {values.tolist()}")
    present = values > 0
    if not present.any():
        raise ValueError(f"`counts` has no pixel in any class ({values.tolist()}); count the masks of a dataset first")
    frequency = values / values.sum()
    weights = np.zeros_like(frequency)
    if method == "inverse":
        weights[present] = 1 / frequency[present]
    elif method == "inverse_sqrt":
        weights[present] = 1 / np.sqrt(frequency[present])
    else:
        weights[present] = 1 / np.log(1.02 + frequency[present])
    weights /= weights[present].mean()
    return torch.from_numpy(weights).float()


def _dense_counts(counts: Any, *, num_classes: int | None, ignore_index: int | None) -> np.ndarray:
    """``counts`` as a float64 array indexed by class id."""
    if isinstance(counts, Mapping):
        ids = {key: value for key, value in counts.items() if key != ignore_index}
        if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 for k in ids):
            raise ValueError(f"`counts` keys must be class ids >= 0; got {sorted(ids, key=str)}")
        size = num_classes if num_classes is not None else (max(ids) + 1 if ids else 0)
        beyond = sorted(int(k) for k in ids if k >= size)
        if beyond:
            raise ValueError(
                f"`counts` has class ids {beyond} >= `num_classes={num_classes}`; raise `num_classes` or set "
                "`ignore_index` to the id of unlabeled pixels"
            )
        values = np.zeros(size, dtype=np.float64)
        for key, value in ids.items():
            values[int(key)] = _number(value)
        return values
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    if isinstance(counts, (str, bytes)) or not isinstance(counts, (Sequence, np.ndarray)):
        raise TypeError(
            f"`counts` must be a sequence, array or tensor of per-class pixel counts, or a mapping "
            f"{{class_id: pixels}}; got {type(counts).__name__}"
        )
    array = counts if isinstance(counts, np.ndarray) else np.asarray(counts, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"`counts` must be 1-D (one count per class); got shape {array.shape}")
    values = np.array([_number(v) for v in array], dtype=np.float64)
    if num_classes is not None and len(values) != num_classes:
        raise ValueError(f"`counts` has {len(values)} entries but `num_classes={num_classes}`; give one per class")
    if ignore_index is not None and 0 <= ignore_index < len(values):
        raise ValueError(
            f"`counts` has {len(values)} entries, so it holds the count of `ignore_index={ignore_index}` pixels, "
            "which are no class; pass the classes' counts only (e.g. `counts[:num_classes]`), or a mapping "
            "{class_id: pixels}"
        )
    return values


def _number(value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`counts` must hold numbers of pixels; got {value!r}")
    return float(value)
