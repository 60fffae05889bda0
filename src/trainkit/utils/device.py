"""Choosing a device and moving (nested) batches onto it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["move_to_device", "resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, a string or a :class:`torch.device` into a usable :class:`torch.device`.

    ``"auto"`` (or ``None``) picks CUDA when available (the local rank's GPU under ``torchrun``),
    then Apple's MPS, then the CPU.

    Raises:
        ValueError: the string is not a device PyTorch knows, or names a device that is not present.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"`device={device!r}` is not a device PyTorch knows; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device={device!r}` asks for CUDA but no CUDA GPU is available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"`device={device!r}` but only {torch.cuda.device_count()} CUDA device(s) exist "
                f"(indices 0..{torch.cuda.device_count() - 1})"
            )
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"`device={device!r}` asks for MPS but it is not available; use 'auto' or 'cpu'")
    return dev


def move_to_device(batch: Any, device: torch.device, non_blocking: bool | None = None) -> Any:
    """Move every tensor in a nested batch (tuple, list, dict, tv_tensors, namedtuple) to ``device``.

    Tensor subclasses such as ``tv_tensors.Image`` keep their type. Non-tensor leaves (strings,
    numbers, paths) are returned unchanged. ``non_blocking`` defaults to ``True`` on CUDA, where it
    overlaps the copy with compute when the source is pinned.

    Example:
        >>> batch = {"image": torch.zeros(2, 3, 4, 4), "meta": ["a.png", "b.png"]}
        >>> move_to_device(batch, torch.device("cpu"))["image"].device
        device(type='cpu')
    """
    if non_blocking is None:
        non_blocking = device.type == "cuda"
    return _move(batch, device, non_blocking)


def _move(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        # `.to()` returns the tensor itself when it is already there, but parsing its arguments costs
        # microseconds a call; comparing devices first is cheaper (a CPU loop moves nothing).
        return obj if obj.device == device else obj.to(device, non_blocking=non_blocking)
    if type(obj) in (tuple, list):  # the usual batch, checked before the slower abstract-class checks below
        items = [v if type(v) is torch.Tensor and v.device == device else _move(v, device, non_blocking) for v in obj]
        return tuple(items) if type(obj) is tuple else items
    if isinstance(obj, Mapping):
        moved = {k: _move(v, device, non_blocking) for k, v in obj.items()}
        return moved if type(obj) is dict else _rebuild(obj, moved)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_move(v, device, non_blocking) for v in obj))
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        items = [_move(v, device, non_blocking) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    return obj


def _rebuild(obj: Mapping, moved: dict) -> Any:
    """Keep a mapping's own type (OrderedDict, a user's dict subclass) when it can be rebuilt from items."""
    try:
        return type(obj)(moved)
    except TypeError:
        return moved
