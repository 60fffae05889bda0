"""Tests for trainkit.engine.callbacks.ema: the average against a hand-computed one, which tensors are averaged
and which copied, validation and checkpoints from the average, bitwise resume, the new validation hook, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit
from trainkit.callbacks import EMA, Callback, ModelCheckpoint

CENTERS = torch.randn(3, 8, generator=torch.Generator().manual_seed(123)) * 2.5


def _blobs(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(CENTERS[y] + torch.randn(n, 8, generator=g), y)


def _mlp(seed: int = 0, batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    middle: list[nn.Module] = [nn.BatchNorm1d(16)] if batchnorm else [nn.Dropout(0.3)]
    return nn.Sequential(nn.Linear(8, 16), *middle, nn.ReLU(), nn.Linear(16, 3))


def _trainer(model: nn.Module, callbacks=(), *, sgd: bool = False, **kwargs) -> trainkit.Trainer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if sgd else torch.optim.Adam(model.parameters(), lr=1e-2)
    kwargs = {"device": "cpu", "progress": False, "amp": False, **kwargs}
    return trainkit.Trainer(model, opt, nn.CrossEntropyLoss(), callbacks=list(callbacks), **kwargs)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


class _StepWeights(Callback):
    """The model's state after every optimizer step (runs after EMA, which has order -100)."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, state, output):
        if state.global_step > 0:  # the first micro-batches of an accumulation group step nothing
            self.seen.setdefault(state.global_step, copy.deepcopy(trainer.module.state_dict()))


def _expected_average(ema: EMA, weights: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The average computed independently: a copy at the first update, then ``d * avg + (1 - d) * w``."""
    average: dict[str, torch.Tensor] | None = None
    for step in sorted(weights):
        if step % ema.every_n_steps:
            continue
        w = weights[step]
        if average is None:
            average = {k: v.clone() for k, v in w.items()}
            continue
        d = ema.decay_at(step)
        for k, v in w.items():
            average[k] = d * average[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    assert average is not None
    return average


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


# ----------------------------------------------------------------------------- the average


def test_decay_is_zero_at_the_first_update_then_decay_or_the_warmup_curve() -> None:
    assert [EMA(0.9).decay_at(s) for s in (1, 2, 50)] == [0.0, 0.9, 0.9]
    warm = EMA(0.999, warmup=True, warmup_power=0.75)
    assert warm.decay_at(1) == 0.0
    assert warm.decay_at(16) == pytest.approx(1 - 16**-0.75)  # 0.875
    assert warm.decay_at(10**6) == 0.999  # capped at `decay`
    assert [EMA(0.9, every_n_steps=4).decay_at(s) for s in (4, 8)] == [0.0, 0.9]


@pytest.mark.parametrize(
    ("kwargs", "batches", "grad_accum"),
    [
        ({"decay": 0.8}, 6, 1),
        ({"decay": 0.99, "warmup": True, "warmup_power": 0.75}, 6, 1),
        ({"decay": 0.8, "every_n_steps": 2}, 7, 1),
        ({"decay": 0.8}, 5, 2),  # steps after batches 2, 4 and 5: the short last group is a step too
    ],
)
def test_the_average_matches_one_computed_by_hand(kwargs, batches: int, grad_accum: int) -> None:
    ema, record = EMA(**kwargs), _StepWeights()
    trainer = _trainer(_mlp(batchnorm=True), [ema, record], grad_accum=grad_accum)
    trainer.fit(DataLoader(_blobs(8 * batches), batch_size=8), epochs=1)

    steps = -(-batches // grad_accum)
    assert sorted(record.seen) == list(range(1, steps + 1))
    assert ema.step == steps - steps % ema.every_n_steps
    _close(trainer.module.state_dict(), _expected_average(ema, record.seen))  # the module holds the average
    assert _equal(ema.training_weights(), record.seen[steps])


def test_buffers_average_batchnorm_statistics_and_copy_integer_ones_or_copy_all() -> None:
    for buffers in ("average", "copy"):
        ema, record = EMA(0.5, buffers=buffers), _StepWeights()
        trainer = _trainer(_mlp(batchnorm=True), [ema, record])
        trainer.fit(DataLoader(_blobs(32), batch_size=8), epochs=1)
        average, last = ema.averaged_weights(), record.seen[4]
        assert int(average["1.num_batches_tracked"]) == 4  # an integer buffer is copied, never averaged
        if buffers == "average":
            _close({"m": average["1.running_mean"]}, {"m": _expected_average(ema, record.seen)["1.running_mean"]})
            assert not torch.equal(average["1.running_mean"], last["1.running_mean"])
        else:
            assert torch.equal(average["1.running_mean"], last["1.running_mean"])
            assert not torch.equal(average["0.weight"], last["0.weight"])  # parameters are still averaged


# ----------------------------------------------------------------------------- validation and checkpoints


def test_validation_best_pt_and_the_module_after_fit_are_the_average(tmp_path: Path) -> None:
    ema = EMA(0.9)
    trainer = _trainer(_mlp(), [ema], run_dir=tmp_path / "run")
    val = DataLoader(_blobs(16, 1), batch_size=8)
    history = trainer.fit(DataLoader(_blobs(48), batch_size=8, shuffle=True), val, epochs=2)

    assert trainer.evaluate(val)["loss"] == history[-1]["val/loss"]  # the module holds the average after fit
    trained = _mlp()
    trained.load_state_dict(ema.training_weights())
    raw = trainkit.evaluate(trained, val, nn.CrossEntropyLoss())["loss"]
    assert raw != history[-1]["val/loss"]

    last = trainkit.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert _equal(last["model"], trainer.module.state_dict())
    assert _equal(last["callbacks"]["0:EMA"]["training"], ema.training_weights())  # saved once each, not twice
    assert "average" not in last["callbacks"]["0:EMA"]
    best = trainkit.load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    model = _mlp(seed=5)
    model.load_state_dict(best["model"])
    assert trainkit.evaluate(model, val, nn.CrossEntropyLoss())["loss"] == min(row["val/loss"] for row in history)


def test_validate_false_keeps_the_trained_weights_in_the_model() -> None:
    ema = EMA(0.9, validate=False)
    trainer = _trainer(_mlp(), [ema])
    val = DataLoader(_blobs(16, 1), batch_size=8)
    history = trainer.fit(DataLoader(_blobs(48), batch_size=8), val, epochs=1)
    assert _equal(trainer.module.state_dict(), ema.training_weights())
    assert trainer.evaluate(val)["loss"] == history[-1]["val/loss"]
    assert not torch.equal(ema.averaged_weights()["0.weight"], trainer.module.state_dict()["0.weight"])
    assert sorted(ema.state_dict()) == ["average", "step"]


def test_without_validation_the_average_goes_into_the_model_at_the_epochs_end(tmp_path: Path) -> None:
    ema = EMA(0.9)
    trainer = _trainer(_mlp(), [ema], run_dir=tmp_path / "run")
    trainer.fit(DataLoader(_blobs(32), batch_size=8), epochs=1)
    assert _equal(trainer.module.state_dict(), ema.averaged_weights())
    best = trainkit.load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert _equal(best["model"], ema.averaged_weights())


# ----------------------------------------------------------------------------- resume


def _resumable(run_dir: Path, model_seed: int = 0, callbacks=()) -> tuple[trainkit.Trainer, EMA]:
    ema = EMA(0.9, warmup=True, warmup_power=0.75)
    model = _mlp(seed=model_seed, batchnorm=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = trainkit.Trainer(
        model, opt, nn.CrossEntropyLoss(), scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7),
        run_dir=run_dir, seed=3, device="cpu", progress=False, amp=False, callbacks=[ema, *callbacks],
    )  # fmt: skip
    return trainer, ema


class _InterruptAt(Callback):
    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, state, output):
        if state.epoch == self.epoch and state.batch_idx == self.batch:
            raise KeyboardInterrupt


def _same_run(a: tuple[trainkit.Trainer, EMA], b: tuple[trainkit.Trainer, EMA]) -> None:
    assert _equal(a[0].module.state_dict(), b[0].module.state_dict())  # the averages, in the modules
    assert _equal(a[1].training_weights(), b[1].training_weights())
    assert _equal(a[0].optimizer.state_dict()["state"][0], b[0].optimizer.state_dict()["state"][0])
    assert a[1].step == b[1].step


def test_a_mid_epoch_resume_is_bitwise(tmp_path: Path) -> None:
    def loader() -> DataLoader:
        return DataLoader(_blobs(32), batch_size=4, shuffle=True)

    val = DataLoader(_blobs(16, 1), batch_size=8)
    full = _resumable(tmp_path / "full", callbacks=[ModelCheckpoint(every_n_steps=3)])
    full_history = full[0].fit(loader(), val, epochs=3)

    interrupted, ema = _resumable(tmp_path / "split", callbacks=[ModelCheckpoint(every_n_steps=3), _InterruptAt(1, 5)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(loader(), val, epochs=3)
    assert _equal(interrupted.module.state_dict(), ema.averaged_weights())  # the average, also after an error
    saved = trainkit.load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch_idx"], saved["global_step"]) == (1, 4, 12)
    assert saved["callbacks"]["0:EMA"]["step"] == 12 and "average" in saved["callbacks"]["0:EMA"]  # mid-epoch

    resumed = _resumable(tmp_path / "split", model_seed=99, callbacks=[ModelCheckpoint(every_n_steps=3)])
    assert resumed[0].fit(loader(), val, epochs=3, resume="last") == full_history
    _same_run(full, resumed)


def test_a_resume_at_an_epochs_end_and_a_second_fit_are_bitwise(tmp_path: Path) -> None:
    def loader() -> DataLoader:
        return DataLoader(_blobs(48), batch_size=8, shuffle=True)

    val = DataLoader(_blobs(16, 1), batch_size=8)
    full = _resumable(tmp_path / "full")
    full_history = full[0].fit(loader(), val, epochs=4)

    _resumable(tmp_path / "split")[0].fit(loader(), val, epochs=2)  # last.pt: the average as "model"
    resumed = _resumable(tmp_path / "split", model_seed=99)
    assert resumed[0].fit(loader(), val, epochs=4, resume="last") == full_history
    _same_run(full, resumed)

    twice = _resumable(tmp_path / "twice")
    twice[0].fit(loader(), val, epochs=2)
    assert twice[0].fit(loader(), val, epochs=4) == full_history  # trains on from the training weights
    _same_run(full, twice)


# ----------------------------------------------------------------------------- the hook and the errors


class _Hooks(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_validation_start(self, trainer):
        self.calls.append("validation_start")

    def on_validation_end(self, trainer, logs):
        self.calls.append("validation_end")

    def on_epoch_end(self, trainer, logs):
        self.calls.append("epoch_end")


def test_on_validation_start_runs_before_each_validation_only() -> None:
    hooks = _Hooks()
    _trainer(_mlp(), [hooks]).fit(DataLoader(_blobs(16), batch_size=8), DataLoader(_blobs(8, 1)), epochs=2)
    assert hooks.calls == ["validation_start", "validation_end", "epoch_end"] * 2
    hooks = _Hooks()
    _trainer(_mlp(), [hooks]).fit(DataLoader(_blobs(16), batch_size=8), epochs=2)
    assert hooks.calls == ["epoch_end"] * 2


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"decay": 1.0}, r"`decay` must be a number in \[0, 1\), got 1\.0; e\.g\. `EMA\(decay=0\.999\)`"),
        ({"decay": float("nan")}, r"`decay` must be a number in \[0, 1\), got nan"),
        ({"warmup_power": 0}, r"`warmup_power` must be a positive number, got 0"),
        ({"every_n_steps": 0}, r"`every_n_steps` must be a positive integer, got 0"),
        ({"buffers": "skip"}, r"`buffers` must be 'average' or 'copy', got 'skip'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        EMA(**kwargs)


def test_a_saved_average_for_another_model_is_refused_with_the_reason() -> None:
    ema = EMA()
    with pytest.raises(ValueError, match=r"takes what `EMA\.state_dict\(\)` returns .*got keys \['weights'\]"):
        ema.load_state_dict({"weights": {}})
    ema.load_state_dict({"step": 3, "average": {"0.weight": torch.zeros(2, 2)}})
    trainer = _trainer(_mlp(), [ema])
    trainer.state.global_step = 3  # as after a resume
    with pytest.raises(
        ValueError, match=r"EMA state does not fit the model \(missing \['0\.bias', .*0\.weight \(2, 2\)"
    ):
        ema.on_fit_start(trainer)


def test_the_weights_before_any_fit_raise_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"there is no average yet; it starts when `fit` starts"):
        EMA().averaged_weights()
    with pytest.raises(RuntimeError, match=r"has not seen a model yet; call it after `fit`"):
        EMA().training_weights()
