"""Batches on the device, with the next batch's copy overlapped with the current step on CUDA.

On CUDA the host-to-device copy (and the on-device ``batch_transform``, e.g. uint8 → normalised
float) of batch ``i + 1`` is issued on a side stream before batch ``i`` is handed to the step, so
the copy runs while the GPU computes; the compute stream waits for it with an event, never with
a host synchronisation. Elsewhere batches are moved one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from trainkit.utils.batch import batch_size_of, map_tensors, move_to_device

__all__ = ["device_batches"]

_END = object()

OVERLAP = True
"""Copy the next batch on a side stream on CUDA (``benchmarks/gpu.py`` turns it off to measure the gain)."""


def device_batches(
    loader: Iterable[Any],
    device: torch.device,
    *,
    fixer: Callable[[Any], Any] | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(batch_size, batch_on_device)`` for every batch of ``loader``.

    ``fixer`` runs on the CPU batch (dtype fixes cost no device sync there); ``transform`` runs on
    the device batch.

    Example:
        >>> [n for n, _ in device_batches([torch.zeros(2, 3), torch.zeros(1, 3)], torch.device("cpu"))]
        [2, 1]
    """
    if device.type != "cuda" or not OVERLAP:
        for batch in loader:
            n, moved = _to_device(batch, device, fixer, transform)
            yield n, moved
        return
    yield from _prefetched(loader, device, fixer, transform)


def _to_device(
    batch: Any, device: torch.device, fixer: Callable[[Any], Any] | None, transform: Callable[[Any], Any] | None
) -> tuple[int, Any]:
    n = batch_size_of(batch)
    if fixer is not None:
        batch = fixer(batch)
    batch = move_to_device(batch, device)
    return n, (transform(batch) if transform is not None else batch)


def _prefetched(
    loader: Iterable[Any],
    device: torch.device,
    fixer: Callable[[Any], Any] | None,
    transform: Callable[[Any], Any] | None,
) -> Iterator[tuple[int, Any]]:
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)
    iterator = iter(loader)

    def load(batch: Any) -> tuple[int, Any]:
        side.wait_stream(main)  # do not overwrite memory the main stream may still read
        with torch.cuda.stream(side):
            return _to_device(batch, device, fixer, transform)

    upcoming = next(iterator, _END)
    if upcoming is _END:
        return
    pending = load(upcoming)
    while True:
        main.wait_stream(side)
        n, batch = pending
        _record(batch, main)
        upcoming = next(iterator, _END)
        if upcoming is not _END:
            pending = load(upcoming)  # issued before this batch's step: the copy overlaps the compute
        yield n, batch
        if upcoming is _END:
            return


def _record(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that tensors made on the side stream are used on ``stream``."""

    def record(tensor: torch.Tensor) -> None:
        if tensor.is_cuda:
            tensor.record_stream(stream)

    map_tensors(batch, record)
