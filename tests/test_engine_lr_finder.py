"""Tests for trainkit.engine.lr_finder: suggestions where a good learning rate is known, everything left bitwise
as it was, the trainer's own step (accumulation, clipping, precision, custom steps), stopping, the plot, errors."""

from __future__ import annotations

import copy
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainkit
from trainkit.engine.lr_finder import LRFinderResult, _valley
from trainkit.utils.seed import get_rng_state, set_rng_state

CENTERS = torch.randn(3, 8, generator=torch.Generator().manual_seed(123)) * 2.5


def _regression(n: int = 256, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """y = x @ w + noise with standard normal x in 8-D: the MSE's Hessian is about 2I, so SGD is stable for lr < 1."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, 8, generator=g), torch.randn(8, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _blobs(n: int = 256, batch: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = CENTERS[y] + torch.randn(n, 8, generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _linear(**kwargs) -> trainkit.Trainer:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    kwargs = {"device": "cpu", "progress": False, "amp": False, **kwargs}
    return trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), **kwargs)


def _classifier(model_seed: int = 0, **kwargs) -> trainkit.Trainer:
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    kwargs = {"device": "cpu", "progress": False, "amp": False, **kwargs}
    return trainkit.Trainer(model, opt, nn.CrossEntropyLoss(), **kwargs)


# ----------------------------------------------------------------------------- what it finds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_regression_with_sgd_suggests_a_stable_rate_and_diverges_past_the_limit(seed: int) -> None:
    result = _linear().lr_find(_regression(seed=seed))
    assert 1e-3 < result.suggestion < 0.5  # stable below 1 (2 / the Hessian's largest eigenvalue of about 2)
    assert result.diverged and 1.0 < result.lrs[-1] < 10.0  # the loss blew up once the rate passed the limit
    assert result.losses[-1] > 4.0 * min(result.losses[:-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_blob_classifier_with_adam_gets_a_sane_suggestion(seed: int) -> None:
    result = _classifier(seed).lr_find(_blobs(seed=seed))
    assert 1e-4 < result.suggestion < 1e-1


def test_lrs_grow_exponentially_and_the_smoothed_curve_is_debiased() -> None:
    result = _linear().lr_find(_regression(), min_lr=1e-5, max_lr=1e-1, num_steps=20)
    assert len(result.lrs) == 20 and not result.diverged
    assert result.lrs[0] == 1e-5 and result.lrs[-1] == pytest.approx(1e-1)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([10 ** (4 / 19)] * 19)
    assert result.losses[0] == result.raw_losses[0]  # debiased: no pull towards 0 at the start
    unsmoothed = _linear().lr_find(_regression(), min_lr=1e-5, max_lr=1e-1, num_steps=20, smooth=0.0)
    assert unsmoothed.losses == unsmoothed.raw_losses == result.raw_losses


def test_valley_is_halfway_down_the_longest_descent() -> None:
    lrs = [10.0**e for e in range(-7, 3)] * 4  # 40 points (only positions matter)
    losses = [5.0] * 10 + [5.0 - 0.1 * i for i in range(20)] + [10.0] * 10
    # skipped: the first 100 // 10 = 10 planned steps and the last 5 points; the descent runs over points 9..29
    assert _valley(lrs, losses, num_steps=100) == lrs[10 + 6 + 3]
    assert _valley(lrs[:7], losses[:7], num_steps=100) is None  # too few points left


# ----------------------------------------------------------------------------- nothing changes


def _state_of(trainer: trainkit.Trainer) -> dict:
    return copy.deepcopy(
        {
            "model": trainer.module.state_dict(),
            "grads": [p.grad for p in trainer.module.parameters()],
            "modes": [m.training for m in trainer.module.modules()],
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.precision.state_dict(),
            "run": trainer.state.state_dict(),
            "rng": get_rng_state(),
            "numpy": np.random.get_state()[1].copy(),
            "random": random.getstate(),
        }
    )


def _assert_same(a, b, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def _prepared(amp: str | bool) -> trainkit.Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on the CPU warns that it is slow
        trainer = _classifier(amp=amp, clip_grad_norm=5.0, seed=0)
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    trainer.fit(_blobs(64), epochs=1)  # Adam's moments, the scheduler's and the scaler's counters are not fresh
    trainer.module[1].eval()  # a frozen BatchNorm: modes are restored one module at a time
    for p in trainer.module.parameters():
        p.grad = torch.full_like(p, 0.5)
    np.random.seed(1)
    random.seed(2)
    return trainer


@pytest.mark.parametrize("amp", [False, "fp16", "bf16"])
def test_model_optimizer_scheduler_scaler_modes_grads_and_rng_are_left_bitwise_as_they_were(amp) -> None:
    trainer = _prepared(amp)
    before = _state_of(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = trainer.lr_find(_blobs(), num_steps=30, max_lr=100.0)
    assert len(result.lrs) > 5
    _assert_same(_state_of(trainer), before)
    assert trainer.optimizer.param_groups[0]["lr"] == before["optimizer"]["param_groups"][0]["lr"]


def test_training_after_lr_find_is_bitwise_training_without_it() -> None:
    plain, tested = _prepared(False), _prepared(False)
    rng = get_rng_state()  # dropout draws from it: both runs start from it
    tested.lr_find(_blobs(), num_steps=20)
    tested.fit(_blobs(64, seed=1), epochs=2)
    set_rng_state(rng)
    plain.fit(_blobs(64, seed=1), epochs=2)
    _assert_same(tested.module.state_dict(), plain.module.state_dict())
    _assert_same(tested.optimizer.state_dict(), plain.optimizer.state_dict())


def test_an_error_during_the_test_still_puts_everything_back() -> None:
    trainer = _prepared(False)
    batches = [*_blobs(64), (torch.zeros(4, 5), torch.zeros(4, dtype=torch.int64))]  # the last one does not fit
    before = _state_of(trainer)
    with pytest.raises(trainkit.errors.TrainingError, match=r"the inputs' shape does not fit the model"):
        trainer.lr_find(batches, num_steps=10)
    _assert_same(_state_of(trainer), before)


# ----------------------------------------------------------------------------- the trainer's own step


class _Counting:
    """A loader that counts the batches it hands out (over every pass)."""

    def __init__(self, batches):
        self.batches, self.given = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.given += 1
            yield batch


def test_grad_accum_makes_each_step_several_batches_and_the_loader_is_read_again() -> None:
    loader = _Counting(_regression(n=96))  # 3 batches
    result = _linear(grad_accum=2).lr_find(loader, min_lr=1e-5, max_lr=1e-2, num_steps=7)
    assert len(result.lrs) == 7 and loader.given == 14  # 7 steps of 2 batches, over 5 passes

    (x0, y0), (x1, y1), _ = _regression(n=96)
    model = _linear().module
    with torch.no_grad():
        first, second = float(nn.functional.mse_loss(model(x0), y0)), float(nn.functional.mse_loss(model(x1), y1))
    plain = _linear().lr_find(_regression(n=96), min_lr=1e-5, max_lr=2e-5, num_steps=2, smooth=0.0)
    accumulated = _linear(grad_accum=2).lr_find(_regression(n=96), min_lr=1e-5, max_lr=2e-5, num_steps=2, smooth=0.0)
    assert plain.raw_losses[0] == pytest.approx(first, rel=1e-6)  # one batch a step
    assert accumulated.raw_losses[0] == pytest.approx((first + second) / 2, rel=1e-6)  # the group's mean


def test_clipping_applies_so_a_clipped_run_does_not_diverge() -> None:
    assert _linear().lr_find(_regression(), max_lr=100.0).diverged
    clipped = _linear(clip_grad_norm=1e-4).lr_find(_regression(), max_lr=100.0)
    assert not clipped.diverged and len(clipped.lrs) == 100


def test_bf16_autocast_is_used() -> None:
    fp32 = _linear().lr_find(_regression(), num_steps=5, smooth=0.0)
    bf16 = _linear(amp="bf16").lr_find(_regression(), num_steps=5, smooth=0.0)
    assert bf16.raw_losses[0] != fp32.raw_losses[0]
    assert bf16.raw_losses[0] == pytest.approx(fp32.raw_losses[0], rel=1e-2)


def _with_step(step) -> trainkit.Trainer:
    """A trainer of ``model`` (a module-level name the step reads) with ``training_step=step`` and no loss."""
    return trainkit.Trainer(
        _MODEL, torch.optim.SGD(_MODEL.parameters(), lr=0.1), training_step=step, device="cpu", progress=False
    )


_MODEL = nn.Linear(8, 1)


def test_a_custom_training_step_is_used_without_a_loss_fn() -> None:
    calls = []

    def step(batch):
        calls.append(len(batch[0]))
        return nn.functional.l1_loss(_MODEL(batch[0]), batch[1])

    result = _with_step(step).lr_find(_regression(), num_steps=6)
    assert calls == [32] * 6 and len(result.lrs) == 6


def test_a_nan_loss_ends_the_test_without_raising() -> None:
    trainer = None

    def step(batch):
        loss = nn.functional.mse_loss(_MODEL(batch[0]), batch[1])
        return loss * float("nan") if trainer.optimizer.param_groups[0]["lr"] > 1e-3 else loss

    trainer = _with_step(step)
    result = trainer.lr_find(_regression(), min_lr=1e-6, max_lr=1.0, num_steps=61)  # lr = 1e-6 * 10 ** (j / 10)
    assert result.diverged and len(result.lrs) == 31  # steps 0..30 reach 1e-3; step 31's loss is NaN
    assert all(np.isfinite(result.losses)) and result.suggestion is not None


def test_a_used_up_iterator_ends_the_test_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"the loader ran out after 3 of 10 steps \(an iterator or generator"):
        result = _linear().lr_find(iter(_regression(n=96)), num_steps=10)
    assert len(result.lrs) == 3 and not result.diverged and result.suggestion is None


# ----------------------------------------------------------------------------- the plot and the report


def test_the_plot_is_a_png_with_the_suggestion(tmp_path: Path) -> None:
    result = _linear().lr_find(_regression())
    path = result.plot(tmp_path / "plots" / "lr_find.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (600, 400)  # IHDR: width, height
    assert str(result).startswith("LR range test: ") and f"suggested lr {result.suggestion:.3g} (valley)" in str(result)
    assert "stopped as the loss diverged" in str(result)


def test_a_result_without_suggestion_still_plots(tmp_path: Path) -> None:
    result = LRFinderResult([1e-3, 1e-2], [1.0, 0.9], [1.0, 0.8], None, False)
    assert result.plot(tmp_path / "p.png").is_file()
    assert str(result).endswith("; no suggestion")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"min_lr": 0.0}, r"`min_lr` must be a positive finite number, got 0\.0; e\.g\. 1e-7"),
        (
            {"min_lr": 1e-3, "max_lr": 1e-4},
            r"`max_lr` must be a finite number larger than `min_lr=0\.001`, got 0\.0001",
        ),
        ({"max_lr": float("inf")}, r"`max_lr` must be a finite number larger than"),
        ({"num_steps": 1}, r"`num_steps` must be an integer >= 2, got 1; e\.g\. 100"),
        ({"num_steps": 10.0}, r"`num_steps` must be an integer >= 2, got 10\.0"),
        ({"smooth": 1.0}, r"`smooth` must be a number in \[0, 1\), got 1\.0; e\.g\. 0\.98 \(0: no smoothing\)"),
        ({"diverge": 1.0}, r"`diverge` must be a number > 1, got 1\.0; e\.g\. 4\.0 stops when"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        _linear().lr_find(_regression(), **kwargs)


def test_no_loss_and_no_batches_are_refused() -> None:
    model = nn.Linear(8, 1)
    no_loss = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    with pytest.raises(ValueError, match=r"`lr_find` needs the trainer's `loss_fn=` .*`training_step=`"):
        no_loss.lr_find(_regression())
    with pytest.raises(ValueError, match=r"`loader` yields no batches"):
        _linear().lr_find([])
    with pytest.raises(ValueError, match=r"`loader` yielded no batches; pass a `DataLoader` or a list"):
        _linear().lr_find(iter([]))
