"""Sample-stable randomness (``trainkit.Seeding``) for the user's own map-style Dataset.

Each sample's ``__getitem__`` runs with torch's default generator, NumPy's legacy ``np.random`` and Python's
``random`` seeded from ``(seed, epoch, position of the sample in the epoch's order)``. The datasets here augment
with all three (``seeding_script.augment``), and most of them also hand the training step what they drew, so the
tests compare the draws themselves as well as the final weights (with ``torch.equal``):

* in DataLoader workers (the default, ``sample_seeding="workers"``): the same weights for 1, 2 and 4 workers; a
  run SIGKILLed at random mid-epoch steps and resumed with ``resume="auto"`` ends bitwise equal to the
  uninterrupted run (``seeding_script.py`` in subprocesses, as in ``test_resume.py``);
* ``"always"`` also in the main process, so 0 workers give the weights 2 workers give; ``False``: PyTorch's own
  worker seeding, under which 1 and 2 workers draw differently;
* the position, not the dataset index: an index drawn twice in one epoch gets two different draws;
* ``seed=None`` draws a seed when ``fit`` starts, keeps it as ``trainer.seed`` and saves it in checkpoints, and
  every resume continues with it;
* an ``IterableDataset`` cannot be seeded per position: ``fit`` warns once.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

import trainkit

HERE = Path(__file__).parent
SCRIPT = HERE / "seeding_script.py"
sys.path.insert(0, str(HERE))
try:
    import seeding_script
finally:
    sys.path.remove(str(HERE))

EPOCHS = 2
BATCHES_PER_EPOCH = seeding_script.BATCHES_PER_EPOCH  # batches are numbered 1, 2, ... from the start of training
TOTAL_BATCHES = EPOCHS * BATCHES_PER_EPOCH
# Stop points in the middle of an epoch: when a run prints batch n, last.pt holds batch n - 1 at least (a checkpoint
# is written every step, after the callback that prints), and the SIGKILL lands a batch or two later. Stopping at the
# 2nd to 5th of the 8 batches of an epoch leaves a mid-epoch checkpoint, and the run cannot end before the kill.
MID_EPOCH_STOPS = [b for b in range(1, TOTAL_BATCHES - 3) if 2 <= b % BATCHES_PER_EPOCH <= 5]
RNGS = ("torch", "numpy", "random")


# -- in-process runs ----------------------------------------------------------------------------------------------


class DrawingDataset(seeding_script.GlobalRngDataset):
    """``GlobalRngDataset`` that also returns the sample's index and its draws: ``(image, label, index, draws)``."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        image, draws = seeding_script.augment(self.images[index])
        return image, self.labels[index], index, draws


@dataclass
class Run:
    samples: list[tuple[int, tuple[float, ...]]]  # (dataset index, draws) of every sample, in the order trained on
    weights: dict[str, torch.Tensor]
    trainer: trainkit.Trainer


def _fit(
    seed: Any,
    workers: int,
    *,
    replacement: bool = False,
    num_samples: int = seeding_script.NUM_SAMPLES,
    epochs: int = EPOCHS,
    run_dir: Path | None = None,
) -> Run:
    """Train ``make_model()`` on a ``DrawingDataset`` with ``Trainer(seed=seed)``, recording what each step sees.

    The loader shuffles (``shuffle=True``), or with ``replacement`` draws twice the dataset's length an epoch with
    ``RandomSampler(replacement=True)``, so some index comes twice in every epoch.
    """
    dataset = DrawingDataset(num_samples)
    sampler = RandomSampler(dataset, replacement=True, num_samples=2 * num_samples) if replacement else None
    loader = DataLoader(
        dataset,
        batch_size=seeding_script.BATCH_SIZE,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
    )
    model = seeding_script.make_model()
    samples: list[tuple[int, tuple[float, ...]]] = []

    def training_step(batch: Any) -> torch.Tensor:
        images, labels, indices, draws = batch
        samples.extend(zip(indices.tolist(), map(tuple, draws.tolist()), strict=True))
        return F.cross_entropy(model(images), labels)

    trainer = trainkit.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        training_step=training_step,
        run_dir=run_dir,
        device="cpu",
        amp=False,
        seed=seed,
        progress=False,
    )
    trainer.fit(loader, epochs=epochs)
    return Run(samples, {k: v.clone() for k, v in model.state_dict().items()}, trainer)


def _assert_same_weights(run: Run, reference: Run, context: str) -> None:
    different = [k for k in reference.weights if not torch.equal(run.weights[k], reference.weights[k])]
    assert different == [], f"{context}: tensors differ: {different}"


def _first_difference(run: Run, reference: Run) -> str:
    for position, (got, expected) in enumerate(zip(run.samples, reference.samples, strict=False)):
        if got != expected:
            return f"sample {position} (index, draws): {got} != {expected}"
    return f"{len(run.samples)} samples against {len(reference.samples)}"


@pytest.fixture(scope="module")
def shuffled_runs() -> dict[int, Run]:
    """``Trainer(seed=0)`` with ``DataLoader(shuffle=True, num_workers=k)`` for k = 1, 2 and 4."""
    return {workers: _fit(0, workers) for workers in (1, 2, 4)}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes:UserWarning")
def test_any_number_of_workers_gives_the_same_draws_and_weights(shuffled_runs: dict[int, Run]) -> None:
    one = shuffled_runs[1]
    assert len(one.samples) == EPOCHS * seeding_script.NUM_SAMPLES
    assert len({draws for _, draws in one.samples}) == len(one.samples)  # every sample drew its own augmentation
    for workers in (2, 4):
        run = shuffled_runs[workers]
        assert run.samples == one.samples, f"num_workers={workers} vs 1: {_first_difference(run, one)}"
        _assert_same_weights(run, one, f"num_workers={workers} vs 1")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_seeding_object_with_its_default_or_true_is_the_plain_seed(shuffled_runs: dict[int, Run]) -> None:
    assert trainkit.engine.Seeding is trainkit.Seeding
    for seed in (trainkit.Seeding(0), trainkit.Seeding(0, sample_seeding=True)):
        run = _fit(seed, 1)
        assert run.samples == shuffled_runs[1].samples, f"{seed!r}: {_first_difference(run, shuffled_runs[1])}"
        _assert_same_weights(run, shuffled_runs[1], f"{seed!r} vs seed=0")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_always_seeds_the_main_process_too_so_zero_workers_match_two() -> None:
    in_main = _fit(trainkit.Seeding(0, sample_seeding="always"), 0)
    in_workers = _fit(trainkit.Seeding(0, sample_seeding="always"), 2)
    assert in_main.samples == in_workers.samples, _first_difference(in_main, in_workers)
    # The main process's RNG is restored after each sample, so dropout draws the same as with workers.
    _assert_same_weights(in_main, in_workers, "sample_seeding='always': num_workers=0 vs 2")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sample_seeding_false_keeps_pytorchs_worker_seeding() -> None:
    one = _fit(trainkit.Seeding(0, sample_seeding=False), 1)
    two = _fit(trainkit.Seeding(0, sample_seeding=False), 2)
    assert [i for i, _ in one.samples] == [i for i, _ in two.samples]  # the same order: the sampler is seeded
    # ... but PyTorch seeds each worker from one base seed + its id, so which worker loads a sample changes it.
    assert one.samples[: seeding_script.BATCH_SIZE] == two.samples[: seeding_script.BATCH_SIZE]  # worker 0 in both
    assert one.samples != two.samples
    assert any(not torch.equal(one.weights[k], two.weights[k]) for k in one.weights)


@pytest.mark.parametrize(
    ("sample_seeding", "workers"),
    [("always", (0, 0)), pytest.param("workers", (1, 2), marks=[pytest.mark.slow, pytest.mark.timeout(300)])],
)
def test_a_sample_is_seeded_by_its_position_not_its_index(sample_seeding: str, workers: tuple[int, int]) -> None:
    num_samples = 8  # 16 draws an epoch with replacement: some index comes at least twice in every epoch
    first, second = (
        _fit(trainkit.Seeding(0, sample_seeding=sample_seeding), k, replacement=True, num_samples=num_samples)
        for k in workers
    )
    context = f"sample_seeding={sample_seeding!r}, num_workers {workers[0]} and {workers[1]}"
    assert first.samples == second.samples, f"{context}: {_first_difference(first, second)}"
    per_epoch = 2 * num_samples
    assert len(first.samples) == EPOCHS * per_epoch
    for epoch in range(EPOCHS):
        draws_of: dict[int, list[tuple[float, ...]]] = defaultdict(list)
        for index, draws in first.samples[epoch * per_epoch : (epoch + 1) * per_epoch]:
            draws_of[index].append(draws)
        repeated = {index: draws for index, draws in draws_of.items() if len(draws) > 1}
        assert repeated, "the sampler drew no index twice"
        for index, draws in repeated.items():
            for rng, values in zip(RNGS, zip(*draws, strict=True), strict=True):
                assert len(set(values)) == len(values), f"epoch {epoch}: index {index} got {rng} draws {values}"
    # Every sample of the run (other positions, other epochs) drew its own numbers from each RNG.
    for rng, values in zip(RNGS, zip(*(draws for _, draws in first.samples), strict=True), strict=True):
        assert len(set(values)) == len(values), f"{rng}: the same number drawn twice in {values}"


def test_seed_none_draws_a_seed_at_fit_and_saves_it_in_checkpoints(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _fit(None, 0, epochs=1, run_dir=tmp_path)
    assert type(run.trainer.seed) is int
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["seed"] == run.trainer.seed
    assert [str(w.message) for w in caught if "IterableDataset" in str(w.message)] == []  # map-style: no warning


class _Stream(IterableDataset):
    """Eight samples of a 4-feature, 2-class problem, streamed."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(8):
            yield torch.randn(4, generator=g), torch.randint(0, 2, (), generator=g)


@pytest.mark.parametrize(
    ("seed", "workers"),
    [
        (lambda: trainkit.Seeding(0, sample_seeding="always"), 0),
        pytest.param(lambda: 0, 1, marks=[pytest.mark.slow, pytest.mark.timeout(300)]),
    ],
    ids=["always-0-workers", "default-1-worker"],
)
def test_an_iterable_dataset_warns_once_that_it_is_not_seeded_per_sample(seed: Callable[[], Any], workers: int) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu", seed=seed(),
        progress=False,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="IterableDataset") as caught:
        trainer.fit(DataLoader(_Stream(), batch_size=4, num_workers=workers), epochs=2)
    assert len([w for w in caught if "IterableDataset" in str(w.message)]) == 1


# -- killed and resumed in subprocesses -----------------------------------------------------------------------------


def _command(run_dir: Path, out: Path, workers: int, seed: int | None) -> list[str]:
    seed_arg = "none" if seed is None else str(seed)
    return [sys.executable, str(SCRIPT), str(run_dir), str(out), "--workers", str(workers), "--seed", seed_arg]


def _run(
    run_dir: Path, out: Path, *, workers: int, seed: int | None, stop_at: int | None = None
) -> tuple[int, str, str]:
    """Run the script; SIGKILL it once it reports batch ``stop_at`` (or later). Returns (status, stdout, stderr).

    stderr goes to a file: the DataLoader workers of a killed run keep their copy of a pipe open for seconds.
    """
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(_command(run_dir, out, workers, seed), stdout=subprocess.PIPE, stderr=err, text=True)
        lines = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                match = re.fullmatch(r"batch (\d+)\n", line)
                if stop_at is not None and match and int(match.group(1)) >= stop_at:
                    proc.kill()
                    break
            proc.stdout.close()
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return proc.returncode, "".join(lines), err.read()


class _Background:
    """A run of the script in ``folder / "run"`` left to finish, started at once; ``result()`` waits and loads it."""

    def __init__(self, folder: Path, *, workers: int, seed: int | None):
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "out.pt"
        self.proc = subprocess.Popen(
            _command(folder / "run", self.out, workers, seed),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self) -> dict:
        _, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err
        return torch.load(self.out, weights_only=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run: ``Trainer(seed=0)``, 2 workers; started as soon as the first test needs it."""
    run = _Background(tmp_path_factory.mktemp("uninterrupted"), workers=2, seed=0)
    yield run
    run.close()


def _assert_same_run(result: dict, reference: dict, context: str) -> None:
    assert list(result["model"]) == list(reference["model"])
    different = [k for k in reference["model"] if not torch.equal(result["model"][k], reference["model"][k])]
    assert different == [], f"{context}: tensors differ: {different}"
    assert result["history"] == reference["history"], context


def _resumed_batches(stdout: str) -> list[int]:
    return [int(batch) for batch in re.findall(r"resumed from .* at epoch \d+, batch (\d+)", stdout)]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("workers", "kills"), [(2, 3), (1, 1)], ids=["2-workers-3-kills", "1-worker-1-kill"])
def test_runs_killed_mid_epoch_with_workers_resume_to_bitwise_the_same_weights(
    uninterrupted: _Background, tmp_path: Path, workers: int, kills: int
) -> None:
    stops = sorted(random.Random().sample(MID_EPOCH_STOPS, kills))  # unseeded: new kill points on every run
    context = f"num_workers={workers}, SIGKILL after batches {stops}"
    run_dir, out = tmp_path / "run", tmp_path / "out.pt"
    resumed_at = []
    for stop_at in stops:
        status, stdout, stderr = _run(run_dir, out, workers=workers, seed=0, stop_at=stop_at)
        assert status == -signal.SIGKILL, f"{context}: the run ended on its own before the kill\n{stderr}"
        resumed_at += _resumed_batches(stdout)
    status, stdout, stderr = _run(run_dir, out, workers=workers, seed=0)
    assert status == 0, f"{context}\n{stderr}"
    resumed_at += _resumed_batches(stdout)
    assert any(resumed_at), f"{context}: no run resumed in the middle of an epoch (at batches {resumed_at} of one)"
    _assert_same_run(torch.load(out, weights_only=True), uninterrupted.result(), context)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_drawn_seed_is_saved_so_a_killed_run_resumes_exactly(tmp_path: Path) -> None:
    # Whether `seed=None` also seeds the main process's RNGs with the drawn seed is not the point here, so the run
    # is not compared with one given that seed: two continuations of the same first checkpoint are, one of them
    # killed and resumed once more. Both can match only when every resume takes the seed from the checkpoint.
    first_stop, second_stop = sorted(random.Random().sample(MID_EPOCH_STOPS, 2))
    context = f"seed=None, num_workers=2, SIGKILL after batches {[first_stop, second_stop]}"
    run_dir, out = tmp_path / "run", tmp_path / "out.pt"
    last = run_dir / "checkpoints" / "last.pt"
    status, _, stderr = _run(run_dir, out, workers=2, seed=None, stop_at=first_stop)
    assert status == -signal.SIGKILL, f"{context}: the run ended on its own before the kill\n{stderr}"
    assert last.exists(), f"{context}: no checkpoint written before the kill\n{stderr}"
    drawn = torch.load(last, weights_only=True).get("seed")
    assert type(drawn) is int, f"{context}: the checkpoint's seed is {drawn!r}"
    shutil.copytree(run_dir, tmp_path / "continued" / "run")
    continued = _Background(tmp_path / "continued", workers=2, seed=None)  # resumes from the copy, to the end
    try:
        status, stdout, stderr = _run(run_dir, out, workers=2, seed=None, stop_at=second_stop)
        assert status == -signal.SIGKILL, f"{context}: the run ended on its own before the second kill\n{stderr}"
        assert _resumed_batches(stdout), f"{context}: the second run did not resume\n{stdout}"
        assert torch.load(last, weights_only=True)["seed"] == drawn, context
        status, stdout, stderr = _run(run_dir, out, workers=2, seed=None)
        assert status == 0, f"{context}\n{stderr}"
        result, reference = torch.load(out, weights_only=True), continued.result()
        assert result["seed"] == reference["seed"] == drawn, f"{context}: `trainer.seed` after the resumes"
        _assert_same_run(result, reference, context)
    finally:
        continued.close()
