"""The training loader's preparation: resumable batch sampler, sample-stable seeding, ``Seeding``."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Subset, TensorDataset
from torchvision.transforms import v2

import data_layouts as layouts
import trainkit
from trainkit.data import SegmentationDataset, collate, set_epoch
from trainkit.engine.distributed import DistributedContext
from trainkit.engine.loaders import ResumableBatchSampler, TrainLoader, rebuild_loader
from trainkit.engine.seeding import SeededDataset, Seeding


class Noisy(Dataset):
    """A user's dataset that augments with all three global RNGs."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()])


def _epoch(loader: DataLoader, epoch: int) -> torch.Tensor:
    set_epoch(loader, epoch)
    return torch.cat(list(loader))


def test_seeding_arguments() -> None:
    assert Seeding.of(5).seed == 5 and Seeding.of(None).sample_seeding == "workers"
    assert Seeding(1, sample_seeding=True).sample_seeding == "workers"
    assert trainkit.Seeding is Seeding and trainkit.engine.Seeding is Seeding
    with pytest.raises(ValueError, match=r"`sample_seeding` must be 'workers' \(or True\), 'always' or False, got 'x'"):
        Seeding(0, sample_seeding="x")
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*32\) or None, got -1"):
        Seeding(-1)
    with pytest.raises(ValueError, match=r"got 1.5"):
        trainkit.Trainer(torch.nn.Linear(2, 2), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1), seed=1.5)


def test_keys_count_positions_so_a_repeated_index_gets_another_draw() -> None:
    loader = DataLoader(Noisy(), batch_size=4, sampler=RandomSampler(range(10), replacement=True, num_samples=40))
    torch.manual_seed(0)
    seeded = rebuild_loader(loader, seed=3, always=True)
    got = _epoch(seeded, 0)
    index, draws = got[:, 0], got[:, 1:]
    repeated = [i for i in index.unique() if (index == i).sum() > 1]
    assert repeated  # 40 draws from 10 indices
    for i in repeated:
        rows = draws[index == i]
        assert len({tuple(r.tolist()) for r in rows}) == len(rows)  # each occurrence drew anew
    torch.manual_seed(0)
    again = _epoch(rebuild_loader(loader, seed=3, always=True), 0)
    assert torch.equal(got, again)  # the same seed and order: the same draws
    assert not torch.equal(_epoch(seeded, 1)[:, 1:], got[:, 1:])  # another epoch: other draws


def test_always_restores_the_main_process_rng_and_workers_mode_leaves_the_main_process_alone() -> None:
    def draw_after(dataset: Dataset) -> tuple:
        torch.manual_seed(1)
        np.random.seed(1)
        random.seed(1)
        _epoch(rebuild_loader(DataLoader(dataset, batch_size=5), seed=0, always=True), 0)
        return torch.rand(1).item(), np.random.rand(), random.random()

    quiet = Subset(list(torch.zeros(10, 4)), range(10))  # draws nothing
    assert draw_after(Noisy()) == draw_after(quiet)  # the samples' draws left the main process's streams alone
    loader = DataLoader(Noisy(), batch_size=5)
    always = _epoch(rebuild_loader(loader, seed=0, always=True), 0)
    workers_mode = _epoch(rebuild_loader(loader, seed=0, always=False), 0)  # in the main process: unseeded
    assert not torch.equal(always, workers_mode)


@pytest.mark.slow
def test_worker_counts_give_the_same_draws_and_always_matches_the_main_process(tmp_path: Path) -> None:
    layout = layouts.penn_fudan(tmp_path, n=6)
    transforms = v2.Compose([v2.RandomCrop((16, 16)), v2.RandomHorizontalFlip(), v2.ColorJitter(0.5, 0.5)])
    ds = SegmentationDataset(layout.images, layout.masks, mask_suffix="_mask", transforms=transforms)
    runs = {}
    for workers in (0, 1, 2):
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
        prepared = rebuild_loader(loader, seed=7, always=True)
        runs[workers] = [
            [(image, mask) for image, mask in _batches(prepared, epoch)] for epoch in (0, 1)
        ]  # persistent workers see the epoch through the keys
    for workers in (1, 2):
        for epoch in (0, 1):
            for (a_img, a_mask), (b_img, b_mask) in zip(runs[0][epoch], runs[workers][epoch], strict=True):
                assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(runs[0][0], runs[0][1], strict=True))


def _batches(loader: DataLoader, epoch: int) -> list:
    set_epoch(loader, epoch)
    return list(loader)


def test_a_replayed_epoch_continues_the_positions() -> None:
    sampler = ResumableBatchSampler(torch.utils.data.BatchSampler(RandomSampler(range(8)), 3, False), seeded=True)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.replay(sampler.epoch_state, skip=1)
    assert list(sampler) == full[1:]
    assert [key[2] for batch in full for key in batch] == list(range(8))
    ranked = ResumableBatchSampler(
        torch.utils.data.BatchSampler(range(4), 2, False), seeded=True, num_replicas=2, rank=1
    )
    assert [key[2] for batch in ranked for key in batch] == [1, 3, 5, 7]  # unique across ranks


def test_seeded_dataset_passes_plain_indices_and_batched_fetches() -> None:
    class Batched(Noisy):
        def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
            return [self[i] for i in indices]

    assert SeededDataset(Noisy(), 0, always=False)[3][0] == 3
    loader = rebuild_loader(DataLoader(Batched(), batch_size=5), seed=0, always=True)
    a, b = _epoch(loader, 0), _epoch(loader, 0)
    assert torch.equal(a, b) and a[:, 0].tolist() == list(range(10))


def test_train_loader_is_prepared_once_and_keeps_the_users_loader() -> None:
    user = DataLoader(Subset(Noisy(), range(8)), batch_size=4, shuffle=True, num_workers=0)
    prepared = TrainLoader(user, DistributedContext.single(), seed=0, sample_seeding="always")
    assert isinstance(prepared.loader.dataset, SeededDataset) and user.batch_sampler is not prepared.sampler
    # "workers" without workers: the samples draw from the main process's stream, nothing to wrap
    assert TrainLoader(user, DistributedContext.single(), seed=0).loader.dataset is user.dataset
    assert prepared.num_batches == 2 and prepared.epoch_state() is None
    assert len(list(prepared.batches(0))) == 2 and prepared.epoch_state() is not None
    off = TrainLoader(user, DistributedContext.single(), seed=0, sample_seeding=False)
    assert off.loader.dataset is user.dataset


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(8):
            yield torch.randn(2), torch.tensor(i % 2)


def test_an_iterable_dataset_warns_once_that_it_cannot_be_seeded_per_position() -> None:
    model = torch.nn.Linear(2, 2)
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu", progress=False
    )
    with pytest.warns(UserWarning, match=r"IterableDataset.*cannot be seeded per position") as caught:
        trainer.fit(DataLoader(Stream(), batch_size=4), epochs=2)
    assert sum("IterableDataset" in str(w.message) for w in caught) == 1
    assert caught[0].filename == __file__  # points at the user's fit call
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a map-style loader: no warning
        pairs = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
        trainer.fit(DataLoader(pairs, batch_size=4), epochs=3)  # a second fit continues the run to 3 epochs


def test_seed_none_draws_a_seed_and_saves_it(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    data = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu", progress=False,
        run_dir=tmp_path,
    )  # fmt: skip
    assert trainer.seed is None
    trainer.fit(data, epochs=1)
    assert isinstance(trainer.seed, int) and 0 <= trainer.seed < 2**32
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["seed"] == trainer.seed
    other = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu", progress=False,
        run_dir=tmp_path,
    )  # fmt: skip
    other.fit(data, epochs=2, resume="last")
    assert other.seed == trainer.seed  # a resume continues with the saved seed


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_replay_skips_the_trained_batches_with_any_worker_count(workers: int) -> None:
    # The multi-worker iterator calls iter() on the batch sampler twice and starts one of the two.
    prepared = TrainLoader(
        DataLoader(list(range(24)), batch_size=4, shuffle=True, num_workers=workers),
        DistributedContext.single(),
        seed=0,
    )
    full = [batch.tolist() for batch in prepared.batches(0)]
    state = prepared.epoch_state()
    torch.manual_seed(99)  # the replay draws the recorded permutation, not a new one
    assert [batch.tolist() for batch in prepared.batches(0, skip=2, epoch_state=state)] == full[2:]


class _FailsAt(Dataset):
    """A user's dataset whose sample 20 cannot be read."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index == 20:
            raise ValueError("sample 20 is corrupt")
        return torch.ones(4), torch.tensor(0)


def test_a_data_error_in_a_worker_leaves_no_worker_process_behind() -> None:
    import multiprocessing

    before = set(multiprocessing.active_children())
    model = torch.nn.Linear(4, 2)
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), 0.1), torch.nn.CrossEntropyLoss(), device="cpu", progress=False
    )
    loader = DataLoader(_FailsAt(), batch_size=4, num_workers=2, persistent_workers=True)
    with pytest.raises(ValueError, match="sample 20 is corrupt"):
        trainer.fit(loader, epochs=1)
    # Without the shutdown, the two persistent workers live on with the trainer (and its traceback cycle).
    assert set(multiprocessing.active_children()) == before
    good = DataLoader(TensorDataset(torch.ones(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4, num_workers=1)
    assert len(trainer.fit(good, epochs=1)) == 1  # the trainer trains on afterwards
    assert trainer.fit(good, epochs=2)[-1]["epoch"] == 2
