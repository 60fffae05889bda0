"""From logits to what an application reads: probabilities, and class ids computed where the logits are.

=========== ============================= ==================================================
logits      probabilities                 class ids (int64 ``[N, H, W]``)
=========== ============================= ==================================================
``K >= 2``  softmax over the classes       argmax over the classes
``K == 1``  sigmoid (binary foreground)    1 where the probability is above ``threshold``
=========== ============================= ==================================================

Both keep the device of the logits, so ``to_class_ids`` on the GPU sends a mask of int64 to the CPU rather
than ``K`` float maps (``trainkit.predict_iter(..., postprocess=to_class_ids)``).
"""

from __future__ import annotations

import torch

from trainkit.utils.outputs import argmax_classes

__all__ = ["ACTIVATIONS", "to_class_ids", "to_probabilities"]

ACTIVATIONS: tuple[str, ...] = ("auto", "softmax", "sigmoid")
"""``"auto"``: softmax for ``K >= 2`` classes, sigmoid for one channel; ``"sigmoid"`` also suits multi-label maps."""


def to_probabilities(logits: torch.Tensor, activation: str = "auto") -> torch.Tensor:
    """Probabilities from ``[N, K, H, W]`` (or ``[K, H, W]``) logits, in float32, on the logits' device.

    Raises:
        ValueError: an unknown ``activation``, or a tensor without a class dimension.

    Example:
        >>> logits = torch.tensor([[[[0.0]], [[2.0]]]])  # one pixel, two classes
        >>> to_probabilities(logits).flatten().tolist(), to_probabilities(logits[:, :1]).flatten().tolist()
        ([0.11920291930437088, 0.8807970285415649], [0.5])
    """
    _check(logits)
    if activation not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}")
    dim = -3
    if activation == "sigmoid" or (activation == "auto" and logits.shape[dim] == 1):
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), dim=dim)


def to_class_ids(logits: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Class ids ``[N, H, W]`` (or ``[H, W]``) int64 from logits: the argmax, or for one channel the
    pixels whose sigmoid is above ``threshold``, on the logits' device.

    Raises:
        ValueError: a tensor without a class dimension, or a ``threshold`` outside (0, 1).

    Example:
        >>> logits = torch.tensor([[[[0.0, 3.0]], [[1.0, -1.0]]]])  # two pixels, two classes
        >>> to_class_ids(logits).tolist(), to_class_ids(logits[:, :1], threshold=0.9).tolist()
        ([[[1, 0]]], [[[0, 1]]])
    """
    _check(logits)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`threshold` is a probability in (0, 1), got {threshold!r}")
    if logits.shape[-3] == 1:  # sigmoid(x) > t  <=>  x > logit(t): no sigmoid computed
        return (logits[..., 0, :, :].float() > torch.logit(torch.tensor(threshold)).item()).long()
    return argmax_classes(logits, dim=-3)


def _check(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim not in (3, 4):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"expected logits [N, K, H, W] or [K, H, W], got {shape}")
