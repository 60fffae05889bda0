"""Loaders that can continue mid-epoch at the exact next batch, without loading skipped data.

A plain ``DataLoader(shuffle=True)`` draws its epoch's permutation from the global torch RNG (or
its ``generator``) when the first batch is requested. :class:`ResumableBatchSampler` wraps the
loader's batch sampler and records those RNG states at that very moment; on resume it replays the
draw from the recorded states and skips the consumed batches at the index level (only indices
are produced, no sample is decoded), then restores the RNG. The rebuilt loader keeps everything
else of the user's (dataset, collate_fn, workers, pin_memory, ...), so an uninterrupted run draws
exactly what a hand-written loop over the user's loader would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

__all__ = ["ResumableBatchSampler", "rebuild_loader"]


class ResumableBatchSampler(Sampler[list[int]]):
    """Wrap a batch sampler so an epoch can be replayed from its recorded RNG states.

    Attributes:
        epoch_state: the RNG states the current epoch's permutation was drawn from (saved in
            checkpoints); ``None`` before the first epoch.

    Example:
        >>> from torch.utils.data import BatchSampler, RandomSampler
        >>> s = ResumableBatchSampler(BatchSampler(RandomSampler(range(6)), 2, False))
        >>> first = list(s)
        >>> s.replay(s.epoch_state, skip=1)
        >>> list(s) == first[1:]
        True
    """

    def __init__(self, batch_sampler: Any):
        self.batch_sampler = batch_sampler
        self.epoch_state: dict[str, Any] | None = None
        self._replay: tuple[dict[str, Any], int] | None = None

    def replay(self, epoch_state: dict[str, Any] | None, skip: int) -> None:
        """Make the next iteration repeat the epoch drawn from ``epoch_state``, minus ``skip`` batches.

        Example:
            >>> from torch.utils.data import BatchSampler, SequentialSampler
            >>> s = ResumableBatchSampler(BatchSampler(SequentialSampler(range(4)), 2, False))
            >>> s.replay(None, skip=1); list(s)
            [[2, 3]]
        """
        self._replay = (epoch_state or {}, int(skip))

    def set_epoch(self, epoch: int) -> None:
        """Forward ``set_epoch`` to the wrapped sampler (a ``DistributedSampler`` reshuffles per epoch).

        Example:
            >>> from torch.utils.data import BatchSampler, SequentialSampler
            >>> ResumableBatchSampler(BatchSampler(SequentialSampler(range(4)), 2, False)).set_epoch(1)
        """
        for obj in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)
                return

    def __len__(self) -> int:
        skip = self._replay[1] if self._replay is not None else 0
        return max(0, len(self.batch_sampler) - skip)

    def __iter__(self) -> Iterator[list[int]]:
        if self._replay is None:
            return self._record_then_iterate()
        return self._replay_then_iterate(*self._replay)

    def _replay_then_iterate(self, state: dict[str, Any], skip: int) -> Iterator[list[int]]:
        # Runs at the first next(), not at iter(): DataLoader's multi-worker iterator calls iter() on the batch
        # sampler twice and keeps only the second iterator, so an eager replay would be spent on the discarded one.
        self._replay = None
        outer = torch.get_rng_state()
        if state:
            _set_states(self.batch_sampler, state)
        iterator = iter(self.batch_sampler)
        for _ in range(skip):  # indices only: no sample is loaded
            if next(iterator, None) is None:
                break
        torch.set_rng_state(outer)
        self.epoch_state = state or None
        yield from iterator

    def _record_then_iterate(self) -> Iterator[list[int]]:
        # Runs at the first next(): right before the wrapped sampler draws its permutation.
        self.epoch_state = _get_states(self.batch_sampler)
        yield from self.batch_sampler


def rebuild_loader(
    loader: Any,
    *,
    sampler: Sampler[Any] | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    dataset: Any = None,
) -> DataLoader[Any] | None:
    """A copy of ``loader`` with a :class:`ResumableBatchSampler` (and optionally another sampler, ``collate_fn``
    or ``dataset`` of the same length).

    ``pin_memory=True`` turns on pinned host memory (the Trainer asks for it on CUDA, where it
    makes the non-blocking host-to-device copies asynchronous); it never turns it off.

    Returns ``None`` when the loader cannot be rebuilt (not a ``DataLoader``, an
    ``IterableDataset``, or no batch sampler because automatic batching is off).

    Example:
        >>> loader = DataLoader(list(range(10)), batch_size=4, shuffle=True)
        >>> type(rebuild_loader(loader).batch_sampler).__name__
        'ResumableBatchSampler'
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    unchanged = sampler is None and collate_fn is None and dataset is None and loader.pin_memory >= pin_memory
    if isinstance(loader.batch_sampler, ResumableBatchSampler) and unchanged:
        return loader
    inner = loader.batch_sampler
    if inner is None:
        return None
    if isinstance(inner, ResumableBatchSampler):
        inner = inner.batch_sampler
    if sampler is not None:
        batch_size = getattr(inner, "batch_size", loader.batch_size)
        drop_last = getattr(inner, "drop_last", loader.drop_last)
        if batch_size is None:
            return None
        inner = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
    kwargs: dict[str, Any] = {
        "batch_sampler": ResumableBatchSampler(inner),
        "num_workers": loader.num_workers,
        "collate_fn": collate_fn or loader.collate_fn,
        "pin_memory": loader.pin_memory or pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    return DataLoader(loader.dataset if dataset is None else dataset, **kwargs)


def _generators(batch_sampler: Any) -> dict[str, torch.Generator]:
    found = {}
    sampler = getattr(batch_sampler, "sampler", None)
    for name, obj in (("batch_sampler", batch_sampler), ("sampler", sampler)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator):
            found[name] = gen
    return found


def _get_states(batch_sampler: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    state.update({f"generator/{k}": g.get_state() for k, g in _generators(batch_sampler).items()})
    epoch = getattr(getattr(batch_sampler, "sampler", None), "epoch", None)
    if isinstance(epoch, int):
        state["sampler_epoch"] = epoch
    return state


def _set_states(batch_sampler: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    for name, gen in _generators(batch_sampler).items():
        if f"generator/{name}" in state:
            gen.set_state(state[f"generator/{name}"])
    sampler = getattr(batch_sampler, "sampler", None)
    if "sampler_epoch" in state and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(state["sampler_epoch"])
