"""Distributed data parallel under ``torchrun``: detection, process group, DDP, samplers, reductions.

PyTorch does the distribution; this module only does the bookkeeping. When ``torchrun`` (or
``srun torchrun``) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``, the :class:`Trainer`:

* initialises the default process group when the user has not (``nccl`` on CUDA, ``gloo`` on CPU);
* uses one device per local rank and wraps the model in ``DistributedDataParallel``
  (visible as ``trainer.model``; ``trainer.module`` is the user's model);
* shards the training loader with ``DistributedSampler`` (shuffling kept, padded to equal
  length so every rank takes the same number of steps) and the evaluation loader with
  :class:`ShardSampler`, which never pads, so no sample is counted twice in metrics;
* sums loss totals and metric counts across ranks, so every rank reports the same values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler

__all__ = ["DistributedContext", "ShardSampler", "torchrun_env"]


def torchrun_env() -> dict[str, int] | None:
    """``{"rank", "local_rank", "world_size"}`` from torchrun's environment, or ``None`` outside it.

    Example:
        >>> torchrun_env() is None or "rank" in torchrun_env()
        True
    """
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        return None
    return {"rank": rank, "local_rank": local, "world_size": world}


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset: disjoint, unpadded shards for evaluation.

    Ranks may get one sample more or less than each other; evaluation sums counts across ranks,
    so the result equals a single-process pass over the same data exactly.

    Example:
        >>> list(ShardSampler(range(5), num_replicas=2, rank=1))
        [1, 3]
    """

    def __init__(self, data_source: Any, num_replicas: int, rank: int, base: Sampler[int] | None = None):
        self.data_source, self.num_replicas, self.rank = data_source, num_replicas, rank
        self.base = base

    def __iter__(self) -> Iterator[int]:
        order = list(self.base) if self.base is not None else range(len(self.data_source))
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        n = len(self.base) if self.base is not None else len(self.data_source)  # type: ignore[arg-type]
        return max(0, math.ceil((n - self.rank) / self.num_replicas))


@dataclass
class DistributedContext:
    """This process's place in a (possibly single-process) run.

    Example:
        >>> ctx = DistributedContext.single()
        >>> ctx.is_main, ctx.world_size
        (True, 1)
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @classmethod
    def single(cls) -> DistributedContext:
        """A single-process context.

        Example:
            >>> DistributedContext.single().enabled
            False
        """
        return cls()

    @classmethod
    def detect(cls, device: torch.device) -> DistributedContext:
        """Join the torchrun group (initialising it when needed) or return a single-process context.

        Example:
            >>> DistributedContext.detect(torch.device("cpu")).world_size >= 1
            True
        """
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
        env = torchrun_env()
        if env is None or env["world_size"] <= 1 or not dist.is_available():
            return cls.single()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        return cls(env["rank"], env["local_rank"], env["world_size"], owns_group=True)

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def wrap_model(
        self, model: nn.Module, device: torch.device, *, sync_batchnorm: bool = False, **ddp_kwargs: Any
    ) -> nn.Module:
        """``DistributedDataParallel(model)`` on this rank's device (unchanged when single-process).

        Example:
            >>> m = torch.nn.Linear(2, 2)
            >>> DistributedContext.single().wrap_model(m, torch.device("cpu")) is m
            True
        """
        if not self.enabled:
            return model
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)

    def train_sampler(self, loader: DataLoader[Any], seed: int) -> Sampler[int] | None:
        """A ``DistributedSampler`` replacing the loader's plain sampler (``None`` when single-process).

        Shuffling follows the original sampler (``RandomSampler`` → shuffled by ``seed`` and epoch).
        The dataset is padded with repeated samples to a multiple of the world size.

        Example:
            >>> DistributedContext.single().train_sampler(DataLoader(range(4)), seed=0) is None
            True
        """
        if not self.enabled:
            return None
        from torch.utils.data.distributed import DistributedSampler

        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            return sampler
        shuffle = isinstance(sampler, RandomSampler)
        return DistributedSampler(
            loader.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle, seed=seed, drop_last=False
        )

    def eval_sampler(self, loader: DataLoader[Any]) -> Sampler[int] | None:
        """A :class:`ShardSampler` for evaluation (``None`` when single-process).

        Example:
            >>> DistributedContext.single().eval_sampler(DataLoader(range(4))) is None
            True
        """
        if not self.enabled:
            return None
        return ShardSampler(loader.dataset, self.world_size, self.rank)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all ranks (a new tensor; the input is not changed).

        Example:
            >>> DistributedContext.single().all_reduce_sum(torch.ones(2))
            tensor([1., 1.])
        """
        if not self.enabled:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def barrier(self) -> None:
        """Wait for every rank (no-op when single-process).

        Example:
            >>> DistributedContext.single().barrier()
        """
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (e.g. one rank asked to stop early).

        Example:
            >>> DistributedContext.single().any_true(True, torch.device("cpu"))
            True
        """
        if not self.enabled:
            return flag
        value = torch.tensor(float(flag), device=device)
        return bool(self.all_reduce_sum(value).item() > 0)

    def shutdown(self) -> None:
        """Destroy the process group if this context created it.

        Example:
            >>> DistributedContext.single().shutdown()
        """
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
