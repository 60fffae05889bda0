"""Per-sample random draws derived from ``(seed, epoch, position)``, and telling datasets the epoch.

With PyTorch's stock worker seeding, the draw a sample gets depends on which worker loads it and how many
samples that worker loaded before, so augmentations change with ``num_workers`` and differ after a resume
in the middle of training. Seeding the global RNGs from ``(seed, epoch, position)`` right before each
sample is loaded makes its draws a pure function of those three numbers, whatever the dataset draws from
(``torch``, ``numpy.random`` or ``random``): :func:`seed_sample` does that, :func:`sample_rng` also puts the
caller's RNG states back afterwards. The ``Trainer`` applies it to every map-style training loader
(``trainkit.engine.Seeding``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from trainkit.data._encoding import is_int

__all__ = ["check_epoch", "sample_rng", "sample_seed", "seed_sample", "set_epoch"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64: a fast 64-bit mixer whose outputs for nearby inputs look independent."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed that is a fixed function of ``(seed, epoch, index)`` and differs when any of them does.

    Example:
        >>> sample_seed(0, 0, 1) != sample_seed(0, 0, 2) != sample_seed(0, 1, 1)
        True
    """
    mixed = _splitmix64(seed & _MASK64)
    mixed = _splitmix64(mixed ^ (epoch & _MASK64))
    return _splitmix64(mixed ^ (index & _MASK64))


def seed_sample(seed: int, epoch: int, position: int) -> None:
    """Seed torch's default CPU generator, NumPy's legacy global RNG and ``random`` for one sample.

    The cheap half of :func:`sample_rng`, for a process whose RNG belongs to the data loading (a
    DataLoader worker): about 8 us, against ~135 us for ``torch.manual_seed`` (which seeds every device)
    plus saving and restoring NumPy's state. CUDA generators are not touched.

    Example:
        >>> seed_sample(0, epoch=1, position=7); a = (torch.rand(1), np.random.rand(), random.random())
        >>> seed_sample(0, epoch=1, position=7); b = (torch.rand(1), np.random.rand(), random.random())
        >>> torch.equal(a[0], b[0]) and a[1:] == b[1:]
        True
    """
    derived = sample_seed(seed, epoch, position)
    torch.default_generator.manual_seed(derived)
    random.seed(derived & 0xFFFFFFFF)  # a 32-bit seed costs `random` 5 us instead of 8
    np.random.seed(derived >> 32)  # NumPy's legacy seed must fit in 32 bits


@contextmanager
def sample_rng(seed: int, epoch: int, position: int) -> Iterator[None]:
    """Run a block with the global RNGs seeded for one sample (:func:`seed_sample`), then restore them.

    The outer states are saved on entry and restored on exit, so the block neither depends on nor consumes
    the global random streams: the same ``(seed, epoch, position)`` gives the same draws in any process, any
    DataLoader worker, in any order. The ``Trainer`` uses it in the main process with
    ``Seeding(sample_seeding="always")``.

    Args:
        seed: The run's seed.
        epoch: The current epoch.
        position: The sample's position in the epoch's order (or any other number that identifies it).

    Example:
        >>> with sample_rng(0, epoch=1, position=7):
        ...     a = torch.rand(2)
        >>> with sample_rng(0, epoch=1, position=7):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        seed_sample(seed, epoch, position)
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def check_epoch(epoch: int) -> int:
    """``epoch`` as an int, after checking it is a non-negative integer.

    Raises:
        ValueError: ``epoch`` is not an integer ``>= 0``.

    Example:
        >>> check_epoch(3)
        3
    """
    if not is_int(epoch) or epoch < 0:
        raise ValueError(f"`epoch` must be an integer >= 0, got {epoch!r}")
    return int(epoch)


def set_epoch(loader_or_dataset: Any, epoch: int) -> None:
    """Tell every dataset (and sampler) behind a DataLoader which epoch starts, for per-sample seeding.

    Calls ``set_epoch(epoch)`` on each object that has one: a dataset such as
    :class:`~trainkit.data.SegmentationDataset`, the datasets inside ``Subset`` and ``ConcatDataset``
    wrappers, and a DataLoader's sampler (e.g. ``DistributedSampler``, which reshuffles per epoch). Call it
    before ``iter(loader)``: DataLoader workers prefetch as soon as the iterator is created.

    Args:
        loader_or_dataset: A DataLoader, a dataset, or a wrapper around one.
        epoch: The epoch about to start, ``>= 0``.

    Raises:
        ValueError: ``epoch`` is not a non-negative integer.

    Example:
        >>> from torch.utils.data import DataLoader, Subset
        >>> class Counting(torch.utils.data.Dataset):
        ...     epoch = None
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return i
        ...     def set_epoch(self, epoch): self.epoch = epoch
        >>> ds = Counting()
        >>> set_epoch(DataLoader(Subset(ds, [0, 1])), 3); ds.epoch
        3
    """
    epoch = check_epoch(epoch)
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, DataLoader):
            visit(obj.dataset)
            samplers: tuple[Any, ...] = (obj.sampler, obj.batch_sampler, getattr(obj.batch_sampler, "sampler", None))
            for sampler in samplers:
                if sampler is not None and id(sampler) not in seen and callable(getattr(sampler, "set_epoch", None)):
                    seen.add(id(sampler))
                    sampler.set_epoch(epoch)
        elif callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
        elif isinstance(getattr(obj, "dataset", None), Dataset):  # Subset and other wrappers of one dataset
            visit(obj.dataset)
        elif isinstance(obj, ConcatDataset):
            for dataset in obj.datasets:
                visit(dataset)

    visit(loader_or_dataset)
