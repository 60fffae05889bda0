"""Sample-stable randomness: ``Seeding`` (the option) and ``SeededDataset`` (the mechanism).

Each training sample's ``__getitem__`` runs with the global RNGs seeded from ``(seed, epoch, position of
the sample in the epoch's order)``. The positions come from the keys that
:class:`~trainkit.engine.loaders.ResumableBatchSampler` yields; :class:`SeededDataset` turns a key into
the seeding and the user's index. See docs/training.md for what this guarantees and what it costs.
"""

from __future__ import annotations

import secrets
from typing import Any

from torch.utils.data import Dataset, get_worker_info

from trainkit.utils.seed import sample_rng, seed_sample

__all__ = ["SeededDataset", "Seeding", "seeded_dataset"]

_MODES = ("workers", "always", False)


class Seeding:
    """How ``Trainer.fit`` seeds a run: the seed, and where each sample's draws are seeded from it.

    ``Trainer(seed=0)`` means ``Seeding(0)``; pass a ``Seeding`` to choose the per-sample mode.

    Args:
        seed: seeds Python's ``random``, NumPy and torch when a run starts afresh
            (:func:`trainkit.seed_everything`) and derives every sample's seed. ``None`` draws one when
            ``fit`` starts afresh (not from the global RNGs); it is kept as ``trainer.seed`` and saved in the
            checkpoints, so a resume continues with it.
        sample_seeding: where a sample's ``__getitem__`` runs with the global RNGs (torch's default CPU
            generator, ``numpy.random``, ``random``) seeded from ``(seed, epoch, position of the sample in
            the epoch's order)``:

            * ``"workers"`` (default; ``True`` means the same): in DataLoader worker processes, where it
              costs the main process nothing. Results are bitwise the same for every ``num_workers >= 1``,
              and a run killed at any step resumes to bitwise the same weights. With ``num_workers=0`` the
              samples draw from the main process's stream, which checkpoints save: resume is exact too.
            * ``"always"``: in the main process as well, restoring its RNG after each sample (about 0.1 ms
              a sample), so ``num_workers=0`` gives the same model as any other count.
            * ``False``: PyTorch's stock worker seeding (each worker's stream depends on its id).

            Applies to map-style ``DataLoader`` s; an ``IterableDataset`` cannot be seeded per position.

    Example:
        >>> Seeding(0, sample_seeding="always")
        Seeding(seed=0, sample_seeding='always')
        >>> Seeding.of(7).sample_seeding
        'workers'
    """

    def __init__(self, seed: int | None = None, sample_seeding: str | bool = "workers"):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
            raise ValueError(f"`seed` must be an integer in [0, 2**32) or None, got {seed!r}")
        if sample_seeding is True:
            sample_seeding = "workers"
        if sample_seeding not in _MODES:
            raise ValueError(f"`sample_seeding` must be 'workers' (or True), 'always' or False, got {sample_seeding!r}")
        self.seed = seed
        self.sample_seeding: str | bool = sample_seeding

    @classmethod
    def of(cls, value: Seeding | int | None) -> Seeding:
        """``value`` as a ``Seeding``: an int or ``None`` is the seed, with the default per-sample mode.

        Example:
            >>> Seeding.of(None).seed is None
            True
        """
        return value if isinstance(value, Seeding) else cls(value)

    def resolved(self) -> int:
        """The seed, or a new one drawn from the operating system's entropy when it is ``None``.

        Example:
            >>> Seeding(3).resolved(), 0 <= Seeding().resolved() < 2**32
            (3, True)
        """
        return self.seed if self.seed is not None else secrets.randbelow(2**32)

    def __repr__(self) -> str:
        return f"Seeding(seed={self.seed!r}, sample_seeding={self.sample_seeding!r})"


class SeededDataset(Dataset[Any]):
    """A map-style dataset whose samples are loaded under RNGs seeded from ``(seed, epoch, position)``.

    Indexed by the ``(index, epoch, position)`` keys of a seeding :class:`ResumableBatchSampler`; a
    plain index is passed through unseeded. In a DataLoader worker the global RNGs are seeded and left
    so (the worker's streams serve only the data); in the main process they are seeded only when
    ``always``, and restored afterwards.

    Example:
        >>> import torch
        >>> class Noisy(torch.utils.data.Dataset):
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return torch.rand(())
        >>> ds = SeededDataset(Noisy(), seed=0, always=True)
        >>> bool(ds[(2, 0, 5)] == ds[(3, 0, 5)]), bool(ds[(2, 0, 5)] == ds[(2, 0, 6)])  # position decides
        (True, False)
    """

    def __init__(self, dataset: Any, seed: int, *, always: bool):
        self.dataset, self.seed, self.always = dataset, int(seed), bool(always)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if type(key) is not tuple:
            return self.dataset[key]
        index, epoch, position = key
        if get_worker_info() is not None:
            seed_sample(self.seed, epoch, position)
            return self.dataset[index]
        if not self.always:
            return self.dataset[index]
        with sample_rng(self.seed, epoch, position):
            return self.dataset[index]


class _SeededBatchedDataset(SeededDataset):
    """For a dataset with ``__getitems__`` (one call a batch): the batch's draws are seeded from its first key."""

    def __getitems__(self, keys: list[Any]) -> Any:
        if not keys or type(keys[0]) is not tuple:
            return self.dataset.__getitems__(keys)
        _, epoch, position = keys[0]
        indices = [key[0] for key in keys]
        if get_worker_info() is not None:
            seed_sample(self.seed, epoch, position)
            return self.dataset.__getitems__(indices)
        if not self.always:
            return self.dataset.__getitems__(indices)
        with sample_rng(self.seed, epoch, position):
            return self.dataset.__getitems__(indices)


def seeded_dataset(dataset: Any, seed: int, *, always: bool) -> SeededDataset:
    """``dataset`` wrapped in a :class:`SeededDataset` (one that forwards ``__getitems__`` when it has one).

    Example:
        >>> seeded_dataset(list(range(3)), 0, always=False)[(1, 0, 0)]
        1
    """
    cls = _SeededBatchedDataset if callable(getattr(dataset, "__getitems__", None)) else SeededDataset
    return cls(dataset, seed, always=always)
