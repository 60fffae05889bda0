"""Choosing a device; moving a nested batch onto it is :func:`trainkit.utils.batch.move_to_device`."""

from __future__ import annotations

import torch

from trainkit.utils.batch import move_to_device  # importable from here too, where it used to live

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
