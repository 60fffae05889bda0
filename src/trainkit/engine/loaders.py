"""Preparing a loader once: the DDP sampler, sample-stable seeding, and the replay of an interrupted epoch.

``Trainer.fit`` hands the user's training loader to :class:`TrainLoader`, which rebuilds a map-style
``DataLoader`` exactly once (the user's object is left as it is):

* under DDP its default sampler becomes a ``DistributedSampler`` (``sharding.train_sampler``);
* its batch sampler is wrapped in a :class:`ResumableBatchSampler`, which records the RNG states the
  epoch's order is drawn from, so a checkpoint written mid-epoch can replay that order and skip the
  batches already trained on without loading them;
* with sample seeding (:class:`~trainkit.engine.seeding.Seeding`, on by default) the batch sampler yields
  ``(index, epoch, position)`` keys and the dataset is wrapped in a
  :class:`~trainkit.engine.seeding.SeededDataset`, which seeds the global RNGs
  from ``(seed, epoch, position)`` right before the user's ``__getitem__``: in DataLoader workers by
  default, in every process with ``sample_seeding="always"``. A sample's augmentation then depends on
  neither the worker that loads it, nor the number of workers, nor an interruption.

Evaluation loaders are only sharded under DDP (:func:`prepare_eval_loader`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, Sampler

from trainkit.engine.seeding import SeededDataset, seeded_dataset

if TYPE_CHECKING:  # distributed.py imports this module (through sharding.py) for the evaluation loaders
    from trainkit.engine.distributed import DistributedContext

__all__ = ["ResumableBatchSampler", "TrainLoader", "prepare_eval_loader", "rebuild_loader"]


class ResumableBatchSampler(Sampler[list[Any]]):
    """Wrap a batch sampler so an epoch can be replayed from its recorded RNG states.

    A plain ``DataLoader(shuffle=True)`` draws its epoch's permutation from the global torch RNG (or its
    ``generator``) when the first batch is requested; this wrapper records those RNG states at that very
    moment, and on :meth:`replay` draws the same permutation again and skips the consumed batches at the
    index level (no sample is loaded), then restores the RNG. With ``seeded=True`` each index ``i`` comes
    out as the key ``(i, epoch, position)`` that :class:`SeededDataset` reads, ``position`` counting the
    samples of the epoch across all ranks (``local * num_replicas + rank``), so it is unique in the epoch.

    Attributes:
        epoch_state: the RNG states the current epoch's permutation was drawn from (saved in
            checkpoints); ``None`` before the first epoch.

    Example:
        >>> from torch.utils.data import RandomSampler
        >>> s = ResumableBatchSampler(BatchSampler(RandomSampler(range(6)), 2, False))
        >>> first = list(s)
        >>> s.replay(s.epoch_state, skip=1)
        >>> list(s) == first[1:]
        True
        >>> keyed = ResumableBatchSampler(BatchSampler(range(4), 2, False), seeded=True)
        >>> keyed.set_epoch(3); list(keyed)
        [[(0, 3, 0), (1, 3, 1)], [(2, 3, 2), (3, 3, 3)]]
    """

    def __init__(self, batch_sampler: Any, *, seeded: bool = False, num_replicas: int = 1, rank: int = 0):
        self.batch_sampler = batch_sampler
        self.seeded, self.num_replicas, self.rank = seeded, num_replicas, rank
        self.epoch = 0
        self.epoch_state: dict[str, Any] | None = None
        self._replay: tuple[dict[str, Any], int] | None = None

    def replay(self, epoch_state: dict[str, Any] | None, skip: int) -> None:
        """Make the next iteration repeat the epoch drawn from ``epoch_state``, minus ``skip`` batches.

        Example:
            >>> from torch.utils.data import SequentialSampler
            >>> s = ResumableBatchSampler(BatchSampler(SequentialSampler(range(4)), 2, False))
            >>> s.replay(None, skip=1); list(s)
            [[2, 3]]
        """
        self._replay = (epoch_state or {}, int(skip))

    def set_epoch(self, epoch: int) -> None:
        """Remember the epoch (for the keys) and forward it to the wrapped sampler (``DistributedSampler``).

        Example:
            >>> from torch.utils.data import SequentialSampler
            >>> s = ResumableBatchSampler(BatchSampler(SequentialSampler(range(4)), 2, False))
            >>> s.set_epoch(1); s.epoch
            1
        """
        self.epoch = int(epoch)
        for obj in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            set_epoch = getattr(obj, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
                return

    def __len__(self) -> int:
        skip = self._replay[1] if self._replay is not None else 0
        return max(0, len(self.batch_sampler) - skip)

    def __iter__(self) -> Iterator[list[Any]]:
        # DataLoader's multi-worker iterator calls iter() on the batch sampler twice and may start either
        # iterator: each captures the pending replay here, and the one that runs takes it at its first next(),
        # which is also when the epoch's permutation is drawn (or recorded).
        return self._iterate(self._replay)

    def _iterate(self, replay: tuple[dict[str, Any], int] | None) -> Iterator[list[Any]]:
        self._replay = None
        skipped = 0
        if replay is None:
            self.epoch_state = _get_states(self.batch_sampler)
            iterator = iter(self.batch_sampler)
        else:
            state, skip = replay
            outer = torch.get_rng_state()
            if state:
                _set_states(self.batch_sampler, state)
            iterator = iter(self.batch_sampler)
            for _ in range(skip):  # indices only: no sample is loaded
                batch = next(iterator, None)
                if batch is None:
                    break
                skipped += len(batch)
            torch.set_rng_state(outer)
            self.epoch_state = state or None
        if not self.seeded:
            yield from iterator
            return
        epoch, world, rank, position = self.epoch, self.num_replicas, self.rank, skipped
        for batch in iterator:
            yield [(index, epoch, (position + k) * world + rank) for k, index in enumerate(batch)]
            position += len(batch)


class TrainLoader:
    """The training loader as ``Trainer.fit`` iterates it, prepared once from the user's loader.

    A map-style ``DataLoader`` is rebuilt once (see the module docstring): sharded under DDP, with a
    :class:`ResumableBatchSampler`, pinned memory on CUDA and, with sample seeding, a
    :class:`SeededDataset`. Any other iterable (a list of batches, an ``IterableDataset`` loader) is used
    as given.

    Args:
        loader: the user's training loader.
        dist: the run's :class:`~trainkit.engine.distributed.DistributedContext`.
        seed: the run's seed (resolved: never ``None``).
        sample_seeding: ``"workers"``, ``"always"`` or ``False`` (see :class:`~trainkit.engine.seeding.Seeding`).
        pin_memory: turn on pinned memory (the Trainer asks for it on CUDA).

    Example:
        >>> from trainkit.engine.distributed import DistributedContext
        >>> data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
        >>> loader = TrainLoader(DataLoader(data, batch_size=4), DistributedContext.single(), seed=0)
        >>> loader.num_batches, [len(x) for x, y in loader.batches(epoch=0, skip=1)]
        (2, [4])
    """

    def __init__(
        self,
        loader: Iterable[Any],
        dist: DistributedContext,
        *,
        seed: int,
        sample_seeding: str | bool = "workers",
        pin_memory: bool = False,
    ):
        self.given = loader
        seeded = sample_seeding is not False
        # "workers" seeds in worker processes only: without workers the samples draw from the main process's
        # stream (checkpointed), so the loader needs neither keys nor the seeding wrapper.
        workers = getattr(loader, "num_workers", 0) > 0
        seeds_samples = sample_seeding == "always" or (seeded and workers)
        sampler = dist.train_sampler(loader, seed=seed) if isinstance(loader, DataLoader) else None
        rebuilt = rebuild_loader(
            loader,
            sampler=sampler,
            pin_memory=pin_memory,
            seed=seed if seeds_samples else None,
            always=sample_seeding == "always",
            num_replicas=dist.world_size,
            rank=dist.rank,
        )
        if rebuilt is None and isinstance(loader, DataLoader):
            _warn_not_rebuilt(loader, dist, seeded)
        self.loader: Iterable[Any] = rebuilt if rebuilt is not None else loader
        self.sampler: ResumableBatchSampler | None = rebuilt.batch_sampler if rebuilt is not None else None  # type: ignore[assignment]  # rebuild_loader puts one there

    def close(self) -> None:
        """Stop the worker processes of the loader rebuilt here now, rather than when it is collected.

        ``fit`` calls it when training ends on an error: the traceback then holds the loader in a reference
        cycle, and its persistent workers would outlive the run until the next garbage collection. A loader
        used as given (not rebuilt) is the user's, and left alone.

        Example:
            >>> from trainkit.engine.distributed import DistributedContext
            >>> loader = TrainLoader([1, 2], DistributedContext.single(), seed=0)
            >>> loader.close(); list(loader.batches(epoch=0))
            [1, 2]
        """
        if self.loader is self.given:
            return
        iterator = getattr(self.loader, "_iterator", None)  # DataLoader keeps its persistent workers' iterator here
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
            self.loader._iterator = None  # type: ignore[attr-defined]  # the next epoch starts fresh workers

    @property
    def num_batches(self) -> int | None:
        """Batches in a whole epoch, or ``None`` when the loader has no length.

        Example:
            >>> from trainkit.engine.distributed import DistributedContext
            >>> TrainLoader([1, 2, 3], DistributedContext.single(), seed=0).num_batches
            3
        """
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def batches(self, epoch: int, skip: int = 0, epoch_state: dict[str, Any] | None = None) -> Iterable[Any]:
        """The batches of ``epoch``: all of them, or those after the first ``skip`` of an interrupted epoch.

        ``epoch_state`` is what :meth:`epoch_state` returned when the checkpoint was written; the
        epoch's order is drawn again from it. Tells the datasets and samplers the epoch first
        (:func:`trainkit.data.set_epoch`). A loader that cannot be replayed restarts the epoch, with a
        warning, and the caller's ``skip`` no longer holds: check :attr:`restarted`.

        Example:
            >>> from trainkit.engine.distributed import DistributedContext
            >>> loader = TrainLoader([10, 20, 30], DistributedContext.single(), seed=0)
            >>> list(loader.batches(epoch=0))
            [10, 20, 30]
        """
        from trainkit.data import set_epoch

        self.restarted = False
        set_epoch(self.loader, epoch)
        if skip == 0:
            return self.loader
        if self.sampler is None:
            warnings.warn(
                "resuming mid-epoch with a loader trainkit cannot rebuild (not a map-style DataLoader): the epoch "
                "restarts from its first batch",
                stacklevel=5,  # the user line that called fit
            )
            self.restarted = True
            return self.loader
        # Replay the epoch's permutation past the consumed batches, then put back the RNG state of the moment
        # the checkpoint was written (creating the iterator may draw, e.g. the workers' base seed).
        from trainkit.utils.seed import get_rng_state, set_rng_state

        saved_size = (epoch_state or {}).get("batch_size")
        if saved_size is not None and saved_size != self.batch_size:
            raise ValueError(
                f"the checkpoint was written in the middle of epoch {epoch + 1}, after {skip} batch(es) of "
                f"{saved_size} samples, and this training loader makes batches of {self.batch_size}: continuing at "
                f"batch {skip} would skip or repeat samples. Resume with `batch_size={saved_size}` (change it at an "
                "epoch boundary instead: `ModelCheckpoint` writes last.pt at the end of every epoch)"
            )
        rng = get_rng_state()
        self.sampler.replay({k: v for k, v in (epoch_state or {}).items() if k != "batch_size"}, skip=skip)
        iterator = iter(self.loader)
        set_rng_state(rng)
        return iterator

    @property
    def batch_size(self) -> int | None:
        """Samples a batch (``None`` when the loader does not say), recorded with a mid-epoch position.

        Example:
            >>> from trainkit.engine.distributed import DistributedContext
            >>> TrainLoader(DataLoader(range(8), batch_size=4), DistributedContext.single(), seed=0).batch_size
            4
        """
        size = getattr(self.sampler.batch_sampler, "batch_size", None) if self.sampler is not None else None
        return size if isinstance(size, int) else getattr(self.given, "batch_size", None)

    def epoch_state(self) -> dict[str, Any] | None:
        """The RNG states the current epoch's order was drawn from and the batch size (for a mid-epoch
        checkpoint), if known.

        Example:
            >>> from trainkit.engine.distributed import DistributedContext
            >>> TrainLoader([1], DistributedContext.single(), seed=0).epoch_state() is None
            True
        """
        if self.sampler is None or self.sampler.epoch_state is None:
            return None
        return {**self.sampler.epoch_state, "batch_size": self.batch_size}


def _warn_not_rebuilt(loader: DataLoader[Any], dist: DistributedContext, seeded: bool) -> None:
    iterable = isinstance(loader.dataset, IterableDataset)
    what = "an IterableDataset" if iterable else "a DataLoader without automatic batching (`batch_size=None`)"
    notes = []
    if seeded:
        notes.append(
            "its samples cannot be seeded per position, so augmentations drawn in workers depend on `num_workers`"
        )
    notes.append("a resume restarts an interrupted epoch from its first batch")
    if dist.enabled:
        notes.append("under DDP it is not sharded: every rank sees all of it")
    warnings.warn(
        f"the training loader reads {what} (IterableDataset and unbatched loaders cannot be rebuilt): "
        + "; ".join(notes)
        + ". Results are not exactly reproducible across worker counts and interruptions",
        UserWarning,
        stacklevel=4,  # the user line that called fit
    )


def rebuild_loader(
    loader: Any,
    *,
    sampler: Sampler[Any] | None = None,
    pin_memory: bool = False,
    seed: int | None = None,
    always: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader[Any] | None:
    """A copy of ``loader`` with a :class:`ResumableBatchSampler`, and optionally another ``sampler`` and
    sample seeding (``seed`` not ``None``: a :class:`SeededDataset` fed by keyed batches).

    ``pin_memory=True`` turns on pinned host memory; it never turns it off. Returns ``None`` when the
    loader cannot be rebuilt (not a ``DataLoader``, an ``IterableDataset``, or no batch sampler because
    automatic batching is off).

    Example:
        >>> loader = DataLoader(list(range(10)), batch_size=4, shuffle=True)
        >>> type(rebuild_loader(loader).batch_sampler).__name__
        'ResumableBatchSampler'
        >>> sorted(int(i) for batch in rebuild_loader(loader, seed=0) for i in batch)[:3]
        [0, 1, 2]
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    inner = loader.batch_sampler
    if inner is None:
        return None
    dataset = loader.dataset
    if isinstance(dataset, SeededDataset):  # a loader trainkit already prepared: start from the user's parts
        dataset = dataset.dataset
    if isinstance(inner, ResumableBatchSampler):
        inner = inner.batch_sampler
    if sampler is not None:
        batch_size = getattr(inner, "batch_size", loader.batch_size)
        drop_last = getattr(inner, "drop_last", loader.drop_last)
        if batch_size is None:
            return None
        inner = BatchSampler(sampler, batch_size, drop_last)
    batch_sampler = ResumableBatchSampler(inner, seeded=seed is not None, num_replicas=num_replicas, rank=rank)
    kwargs: dict[str, Any] = {
        "batch_sampler": batch_sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
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
    if seed is not None:
        dataset = seeded_dataset(dataset, seed, always=always)
    return DataLoader(dataset, **kwargs)


def prepare_eval_loader(
    loader: Iterable[Any] | None, dist: DistributedContext, *, device: torch.device
) -> Iterable[Any] | None:
    """``loader`` sharded across the DDP ranks (unchanged in one process); ``None`` stays ``None``.

    Example:
        >>> from trainkit.engine.distributed import DistributedContext
        >>> prepare_eval_loader(None, DistributedContext.single(), device=torch.device("cpu")) is None
        True
    """
    if loader is None:
        return None
    return dist.shard_eval_loader(loader, pin_memory=device.type == "cuda")


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
    set_epoch = getattr(getattr(batch_sampler, "sampler", None), "set_epoch", None)
    if "sampler_epoch" in state and callable(set_epoch):
        set_epoch(state["sampler_epoch"])
