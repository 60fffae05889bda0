"""NaN and inf: never silent, never saved as a good state, never left in the model by a skipped step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import trainkit
from trainkit.callbacks import ModelCheckpoint
from trainkit.engine.loop_state import LoopState
from trainkit.errors import NonFiniteLossError

X = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(24) % 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _trainer(model: nn.Module, **kwargs) -> trainkit.Trainer:
    kwargs = {"device": "cpu", "progress": False, "seed": 0, **kwargs}
    return trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), **kwargs)


class NaNOnPass:
    """Validation batches that hold a NaN input on the given passes (0-based)."""

    def __init__(self, bad_passes: set[int]):
        self.bad_passes, self.passes = bad_passes, 0

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        inputs = X[:16].clone()
        if self.passes in self.bad_passes:
            inputs[9, 0] = float("nan")  # in the second batch
        self.passes += 1
        return iter([(inputs[:8], Y[:8]), (inputs[8:], Y[8:16])])


def test_nan_in_validation_warns_and_is_never_chosen_as_best(tmp_path: Path) -> None:
    trainer = _trainer(_model(), run_dir=tmp_path)
    with pytest.warns(
        UserWarning, match=r"evaluation: 1 batch\(es\) had a NaN or infinite loss \(the first at batch 1\)"
    ):
        history = trainer.fit([(X[:8], Y[:8])], NaNOnPass({1}), epochs=2)
    assert history[1]["val/loss"] != history[1]["val/loss"]  # NaN, reported as it is
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1  # epoch 2's NaN was not taken as the best
    with pytest.warns(UserWarning, match=r"NaN or infinite loss"):
        scores = trainkit.evaluate(_model(), NaNOnPass({0}), nn.CrossEntropyLoss())
    assert scores["loss"] != scores["loss"]


def test_a_skipped_batch_leaves_parameters_and_batchnorm_statistics_as_before() -> None:
    good1, good2 = (X[:8], Y[:8]), (X[8:16], Y[8:16])
    bad_inputs = X[16:].clone()
    bad_inputs[2, 1] = float("nan")
    skipped, reference = _model(), _model()
    _trainer(skipped, on_nan="skip").fit([good1, (bad_inputs, Y[16:]), good2], epochs=1)
    _trainer(reference).fit([good1, good2], epochs=1)
    for (name, a), b in zip(skipped.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # running_mean/var and num_batches_tracked included


def test_no_checkpoint_is_written_with_nan_weights_or_after_a_nan_loss(tmp_path: Path) -> None:
    model = _model()
    trainer = _trainer(model, run_dir=tmp_path, callbacks=[ModelCheckpoint(every_n_steps=1)])
    trainer.fit([(X[:8], Y[:8])] * 2, epochs=1)
    last = tmp_path / "checkpoints" / "last.pt"
    good = last.read_bytes()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"not saving .*: the model holds NaN or infinite values \(0\.weight\)"
                       r".*the last good state is .*last.pt"):  # fmt: skip
        trainer.save_checkpoint(last)
    assert last.read_bytes() == good
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
    trainer.state.nonfinite_at = torch.tensor(3)  # what a deferred check on a GPU leaves until it is read
    with pytest.raises(NonFiniteLossError, match=r"not saving .*: loss is NaN or infinite at epoch 2, batch 3"):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == good


def test_a_nan_loss_names_the_last_good_checkpoint(tmp_path: Path) -> None:
    bad = X[:8].clone()
    bad[0, 0] = float("nan")
    trainer = _trainer(_model(), run_dir=tmp_path, callbacks=[ModelCheckpoint(every_n_steps=1)])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 .*the last good state is .*last\.pt"):
        trainer.fit([(X[:8], Y[:8])] * 2 + [(bad, Y[:8])], epochs=1)
    saved = trainkit.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["global_step"] == 2 and all(torch.isfinite(t).all() for t in saved["model"].values())


def test_count_nonfinite_keeps_the_first_bad_batch() -> None:
    state = LoopState()
    for i, value in enumerate([1.0, float("inf"), 2.0, float("nan")]):
        state.count_nonfinite(torch.tensor(value), i)
    assert int(state.nonfinite_count) == 2 and int(state.nonfinite_at) == 1


# ----------------------------------------------------------------------------- other errors of the step


def test_a_batch_of_one_reaching_batchnorm_is_explained() -> None:
    trainer = _trainer(_model())
    with pytest.raises(trainkit.errors.TrainingError, match=r"training step 1 \(batch 1\) failed: a batch of 1 sample "
                       r"reached a BatchNorm layer.*drop_last=True"):  # fmt: skip
        trainer.fit([(X[:8], Y[:8]), (X[:1], Y[:1])], epochs=1)


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from zip(X.split(4), Y.split(4), strict=True)


def test_a_loader_without_a_length_trains(tmp_path: Path) -> None:
    loader = torch.utils.data.DataLoader(Stream(), batch_size=None)
    trainer = _trainer(_model(), run_dir=tmp_path, progress=True)
    with pytest.warns(UserWarning, match=r"IterableDataset"):
        history = trainer.fit(loader, loader, epochs=2)
    assert [row["epoch"] for row in history] == [1, 2] and trainer.state.global_step == 12
