"""Distributed data parallel under ``torchrun``: detection, process group, DDP, samplers, reductions.

PyTorch does the distribution; this module only does the bookkeeping. When ``torchrun`` (or
``srun torchrun``) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``, the :class:`Trainer`:

* initialises the default process group when the user has not (``nccl`` on CUDA, ``gloo`` on CPU);
* uses one device per local rank and wraps the model in ``DistributedDataParallel``
  (visible as ``trainer.model``; ``trainer.module`` is the user's model);
* shards the training loader with ``DistributedSampler`` (shuffling kept, padded with repeated
  samples to equal length so every rank takes the same number of steps) and the evaluation loader
  with :class:`~trainkit.engine.sharding.ShardSampler`, which never pads, so no sample is counted
  twice in metrics (see :mod:`trainkit.engine.sharding`);
* sums loss totals and metric counts across ranks, so every rank reports the same values.
"""

from __future__ import annotations

import atexit
import inspect
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torch.utils.data import DataLoader, Sampler

from trainkit.engine.sharding import ShardSampler, eval_sampler, shard_eval_loader, train_sampler
from trainkit.errors import CheckpointError

__all__ = ["DistributedContext", "check_ddp_kwargs", "local_device", "torchrun_env"]

# Arguments of DistributedDataParallel that the Trainer sets itself.
_OWN_DDP_ARGS = ("module", "device_ids", "output_device")


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


def local_device(device: torch.device) -> torch.device:
    """This rank's device: under torchrun, ``cuda`` without an index becomes ``cuda:<LOCAL_RANK>``.

    An explicit index (``cuda:1``) is kept as given; outside torchrun nothing changes.

    Example:
        >>> local_device(torch.device("cpu"))
        device(type='cpu')
    """
    env = torchrun_env()
    if device.type != "cuda" or device.index is not None or env is None:
        return device
    return torch.device("cuda", env["local_rank"] % max(1, torch.cuda.device_count()))


def check_ddp_kwargs(ddp_kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for an option ``DistributedDataParallel`` does not take (checked in every run).

    Example:
        >>> check_ddp_kwargs({"find_unused_parameters": True, "static_graph": False})
    """
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    accepted = [name for name in params if name not in ("self", *_OWN_DDP_ARGS)]
    for name in ddp_kwargs:
        if name in _OWN_DDP_ARGS:
            raise TypeError(
                f"`ddp_kwargs` sets {name!r}, which the Trainer sets itself (one device per local rank); remove it "
                "and choose the device with `device=`"
            )
        if name not in accepted:
            raise TypeError(
                f"`ddp_kwargs` has {name!r}, which `DistributedDataParallel` does not take; accepted: "
                f"{', '.join(accepted)}"
            )


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

        ``device`` is this rank's device (see :func:`local_device`): CUDA selects ``nccl``, anything
        else ``gloo``; a CUDA device becomes the current device. A group the user initialised is used
        as it is. Under ``torchrun --max-restarts`` each restart attempt gets its own keys in torchrun's
        store (see :func:`_restart_safe_store`).

        Example:
            >>> DistributedContext.detect(torch.device("cpu")).world_size >= 1
            True
        """
        if dist.is_available() and dist.is_initialized():
            if device.type == "cuda" and device.index is not None:
                torch.cuda.set_device(device)  # collectives of Python objects (checkpoints, metrics) use it
            return cls(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
        env = torchrun_env()
        if env is None or env["world_size"] <= 1 or not dist.is_available():
            return cls.single()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = _restart_safe_store(env["world_size"])
        device_id = device if device.type == "cuda" else None
        if store is None:
            dist.init_process_group(backend=backend, device_id=device_id)
        else:
            dist.init_process_group(
                backend=backend, device_id=device_id, store=store, rank=env["rank"], world_size=env["world_size"]
            )
        context = cls(env["rank"], env["local_rank"], env["world_size"], owns_group=True)
        atexit.register(context.shutdown)  # the group we created is destroyed when the script ends
        return context

    @property
    def enabled(self) -> bool:
        """More than one process.

        Example:
            >>> DistributedContext(rank=0, local_rank=0, world_size=2).enabled
            True
        """
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files.

        Example:
            >>> DistributedContext(rank=1, local_rank=1, world_size=2).is_main
            False
        """
        return self.rank == 0

    def wrap_model(
        self, model: nn.Module, device: torch.device, *, sync_batchnorm: bool = False, **ddp_kwargs: Any
    ) -> nn.Module:
        """``DistributedDataParallel(model)`` on this rank's device (unchanged when single-process).

        ``ddp_kwargs`` are checked against ``DistributedDataParallel``'s options in every run, so a
        typo shows on a laptop, not first on the cluster. ``sync_batchnorm`` converts BatchNorm layers
        to ``SyncBatchNorm`` (CUDA only, as in PyTorch; a single process needs no conversion).

        Example:
            >>> m = torch.nn.Linear(2, 2)
            >>> DistributedContext.single().wrap_model(m, torch.device("cpu")) is m
            True
        """
        check_ddp_kwargs(ddp_kwargs)
        if not self.enabled:
            return model
        if sync_batchnorm:
            if device.type != "cuda":
                raise ValueError(
                    f"`sync_batchnorm=True` needs CUDA: PyTorch's SyncBatchNorm works with GPU modules only, and this "
                    f"run trains on {device}. Use `sync_batchnorm=False` (each rank normalises over its own batch)"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)

    def train_sampler(self, loader: DataLoader[Any], seed: int) -> Sampler[int] | None:
        """A ``DistributedSampler`` for the training loader, or ``None`` to keep its own (see :func:`train_sampler`).

        Example:
            >>> DistributedContext.single().train_sampler(DataLoader(range(4)), seed=0) is None
            True
        """
        return train_sampler(loader, self.world_size, self.rank, seed) if self.enabled else None

    def eval_sampler(self, loader: DataLoader[Any]) -> ShardSampler | None:
        """A :class:`ShardSampler` over the samples the loader visits (``None`` when single-process).

        Example:
            >>> DistributedContext.single().eval_sampler(DataLoader(range(4))) is None
            True
        """
        return eval_sampler(loader, self.world_size, self.rank) if self.enabled else None

    def shard_eval_loader(self, loader: Iterable[Any], *, pin_memory: bool = False) -> Iterable[Any]:
        """This rank's disjoint, unpadded share of an evaluation loader (see :func:`shard_eval_loader`).

        Example:
            >>> loader = DataLoader(range(4), batch_size=2)
            >>> DistributedContext.single().shard_eval_loader(loader) is loader
            True
        """
        if not self.enabled:
            return loader
        return shard_eval_loader(loader, self.world_size, self.rank, pin_memory=pin_memory)

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

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects; CPU tensors).

        Example:
            >>> DistributedContext.single().gather({"samples": 3})
            [{'samples': 3}]
        """
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

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

    def file_on_main(self, path: str | os.PathLike[str], device: torch.device) -> bool:
        """Whether rank 0 sees the file ``path``: one answer for all ranks, so they all resume or none does.

        Raises:
            CheckpointError: rank 0 sees the file and another rank does not (``run_dir`` is not on a
                filesystem that every node shares).

        Example:
            >>> DistributedContext.single().file_on_main("no/such/last.pt", torch.device("cpu"))
            False
        """
        here = Path(path).is_file()
        if not self.enabled:
            return here
        flags = torch.tensor([float(here and self.is_main), float(here)], dtype=torch.float64, device=device)
        on_main, seen_by = (int(v) for v in self.all_reduce_sum(flags).tolist())
        if on_main and seen_by < self.world_size:
            raise CheckpointError(
                f"{path} exists on rank 0 but {self.world_size - seen_by} of {self.world_size} ranks cannot read it; "
                "every rank loads the checkpoint on resume, so put `run_dir` on a filesystem that all nodes share"
            )
        return bool(on_main)

    def epoch_state_of(self, ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
        """This rank's running sums from a mid-epoch checkpoint, or ``None`` when they do not carry over.

        A mid-epoch checkpoint holds every rank's sums (``{"ranks": [...]}``) when written by several
        processes. Written by another number of processes, the epoch's shards differ, so the position
        in the epoch is meaningless: ``None`` (with a warning) tells the Trainer to restart the epoch.

        Example:
            >>> DistributedContext.single().epoch_state_of({"epoch_state": {"samples": 8}})
            {'samples': 8}
        """
        saved_world = int(ckpt.get("world_size", 1))
        state = dict(ckpt.get("epoch_state") or {})
        if saved_world != self.world_size:
            warnings.warn(
                f"the checkpoint was written mid-epoch by {saved_world} process(es) and this run has "
                f"{self.world_size}: the ranks' shards of the epoch differ, so the epoch restarts from its first batch",
                stacklevel=3,
            )
            return None
        return dict(state["ranks"][self.rank]) if "ranks" in state else state

    def shutdown(self) -> None:
        """Destroy the process group if this context created it.

        Example:
            >>> DistributedContext.single().shutdown()
        """
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _restart_safe_store(world_size: int) -> dist.Store | None:
    """torchrun's store with the keys of this restart attempt apart, or ``None`` for the default ``env://``.

    torchrun lends its rendezvous TCPStore to the workers (``TORCHELASTIC_USE_AGENT_STORE=True``) and keeps it
    across restarts with the previous attempt's keys still in it; with ``env://`` the restarted ranks read the
    dead workers' addresses and fail to connect ("Gloo connectFullMesh failed"). Prefixing the keys with
    ``TORCHELASTIC_RESTART_COUNT`` gives every attempt fresh ones. That count is kept by each node's agent, so
    it agrees across nodes when all of them restart their workers, which a single node always does; for
    multi-node elastic runs the docs recommend ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a fresh store every
    round, and then this function is not used).
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart is None or "MASTER_PORT" not in os.environ:
        return None
    host, port = os.environ.get("MASTER_ADDR", "localhost"), int(os.environ["MASTER_PORT"])
    agent_store = dist.TCPStore(host, port, world_size, is_master=False, timeout=default_pg_timeout)
    return dist.PrefixStore(f"trainkit/attempt_{restart}", agent_store)
