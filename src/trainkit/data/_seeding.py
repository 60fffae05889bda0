"""Telling datasets the epoch; the per-sample seeding primitives, re-exported from ``trainkit.utils.seed``.

With PyTorch's stock worker seeding, the draw a sample gets depends on which worker loads it and how many
samples that worker loaded before, so augmentations change with ``num_workers`` and differ after a resume
in the middle of training. Seeding the global RNGs from ``(seed, epoch, position)`` right before each
sample is loaded makes its draws a pure function of those three numbers, whatever the dataset draws from
(``torch``, ``numpy.random`` or ``random``): :func:`seed_sample` does that, :func:`sample_rng` also puts the
caller's RNG states back afterwards. The ``Trainer`` applies it to every map-style training loader
(``trainkit.engine.Seeding``).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import ConcatDataset, DataLoader, Dataset

from trainkit.data._encoding import is_int
from trainkit.utils.seed import sample_rng, sample_seed, seed_sample

__all__ = ["check_epoch", "sample_rng", "sample_seed", "seed_sample", "set_epoch"]


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
        >>> class Counting(Dataset):
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
