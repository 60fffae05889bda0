"""Which samples each rank sees under DDP: padded shards for training, disjoint unpadded shards for evaluation.

Training: a DataLoader's default sampler (``shuffle=True/False``) is replaced by ``DistributedSampler``,
which pads the epoch with repeated samples (at most ``world_size - 1``) so that every rank takes the same
number of steps (a rank with a step fewer would leave the others waiting in DDP's all-reduce). Samples
keep their dataset index, so per-sample seeding (``dataset.set_epoch``) draws the same augmentation as in
a single process, and the sampler sits inside the ``ResumableBatchSampler`` that replays a mid-epoch position.

Evaluation: :class:`ShardSampler` splits the visited samples ``rank, rank + world, ...`` without padding, so
summed counts equal a single-process pass exactly; loaders that cannot be rebuilt are split batch by batch
(:class:`ShardedBatches`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sized
from typing import Any, cast

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from trainkit.engine.loaders import ResumableBatchSampler, rebuild_loader

__all__ = ["ShardSampler", "ShardedBatches", "eval_sampler", "shard_eval_loader", "train_sampler"]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset: disjoint, unpadded shards for evaluation.

    Ranks may get one sample more or less than each other; evaluation sums counts across ranks,
    so the result equals a single-process pass over the same data exactly.

    Args:
        data_source: the dataset (only its length is used when ``base`` is not given).
        num_replicas: the world size.
        rank: this process's rank, ``0 <= rank < num_replicas``.
        base: the indices to shard (e.g. a subset's); by default ``range(len(data_source))``.
            It must give the same order on every rank.

    Example:
        >>> list(ShardSampler(range(5), num_replicas=2, rank=1))
        [1, 3]
    """

    def __init__(self, data_source: Sized, num_replicas: int, rank: int, base: Iterable[int] | None = None):
        _check_shard(num_replicas, rank)
        self.data_source, self.num_replicas, self.rank = data_source, num_replicas, rank
        self.base = base

    def __iter__(self) -> Iterator[int]:
        order = list(self.base) if self.base is not None else range(len(self.data_source))
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        n = len(self.base) if self.base is not None else len(self.data_source)  # type: ignore[arg-type]
        return max(0, math.ceil((n - self.rank) / self.num_replicas))


class ShardedBatches:
    """Batches ``rank, rank + world, ...`` of any iterable of batches: evaluation sharding for loaders
    that cannot be rebuilt with a sampler (an ``IterableDataset``, a custom ``batch_sampler``, a list).

    Every rank still iterates (and loads) the whole loader, but runs the model on its batches only;
    the shards are disjoint, so summed counts equal a single-process pass.

    Example:
        >>> list(ShardedBatches(["a", "b", "c"], num_replicas=2, rank=0))
        ['a', 'c']
    """

    def __init__(self, batches: Iterable[Any], num_replicas: int, rank: int):
        _check_shard(num_replicas, rank)
        self.batches, self.num_replicas, self.rank = batches, num_replicas, rank

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batches):
            if i % self.num_replicas == self.rank:
                yield batch

    def __len__(self) -> int:
        n = len(self.batches)  # type: ignore[arg-type]  # TypeError when the loader has no length, as for it
        return max(0, math.ceil((n - self.rank) / self.num_replicas))


def train_sampler(loader: Any, num_replicas: int, rank: int, seed: int) -> Sampler[int] | None:
    """A ``DistributedSampler`` replacing the loader's default sampler, or ``None`` to keep the loader's.

    ``shuffle=True`` (a ``RandomSampler``) becomes a sampler shuffled by ``seed`` and the epoch;
    ``shuffle=False`` keeps the dataset order. The dataset is padded with repeated samples to a
    multiple of the world size, so every rank takes the same number of steps. A sampler that
    already knows the ranks (it has ``num_replicas``, like ``DistributedSampler``) is kept; any
    other sampler or batch sampler is kept too, with a warning that it is not sharded.

    Example:
        >>> list(train_sampler(DataLoader(range(5)), num_replicas=2, rank=1, seed=0))  # 0 repeated as padding
        [1, 3, 0]
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    batch_sampler = _inner_batch_sampler(loader)
    if batch_sampler is None or _rank_aware(loader.sampler) or _rank_aware(batch_sampler):
        return None
    if type(batch_sampler) is not BatchSampler or _whole_dataset(loader.sampler) not in ("ordered", "shuffled"):
        custom = type(batch_sampler if type(batch_sampler) is not BatchSampler else loader.sampler).__name__
        warnings.warn(
            f"under DDP trainkit shards a DataLoader's default sampler only (`shuffle=True/False`); this training "
            f"loader's {custom} is used as it is on every rank, so the ranks do not split the data. Give the "
            "loader a sampler that yields this rank's share with the same length on every rank (e.g. "
            "`Subset(dataset, indices)` with `shuffle=True` instead of a `SubsetRandomSampler`)",
            stacklevel=5,  # the user line that called fit
        )
        return None
    return DistributedSampler(
        loader.dataset,
        num_replicas=num_replicas,
        rank=rank,
        shuffle=_whole_dataset(loader.sampler) == "shuffled",
        seed=seed,
        drop_last=False,
    )


def eval_sampler(loader: DataLoader[Any], num_replicas: int, rank: int) -> ShardSampler:
    """A :class:`ShardSampler` over the samples ``loader`` visits, for evaluation.

    A loader that visits the whole dataset (``shuffle=True/False`` or a ``DistributedSampler``,
    whose padding is dropped) is sharded in dataset order; a ``SubsetRandomSampler`` by its sorted
    indices; any other sampler by its own order, which must then be the same on every rank.

    Example:
        >>> list(eval_sampler(DataLoader(range(5)), num_replicas=2, rank=1))
        [1, 3]
    """
    sampler = loader.sampler
    if _whole_dataset(sampler) is not None or isinstance(sampler, DistributedSampler):
        base: Iterable[int] | None = None
    elif type(sampler) is SubsetRandomSampler:
        base = sorted(int(i) for i in sampler.indices)
    else:
        base = sampler
    # ShardSampler takes len(dataset) only without `base`, i.e. under the default samplers or a
    # DistributedSampler, which take len(dataset) themselves: the dataset is Sized there.
    return ShardSampler(cast(Sized, loader.dataset), num_replicas, rank, base=base)


def shard_eval_loader(
    loader: Iterable[Any], num_replicas: int, rank: int, *, pin_memory: bool = False
) -> Iterable[Any]:
    """This rank's disjoint, unpadded share of an evaluation loader.

    A ``DataLoader`` with a plain batch sampler is rebuilt around :func:`eval_sampler`; anything
    else is wrapped in :class:`ShardedBatches`. Sharding an already sharded loader returns it.

    Example:
        >>> [b.tolist() for b in shard_eval_loader(DataLoader(range(5), batch_size=2), num_replicas=2, rank=0)]
        [[0, 2], [4]]
    """
    if _is_sharded(loader):
        return loader
    if (
        isinstance(loader, DataLoader)
        and not isinstance(loader.dataset, IterableDataset)
        and type(_inner_batch_sampler(loader)) is BatchSampler
    ):
        rebuilt = rebuild_loader(loader, sampler=eval_sampler(loader, num_replicas, rank), pin_memory=pin_memory)
        if rebuilt is not None:
            return rebuilt
    return ShardedBatches(loader, num_replicas, rank)


def _check_shard(num_replicas: Any, rank: Any) -> None:
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"`num_replicas` must be a positive integer, got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(
            f"`rank` must be an integer in [0, {num_replicas}) for `num_replicas={num_replicas}`, got {rank!r}"
        )


def _inner_batch_sampler(loader: DataLoader[Any]) -> Any:
    batch_sampler = loader.batch_sampler
    return batch_sampler.batch_sampler if isinstance(batch_sampler, ResumableBatchSampler) else batch_sampler


def _rank_aware(sampler: Any) -> bool:
    return isinstance(sampler, DistributedSampler) or hasattr(sampler, "num_replicas")


def _whole_dataset(sampler: Any) -> str | None:
    """``"ordered"`` / ``"shuffled"`` for a DataLoader's default samplers, ``None`` for any other sampler."""
    if type(sampler) is SequentialSampler:
        return "ordered"
    if type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(sampler.data_source):
        return "shuffled"
    return None


def _is_sharded(loader: Any) -> bool:
    if isinstance(loader, ShardedBatches):
        return True
    inner = _inner_batch_sampler(loader) if isinstance(loader, DataLoader) else None
    return isinstance(getattr(inner, "sampler", None), ShardSampler)
