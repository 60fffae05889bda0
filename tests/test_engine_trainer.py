"""Tests for trainkit.engine.trainer: parity with a hand-written loop, learning, run_dir files, accumulation,
AMP and the scaler, clear errors, exact resume, custom steps, callbacks, progress, evaluate/predict."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import re
import sys
import time
import warnings
from pathlib import Path
from unittest.mock import MagicMock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trainkit
from trainkit.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from trainkit.engine.loop_state import LoopState, _finite_or_record, raise_if_nonfinite
from trainkit.engine.loops import train_one_epoch
from trainkit.engine.precision import MixedPrecision
from trainkit.engine.progress import Progress
from trainkit.errors import NonFiniteLossError, TrainingError
from trainkit.metrics import Accuracy, MeanIoU

CENTERS = torch.randn(3, 8, generator=torch.Generator().manual_seed(123)) * 2.5


def _blobs(n: int, seed: int = 0) -> TensorDataset:
    """Three Gaussian blobs in 8-D (the same centres for every seed): a task an MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(CENTERS[y] + torch.randn(n, 8, generator=g), y)


def _mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(16, 3))


def _trainer(model: nn.Module, *, lr: float = 1e-2, sgd: bool = False, loss_fn=None, **kwargs) -> trainkit.Trainer:
    opt = torch.optim.SGD(model.parameters(), lr=lr) if sgd else torch.optim.Adam(model.parameters(), lr=lr)
    kwargs = {"device": "cpu", "progress": False, "amp": False, **kwargs}
    return trainkit.Trainer(model, opt, loss_fn if loss_fn is not None else nn.CrossEntropyLoss(), **kwargs)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((pa - pb).abs().max()) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


class _Recorder(Callback):
    """Records every hook call as ``(hook, detail)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", None))

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_train_batch_end(self, trainer, state, output):
        self.calls.append(("batch", state.batch_idx))

    def on_validation_end(self, trainer, logs):
        self.calls.append(("validation_end", sorted(logs)))

    def on_epoch_end(self, trainer, logs):
        self.calls.append(("epoch_end", logs["epoch"]))

    def on_fit_end(self, trainer):
        self.calls.append(("fit_end", None))

    def on_exception(self, trainer, error):
        self.calls.append(("exception", type(error).__name__))


# ----------------------------------------------------------------------------- parity and learning


def test_fit_is_bitwise_equal_to_a_hand_written_loop() -> None:
    data = _blobs(44)  # 5 batches of 8 and one of 4
    model = _mlp(dropout=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(data, batch_size=8, shuffle=True)
    trainkit.seed_everything(5)
    model.train()
    epoch_losses = []
    for _ in range(3):
        total = 0.0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        epoch_losses.append(total / len(data))

    other = _mlp(dropout=0.3)
    trainkit.seed_everything(5)
    history = _trainer(other, seed=5).fit(DataLoader(data, batch_size=8, shuffle=True), epochs=3)
    assert _same_weights(model, other)
    assert [row["train/loss"] for row in history] == pytest.approx(epoch_losses, rel=1e-6)


def test_learns_a_toy_task_and_writes_the_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = _mlp()
    trainer = _trainer(model, metrics={"acc": Accuracy(num_classes=3)}, run_dir=run, seed=0)
    train = DataLoader(_blobs(256, seed=0), batch_size=32, shuffle=True)
    history = trainer.fit(train, DataLoader(_blobs(64, seed=1), batch_size=32), epochs=4)

    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for row in history:
        assert list(row) == ["epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr"]
        assert type(row["epoch"]) is int
        assert all(type(v) is float and math.isfinite(v) for k, v in row.items() if k != "epoch")
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    held_out = trainer.evaluate(DataLoader(_blobs(128, seed=2), batch_size=50))
    assert sorted(held_out) == ["acc", "loss"]
    assert held_out["acc"] > 0.85

    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr"]
    assert [{k: float(v) for k, v in r.items()} for r in rows] == history
    tensorboard = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []  # events when installed
    assert sorted(p.name for p in run.iterdir()) == [
        ".trainkit.lock",
        "checkpoints",
        "curves.png",
        "metrics.csv",
        *tensorboard,
    ]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    last = trainkit.load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 4 and last["history"] == history
    best_epoch = min(history, key=lambda r: r["val/loss"])["epoch"]
    assert trainkit.load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == best_epoch


def test_run_dir_none_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    trainer = _trainer(_mlp(), metrics={"acc": Accuracy(num_classes=3)})
    history = trainer.fit(DataLoader(_blobs(32), batch_size=8), DataLoader(_blobs(16, 1), batch_size=8), epochs=2)
    assert len(history) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n", [32, 40])  # 40: the last group holds 2 batches of 4, like a last batch of 8
def test_grad_accum_equals_a_larger_batch(n: int) -> None:
    data = _blobs(n)
    big, small = _mlp(), _mlp()
    big_trainer = _trainer(big, sgd=True, lr=0.1)
    big_trainer.fit(DataLoader(data, batch_size=16), epochs=2)
    small_trainer = _trainer(small, sgd=True, lr=0.1, grad_accum=4)
    small_trainer.fit(DataLoader(data, batch_size=4), epochs=2)
    assert _max_diff(big, small) < 1e-5
    assert _max_diff(big, _mlp()) > 1e-2  # both trained
    assert small_trainer.state.global_step == big_trainer.state.global_step == 2 * math.ceil(n / 16)


class _PoisonGrad(torch.autograd.Function):
    """Identity forward; infinite gradients backward (what an fp16 overflow produces)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class _InfGradsFirst(nn.Module):
    def __init__(self, bad_steps: int):
        super().__init__()
        self.linear = nn.Linear(8, 3)
        self.bad_steps, self.calls = bad_steps, 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return _PoisonGrad.apply(out) if self.calls <= self.bad_steps else out


def test_scheduler_does_not_step_when_the_scaler_skips() -> None:
    torch.manual_seed(0)
    model = _InfGradsFirst(bad_steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with pytest.warns(UserWarning, match="fp16"):
        precision = MixedPrecision("fp16", device="cpu")
    start = model.linear.weight.detach().clone()
    seen = []

    def record(state, output):
        seen.append((sched.last_epoch, opt.param_groups[0]["lr"], precision.scaler.get_scale()))
        if state.batch_idx <= 2:
            assert torch.equal(model.linear.weight, start)  # skipped steps leave the weights alone

    data = [(x, y) for x, y in DataLoader(_blobs(40), batch_size=8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch warns if the scheduler steps before the optimizer
        logs = train_one_epoch(
            model, data, opt, nn.CrossEntropyLoss(), precision=precision, scheduler=sched, on_batch_end=record
        )
    assert seen == [(0, 0.1, 32768.0), (0, 0.1, 16384.0), (1, 0.05, 16384.0), (2, 0.025, 16384.0), (3, 0.0125, 16384.0)]
    assert not torch.equal(model.linear.weight, start) and math.isfinite(logs["loss"])


def test_trainer_fp16_on_cpu_steps_the_step_scheduler_only_for_good_steps() -> None:
    torch.manual_seed(0)
    model = _InfGradsFirst(bad_steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with pytest.warns(UserWarning, match="fp16"):
        trainer = trainkit.Trainer(
            model, opt, nn.CrossEntropyLoss(), scheduler=sched, scheduler_interval="step", amp="fp16",
            device="cpu", progress=False,
        )  # fmt: skip
    history = trainer.fit(DataLoader(_blobs(40), batch_size=8), epochs=2)  # 10 optimizer steps, 3 skipped
    assert sched.last_epoch == 7 and opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**7)
    assert trainer.state.global_step == 10
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.1 * 0.5**2])
    assert trainer.precision.scaler.get_scale() == 2.0**16 / 8


def test_bf16_on_cpu_trains_and_auto_follows_the_cpu() -> None:
    from trainkit.engine.precision import cpu_has_amx

    trainer = _trainer(_mlp(), amp="bf16")
    assert trainer.precision.mode == "bf16"
    history = trainer.fit(DataLoader(_blobs(64), batch_size=16), epochs=4)
    assert history[-1]["train/loss"] < 0.7 * history[0]["train/loss"]
    assert _trainer(_mlp(), amp="auto").precision.mode == ("bf16" if cpu_has_amx() else "fp32")
    assert _trainer(_mlp(), amp=False).precision.mode == "fp32"


# ----------------------------------------------------------------------------- clear errors


def _fit_one(model: nn.Module, batches: list, **kwargs) -> list[dict[str, float]]:
    return _trainer(model, sgd=True, lr=0.1, **kwargs).fit(batches, epochs=1)


X, Y = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def test_non_integer_float_class_targets_raise_and_name_long() -> None:
    with pytest.raises(
        TrainingError, match=r"targets are float32 with non-integer values.*int64 class ids.*\.long\(\)"
    ):
        _fit_one(_mlp(), [(X, Y.float() + 0.5)])


def test_integral_float_targets_are_converted_with_one_warning() -> None:
    with pytest.warns(UserWarning, match=r"targets are float32 but CrossEntropyLoss needs int64.*`\.long\(\)`") as rec:
        history = _fit_one(_mlp(), [(X, Y.float())] * 3)
    assert len([w for w in rec if "targets are" in str(w.message)]) == 1
    assert math.isfinite(history[0]["train/loss"])


def test_probability_targets_for_cross_entropy_pass_unchanged() -> None:
    one_hot = F.one_hot(Y, 3).float()  # integral floats, but class probabilities: not class ids
    smoothed = one_hot * 0.9 + 0.1 / 3
    for target in (one_hot, smoothed):
        model = _mlp()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = _fit_one(model, [(X, target)])
        with torch.no_grad():
            expected = float(F.cross_entropy(_mlp()(X), target))
        assert history[0]["train/loss"] == pytest.approx(expected, rel=1e-6)


def test_float64_inputs_are_converted_with_one_warning() -> None:
    with pytest.warns(UserWarning, match=r"inputs are float64 but the model's weights are float32") as rec:
        history = _fit_one(_mlp(), [(X.double(), Y)] * 3)
    assert len([w for w in rec if "inputs are" in str(w.message)]) == 1
    reference = _fit_one(_mlp(), [(X, Y)] * 3)
    assert history[0]["train/loss"] == reference[0]["train/loss"]


class _Broken(nn.Module):
    """A linear model whose forward does ``fault(self.linear, x)``: one of the notes' classic failures."""

    def __init__(self, fault):
        super().__init__()
        self.linear, self.fault = nn.Linear(8, 3), fault

    def forward(self, x):
        return self.fault(self.linear, x)


def _raise(err: BaseException):
    def fault(linear, x):
        raise err

    return fault


def test_a_dtype_mismatch_inside_the_model_names_dtypes_and_the_fix() -> None:
    float64_inside = _Broken(lambda linear, x: linear(x.double()))
    with pytest.raises(TrainingError, match=r"training step 0 \(batch 0\) failed: .*different dtypes.*`\.float\(\)`"):
        _fit_one(float64_inside, [(X, Y)])


def test_tensors_on_two_devices_are_explained() -> None:
    meta_tensor_inside = _Broken(lambda linear, x: linear(x) + torch.zeros(3, device="meta"))
    with pytest.raises(TrainingError, match=r"tensors are on two devices.*`device=inputs\.device`"):
        _fit_one(meta_tensor_inside, [(X, Y)])


def _out_of_memory() -> nn.Module:
    return _Broken(_raise(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))


def test_out_of_memory_names_the_batch_size_and_suggestions() -> None:
    with pytest.raises(
        TrainingError, match=r"out of memory .* batch size 8: lower `batch_size` \(e\.g\. to 4\)"
    ) as err:
        _fit_one(_out_of_memory(), [(X, Y)])
    assert "`grad_accum=`" in str(err.value) and "amp='auto'" in str(err.value)
    with pytest.raises(TrainingError, match=r"out of memory during evaluation \(batch 0\) with batch size 8"):
        _trainer(_out_of_memory()).evaluate([(X, Y)])


def test_an_error_without_a_known_fix_is_raised_unchanged() -> None:
    fails_own_way = _Broken(_raise(RuntimeError("my model's own failure")))
    with pytest.raises(RuntimeError, match=r"^my model's own failure$") as err:
        _fit_one(fails_own_way, [(X, Y)])
    assert type(err.value) is RuntimeError and err.value.__cause__ is None
    with pytest.raises(RuntimeError, match=r"^my model's own failure$"):
        _trainer(fails_own_way).evaluate([(X, Y)])


class _ProgressiveScale(Callback):
    """Changes `trainer.batch_transform` from the second epoch on (e.g. progressive resizing)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_epoch_start(self, trainer, epoch):
        if epoch == 2:
            trainer.batch_transform = self.scale

    def scale(self, batch):
        self.calls += 1
        return batch[0] * 2, batch[1]


def test_a_batch_transform_set_during_fit_is_used_from_then_on() -> None:
    callback = _ProgressiveScale()
    _trainer(_mlp(), callbacks=[callback]).fit([(X, Y)] * 3, epochs=2)
    assert callback.calls == 3


class _ParamMetric:
    """A metric of the user's with a parameter: its update must not build an autograd graph."""

    def __init__(self) -> None:
        self.net, self.total = nn.Linear(3, 1), torch.zeros(())

    def reset(self) -> None:
        self.total = torch.zeros(())

    def update(self, outputs, targets) -> None:
        self.total = self.total + self.net(outputs).sum()

    def compute(self) -> torch.Tensor:
        return self.total


def test_metrics_of_the_users_update_without_recording_a_graph() -> None:
    metric = _ParamMetric()
    _trainer(_mlp(), metrics={"p": metric}).fit([(X, Y)] * 3, epochs=1)
    assert not metric.total.requires_grad and metric.total.grad_fn is None


def test_nan_loss_names_the_step_and_skip_continues() -> None:
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 \(epoch 1, batch 2\).*on_nan='skip'"):
        _fit_one(_mlp(), [(X, Y), (X, Y), (bad, Y), (X, Y)])
    skipped = _mlp()
    trainer = _trainer(skipped, sgd=True, lr=0.1, on_nan="skip")
    history = trainer.fit([(X, Y), (bad, Y), (X, Y)], epochs=1)
    reference = _mlp()
    reference_history = _trainer(reference, sgd=True, lr=0.1).fit([(X, Y), (X, Y)], epochs=1)
    assert _same_weights(skipped, reference)  # the NaN batch changed nothing
    assert history[0]["train/loss"] == reference_history[0]["train/loss"]  # and is left out of the mean
    assert trainer.state.global_step == 3


def test_on_an_accelerator_the_first_nonfinite_batch_is_kept_on_the_device_and_raised_later() -> None:
    state, clean = LoopState(), LoopState()
    for i, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 1.0]):
        state.batch_idx = clean.batch_idx = i
        assert _finite_or_record(torch.tensor(value), state, False, "raise") is True  # no host read per step
        assert _finite_or_record(torch.tensor(1.0 + i), clean, False, "raise") is True
    raise_if_nonfinite(clean)
    with pytest.raises(NonFiniteLossError, match=r"loss is NaN or infinite at epoch 1, batch 2 of the epoch"):
        raise_if_nonfinite(state)


def test_a_target_class_out_of_range_is_explained() -> None:
    with pytest.raises(TrainingError, match=r"a target class id is >= the number of output channels.*`num_classes`"):
        _fit_one(_mlp(), [(X, torch.full((8,), 5))])


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"grad_accum": -1}, ValueError, r"`grad_accum` must be a positive integer, got -1"),
        ({"grad_accum": 2.0}, ValueError, r"`grad_accum` must be a positive integer, got 2\.0"),
        ({"scheduler_interval": "batch"}, ValueError, r"`scheduler_interval` must be 'epoch' or 'step', got 'batch'"),
        ({"on_nan": "ignore"}, ValueError, r"`on_nan` must be 'raise' or 'skip'"),
        ({"clip_grad_norm": 0}, ValueError, r"`clip_grad_norm` must be a positive finite number or None"),
        ({"clip_grad_norm": float("inf")}, ValueError, r"`clip_grad_norm` must be a positive finite number or None"),
        ({"clip_grad_norm": float("nan")}, ValueError, r"`clip_grad_norm` must be a positive finite number or None"),
        ({"lr": float("inf"), "sgd": True}, ValueError, r"learning rate must be finite and >= 0, got \[inf\]"),
        ({"lr": float("nan"), "sgd": True}, ValueError, r"learning rate must be finite and >= 0, got \[nan\]"),
        ({"device": "cuda:7"}, ValueError, r"`device='cuda:7'`"),
        ({"device": "gpu"}, ValueError, r"`device='gpu'` is not a device PyTorch knows"),
        ({"amp": "fp8"}, ValueError, r"`amp='fp8'` is not a precision mode"),
        ({"loss_fn": "ce"}, TypeError, r"`loss_fn` must be callable, got str"),
        ({"callbacks": [object()]}, TypeError, r"callbacks must subclass `trainkit\.callbacks\.Callback`, got object"),
    ],
)
def test_bad_trainer_arguments_name_the_argument(kwargs, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        _trainer(_mlp(), **kwargs)


def test_bad_model_optimizer_epochs_and_loaders_name_the_argument() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module, got function"):
        trainkit.Trainer(lambda x: x, opt, nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match=r"`optimizer` must be a torch\.optim\.Optimizer, got list"):
        trainkit.Trainer(model, list(model.parameters()), nn.CrossEntropyLoss())
    trainer = _trainer(model)
    with pytest.raises(ValueError, match=r"`epochs` must be a positive integer, got 0"):
        trainer.fit([(X, Y)], epochs=0)
    empty = DataLoader(_blobs(3), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match=r"`train_loader` yields no batches \(dataset of 3 samples\).*drop_last"):
        trainer.fit(empty, epochs=1)
    with pytest.raises(ValueError, match=r"`val_loader` yields no batches"):
        trainer.fit([(X, Y)], [], epochs=1)
    with pytest.raises(ValueError, match=r"`resume='last'` needs `run_dir`"):
        trainer.fit([(X, Y)], epochs=1, resume="last")


# ----------------------------------------------------------------------------- save and resume


def _resumable(run_dir: Path, model_seed: int = 0, callbacks=(), metrics: bool = False) -> trainkit.Trainer:
    model = _mlp(seed=model_seed, dropout=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    return trainkit.Trainer(
        model, opt, nn.CrossEntropyLoss(), scheduler=sched, run_dir=run_dir, seed=3, device="cpu",
        progress=False, amp=False, callbacks=list(callbacks),
        metrics={"acc": Accuracy(num_classes=3)} if metrics else None,
    )  # fmt: skip


def test_resume_at_an_epoch_boundary_is_bitwise(tmp_path: Path) -> None:
    data, val = _blobs(48), DataLoader(_blobs(16, 1), batch_size=8)
    full = _resumable(tmp_path / "full")
    full_history = full.fit(DataLoader(data, batch_size=8, shuffle=True), val, epochs=4)

    _resumable(tmp_path / "split").fit(DataLoader(data, batch_size=8, shuffle=True), val, epochs=2)
    resumed = _resumable(tmp_path / "split", model_seed=99)  # another init: the checkpoint must overwrite it
    history = resumed.fit(DataLoader(data, batch_size=8, shuffle=True), val, epochs=4, resume="last")
    assert _same_weights(full.module, resumed.module)
    assert history == full_history
    assert resumed.scheduler.last_epoch == 4
    assert (tmp_path / "split" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()


class _InterruptAt(Callback):
    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, state, output):
        if state.epoch == self.epoch and state.batch_idx == self.batch:
            raise KeyboardInterrupt


def _check_mid_epoch_resume(tmp_path: Path, make_loader) -> None:
    val = DataLoader(_blobs(16, 1), batch_size=8)
    full = _resumable(tmp_path / "full", callbacks=[ModelCheckpoint(every_n_steps=3)], metrics=True)
    full_history = full.fit(make_loader(), val, epochs=3)  # 8 batches an epoch

    run = tmp_path / "split"
    interrupted = _resumable(run, callbacks=[ModelCheckpoint(every_n_steps=3), _InterruptAt(1, 5)], metrics=True)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(make_loader(), val, epochs=3)
    saved = trainkit.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch_idx"], saved["global_step"]) == (1, 4, 12)  # the last multiple of 3

    resumed = _resumable(run, model_seed=99, callbacks=[ModelCheckpoint(every_n_steps=3)], metrics=True)
    history = resumed.fit(make_loader(), val, epochs=3, resume="last")
    assert _same_weights(full.module, resumed.module)
    assert history == full_history


def test_mid_epoch_resume_is_bitwise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _blobs(32)
    _check_mid_epoch_resume(tmp_path, lambda: DataLoader(data, batch_size=4, shuffle=True))
    assert re.search(r"resumed from .*last\.pt at epoch 2, batch 4", capsys.readouterr().out)


class _JitteredBlobs(Dataset):
    """Blobs with per-sample noise drawn from ``sample_rng(seed, epoch, index)``: the same in any worker."""

    def __init__(self, n: int):
        self.base, self.epoch = _blobs(n), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        from trainkit.data import sample_rng

        x, y = self.base[i]
        with sample_rng(0, self.epoch, i):
            return x + 0.3 * torch.randn(8), y


@pytest.mark.slow
def test_mid_epoch_resume_with_workers_and_augmentation_is_bitwise(tmp_path: Path) -> None:
    data = _JitteredBlobs(32)
    _check_mid_epoch_resume(tmp_path, lambda: DataLoader(data, batch_size=4, shuffle=True, num_workers=2))


# ----------------------------------------------------------------------------- custom steps, batches, metrics


class _TwoLosses(nn.Module):
    """A detection-style model: ``model(x, y)`` returns a dict of losses, ``model(x)`` the predictions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cls, self.reg = nn.Linear(8, 3), nn.Linear(8, 1)

    def forward(self, x, y=None):
        if y is None:
            return self.cls(x)
        return {"loss_cls": F.cross_entropy(self.cls(x), y), "loss_reg": self.reg(x).pow(2).mean()}


class _LossDictTrainer(trainkit.Trainer):
    def training_step(self, batch):
        x, y = batch
        return sum(self.model(x, y).values())


def test_a_subclass_training_step_summing_a_loss_dict_trains() -> None:
    model = _TwoLosses()
    trainer = _LossDictTrainer(model, torch.optim.SGD(model.parameters(), lr=0.01), device="cpu", progress=False)
    history = trainer.fit(DataLoader(_blobs(64), batch_size=16), epochs=3)
    assert history[-1]["train/loss"] < 0.7 * history[0]["train/loss"]
    assert model.reg(CENTERS).abs().max() < 0.5  # the regression head was trained to zero too


def test_a_training_step_callable_trains() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    inputs = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))

    def step(batch):  # a regression on inputs alone: 2 * the first feature
        (x,) = batch
        return F.mse_loss(model(x), 2 * x[:, :1])

    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), training_step=step, device="cpu", progress=False
    )
    history = trainer.fit(DataLoader(TensorDataset(inputs), batch_size=16), epochs=8)
    assert history[-1]["train/loss"] < 0.05 * history[0]["train/loss"]
    assert model.weight[0, 0].item() == pytest.approx(2.0, abs=0.05)


class _SquareSegmentation(Dataset):
    """Dict samples ``{"image", "mask"}``: a bright square (class 1) on a dark background (class 0)."""

    def __init__(self, n: int = 8):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask = torch.zeros(16, 16, dtype=torch.int64)
        mask[i % 8 : i % 8 + 6, 2:8] = 1
        image = mask.float().expand(3, 16, 16) + 0.1 * torch.randn(
            3, 16, 16, generator=torch.Generator().manual_seed(i)
        )
        return {"image": image, "mask": mask, "name": f"img{i}.png"}


def test_dict_batches_train_a_segmentation_model_with_mean_iou() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 3, padding=1)
    trainer = _trainer(model, lr=0.05, metrics={"miou": MeanIoU(num_classes=2)})
    loader = DataLoader(_SquareSegmentation(), batch_size=4)
    history = trainer.fit(loader, loader, epochs=6)
    assert list(history[-1]) == ["epoch", "train/loss", "train/miou", "val/loss", "val/miou", "lr"]
    assert history[-1]["val/miou"] > 0.9 and history[-1]["train/loss"] < history[0]["train/loss"]


class _DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(8, 3)

    def forward(self, x):
        return {"out": self.body(x)}


class _DictAccuracy:
    """A duck-typed metric (no base class) reading the ``"out"`` entry of dict outputs."""

    def reset(self) -> None:
        self.right, self.total = 0, 0

    def update(self, outputs, target) -> None:
        self.right += int((outputs["out"].argmax(1) == target).sum())
        self.total += len(target)

    def compute(self) -> float:
        return self.right / self.total


def test_dict_outputs_with_a_duck_typed_metric() -> None:
    model = _DictOutput()
    trainer = _trainer(
        model, lr=0.05, metrics={"acc": _DictAccuracy()}, loss_fn=lambda o, y: F.cross_entropy(o["out"], y)
    )
    val = DataLoader(_blobs(40, 1), batch_size=16)
    history = trainer.fit(DataLoader(_blobs(64), batch_size=16), val, epochs=3)
    assert sorted(history[-1]) == ["epoch", "lr", "train/acc", "train/loss", "val/acc", "val/loss"]
    x, y = _blobs(40, 1).tensors
    with torch.no_grad():
        expected = float((model(x)["out"].argmax(1) == y).float().mean())
    assert history[-1]["val/acc"] == pytest.approx(expected)
    assert trainer.evaluate(val)["acc"] == pytest.approx(expected)


def test_a_torchmetrics_metric_is_accepted() -> None:
    from torchmetrics.classification import MulticlassAccuracy

    metrics = {"tm": MulticlassAccuracy(num_classes=3, average="micro"), "ours": Accuracy(num_classes=3)}
    trainer = _trainer(_mlp(), metrics=metrics)
    val = DataLoader(_blobs(40, 1), batch_size=16)
    history = trainer.fit(DataLoader(_blobs(64), batch_size=16), val, epochs=2)
    for row in history:
        assert row["val/tm"] == pytest.approx(row["val/ours"]) and row["train/tm"] == pytest.approx(row["train/ours"])


# ----------------------------------------------------------------------------- callbacks


def test_hooks_run_in_order_with_the_right_counts() -> None:
    recorder = _Recorder()
    _trainer(_mlp(), callbacks=[recorder]).fit(
        DataLoader(_blobs(24), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8), epochs=2
    )
    epoch = [("batch", 1), ("batch", 2), ("batch", 3), ("validation_end", ["val/loss"])]
    assert recorder.calls == [
        ("fit_start", None),
        ("epoch_start", 1), *epoch, ("epoch_end", 1),
        ("epoch_start", 2), *epoch, ("epoch_end", 2),
        ("fit_end", None),
    ]  # fmt: skip


def test_hook_counts_with_a_mock_callback_and_on_exception() -> None:
    mock = MagicMock(spec=Callback)
    train, val = DataLoader(_blobs(24), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8)
    _trainer(_mlp(), callbacks=[mock]).fit(train, val, epochs=2)
    counts = {hook: getattr(mock, hook).call_count for hook in ("on_fit_start", "on_epoch_start")}
    counts.update({hook: getattr(mock, hook).call_count for hook in ("on_train_batch_end", "on_validation_end")})
    counts.update({hook: getattr(mock, hook).call_count for hook in ("on_epoch_end", "on_fit_end", "on_exception")})
    assert counts == {
        "on_fit_start": 1, "on_epoch_start": 2, "on_train_batch_end": 6, "on_validation_end": 2,
        "on_epoch_end": 2, "on_fit_end": 1, "on_exception": 0,
    }  # fmt: skip

    failing = MagicMock(spec=Callback)
    with pytest.raises(TrainingError):
        _trainer(_out_of_memory(), callbacks=[failing]).fit(train, epochs=2)
    assert failing.on_exception.call_count == 1 and failing.on_fit_end.call_count == 0
    assert isinstance(failing.on_exception.call_args.args[1], TrainingError)


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(patience: int) -> None:
    stop = EarlyStopping("val/loss", patience=patience)
    trainer = _trainer(_mlp(), sgd=True, lr=0.0, callbacks=[stop])  # lr 0: the loss never improves
    history = trainer.fit(DataLoader(_blobs(16), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8), epochs=10)
    assert len(history) == patience + 1  # epoch 1 sets the best; the next `patience` epochs do not improve on it
    assert stop.stopped_epoch == patience + 1 and stop.wait == patience and trainer.should_stop


def test_early_stopping_counts_from_the_last_improvement() -> None:
    stop = EarlyStopping("val/loss", patience=2)
    trainer = type("T", (), {"should_stop": False})()
    for epoch, value in enumerate([0.9, 0.8, 0.85, 0.7, 0.75, 0.75, 0.6], start=1):
        stop.on_epoch_end(trainer, {"epoch": epoch, "val/loss": value})
        if trainer.should_stop:
            break
    assert (stop.stopped_epoch, stop.best, stop.wait) == (6, 0.7, 2)


@pytest.mark.parametrize("checkpoint_first", [False, True])
def test_early_stopping_resumes_where_it_stopped(tmp_path: Path, checkpoint_first: bool) -> None:
    # ModelCheckpoint runs after the other callbacks wherever it is listed, so last.pt holds the count of the epoch.
    train, val = DataLoader(_blobs(16), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8)
    whole = EarlyStopping("val/loss", patience=3)
    history = _trainer(_mlp(), sgd=True, lr=0.0, callbacks=[whole]).fit(train, val, epochs=10)

    def callbacks(stop: EarlyStopping) -> list[Callback]:
        return [ModelCheckpoint(), stop] if checkpoint_first else [stop]

    first = EarlyStopping("val/loss", patience=3)
    _trainer(_mlp(), sgd=True, lr=0.0, callbacks=callbacks(first), run_dir=tmp_path / "run").fit(train, val, epochs=2)
    assert first.state_dict() == {"best": history[0]["val/loss"], "wait": 1}
    resumed = EarlyStopping("val/loss", patience=3)
    trainer = _trainer(_mlp(), sgd=True, lr=0.0, callbacks=callbacks(resumed), run_dir=tmp_path / "run")
    assert trainer.fit(train, val, epochs=10, resume="last") == history
    assert len(history) == 4 and resumed.stopped_epoch == whole.stopped_epoch == 4


def test_monitoring_a_missing_key_lists_the_logged_names() -> None:
    trainer = _trainer(_mlp(), callbacks=[EarlyStopping("val/miou", mode="max")])
    with pytest.raises(ValueError, match=r"monitors 'val/miou'.*logged names: epoch, lr, train/loss, val/loss"):
        trainer.fit(DataLoader(_blobs(16), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8), epochs=2)


def test_learning_rate_monitor_logs_every_group() -> None:
    model = _mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = trainkit.Trainer(
        model, opt, nn.CrossEntropyLoss(), scheduler=sched, callbacks=[LearningRateMonitor()], device="cpu",
        progress=False,
    )  # fmt: skip
    history = trainer.fit(DataLoader(_blobs(16), batch_size=8), epochs=2)
    assert [(r["lr"], r["lr-group0"], r["lr-group1"]) for r in history] == [(0.1, 0.1, 0.01), (0.05, 0.05, 0.005)]


class _ScriptedScore:
    """A metric whose compute() returns the next value of a script, one an evaluation."""

    def __init__(self, values: list[float]):
        self.values, self.calls = values, 0

    def reset(self) -> None:
        pass

    def update(self, outputs, target) -> None:
        pass

    def compute(self) -> float:
        self.calls += 1
        return self.values[(self.calls - 1) % len(self.values)]


def test_model_checkpoint_best_follows_the_monitored_metric(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(monitor="val/score", mode="max")
    trainer = _trainer(_mlp(), metrics={"score": _ScriptedScore([0.5, 0.9, 0.7])}, run_dir=tmp_path, callbacks=[ckpt])
    history = trainer.fit(DataLoader(_blobs(16), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8), epochs=3)
    assert [r["val/score"] for r in history] == [0.5, 0.9, 0.7]
    best = trainkit.load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["history"][-1]["val/score"] == 0.9
    assert ckpt.best == 0.9 and ckpt.best_path == tmp_path / "checkpoints" / "best.pt"


def test_model_checkpoint_keep_last_rotates_and_every_n_steps_writes_mid_epoch(tmp_path: Path) -> None:
    seen_steps = []

    class Peek(Callback):
        order = 200  # after ModelCheckpoint (100), which otherwise runs after every other callback

        def on_train_batch_end(self, trainer, state, output):
            last = tmp_path / "checkpoints" / "last.pt"
            seen_steps.append(trainkit.load_checkpoint(last)["global_step"] if last.exists() else None)

    ckpt = ModelCheckpoint(every_n_steps=2, keep_last=3, save_best=False)
    _trainer(_mlp(), run_dir=tmp_path, callbacks=[ckpt, Peek()]).fit(DataLoader(_blobs(40), batch_size=8), epochs=2)
    assert seen_steps == [None, 2, 2, 4, 4, 6, 6, 8, 8, 10]  # plus an epoch-end save at step 5, replaced at 6
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last-step10.pt", "last-step8.pt", "last.pt"]


@pytest.mark.parametrize("dirpath", ["../elsewhere", "/tmp/trainkit-outside"])
def test_model_checkpoint_outside_the_run_dir_is_rejected(tmp_path: Path, dirpath: str) -> None:
    trainer = _trainer(_mlp(), run_dir=tmp_path / "run", callbacks=[ModelCheckpoint(dirpath)])
    with pytest.raises(ValueError, match=r"`ModelCheckpoint\(dirpath=.*\)` is outside run_dir"):
        trainer.fit(DataLoader(_blobs(8), batch_size=8), epochs=1)
    assert not (tmp_path / "elsewhere").exists()


# ----------------------------------------------------------------------------- progress


def test_quiet_progress_prints_one_line_an_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    _trainer(_mlp(), metrics={"acc": Accuracy(num_classes=3)}).fit(
        DataLoader(_blobs(16), batch_size=8), DataLoader(_blobs(8, 1), batch_size=8), epochs=2
    )
    lines = capsys.readouterr().out.splitlines()
    number = r"\d\.\d{{4}}"  # float values print with 4 decimals, 1.0 as 1.0000
    pattern = rf"epoch {{}}/2  train/loss {number}  train/acc {number}  val/loss {number}  val/acc {number}  lr 0\.0100"
    assert len(lines) == 2
    assert all(re.fullmatch(pattern.format(i + 1), line) for i, line in enumerate(lines)), lines


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_tqdm_bars_on_a_terminal() -> None:
    stream = _FakeTTY()
    bar = Progress(enabled=True, total_epochs=2, refresh_s=0.0, stream=stream)
    assert bar.bars
    bar.start_fit()
    bar.start_batches(3, desc="train 1")
    for i in range(3):
        time.sleep(0.11)  # past tqdm's `mininterval`, so every update is drawn
        bar.advance(lambda i=i: {"loss": 1.0 / (i + 1)})
    bar.end_batches()
    bar.epoch_line({"epoch": 1, "train/loss": 0.25})
    bar.close()
    text = stream.getvalue()
    assert "train 1: 100%" in text and "3/3" in text and "loss=0.5" in text
    assert "epochs:  50%" in text and "1/2" in text and "train/loss=0.25" in text
    assert not Progress(enabled=False, stream=_FakeTTY()).bars and not Progress(enabled=True, stream=io.StringIO()).bars


def test_trainer_uses_bars_when_stdout_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)
    _trainer(_mlp(), progress=True).fit(DataLoader(_blobs(16), batch_size=8), epochs=2)
    text = stream.getvalue()
    assert "epochs: 100%" in text and "train 2:" in text and "epoch 1/2" not in text


# ----------------------------------------------------------------------------- evaluate and predict


class _ModeSpy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.linear(x)


def test_evaluate_is_a_sample_mean_in_eval_and_inference_mode() -> None:
    model = _ModeSpy()
    trainer = _trainer(model)
    data = _blobs(10)
    x, y = data.tensors
    with torch.no_grad():
        expected = float(F.cross_entropy(model.linear(x), y, reduction="sum")) / 10
    model.train()
    scores = trainer.evaluate(DataLoader(data, batch_size=4))  # batches of 4, 4 and 2
    assert scores["loss"] == pytest.approx(expected, rel=1e-6)
    assert model.seen == [(False, True)] * 3 and model.training
    model.eval()
    trainer.evaluate(DataLoader(data, batch_size=4))
    assert not model.training  # restored, not forced to train
    model.seen.clear()
    trainer.fit(DataLoader(data, batch_size=5), epochs=1)
    assert model.seen == [(True, False)] * 2


def test_predict_returns_cpu_outputs_per_batch() -> None:
    model = _ModeSpy()
    x = _blobs(10).tensors[0]
    outputs = _trainer(model).predict(DataLoader(TensorDataset(x), batch_size=4))
    assert [o.shape for o in outputs] == [torch.Size([4, 3]), torch.Size([4, 3]), torch.Size([2, 3])]
    assert all(o.device.type == "cpu" for o in outputs)
    with torch.no_grad():
        assert torch.equal(torch.cat(outputs), model.linear(x))
    assert model.seen == [(False, True)] * 3 and model.training


def test_tensorboard_events_are_written_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = _trainer(_mlp(), run_dir=tmp_path).fit(DataLoader(_blobs(16), batch_size=8), epochs=2)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train/loss"]
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(1, pytest.approx(history[0]["train/loss"])), (2, pytest.approx(history[1]["train/loss"]))]


@pytest.mark.parametrize("fed", [False, True])
def test_mid_epoch_checkpoint_keeps_whether_train_metrics_were_fed(tmp_path: Path, fed: bool) -> None:
    trainer = _trainer(_mlp(), metrics={"acc": Accuracy(num_classes=3)})
    trainer.state.batch_idx, trainer.state.samples, trainer.state.metrics_updated = 3, 24, fed
    path = trainer.save_checkpoint(tmp_path / "mid.pt")
    resumed = _trainer(_mlp(), metrics={"acc": Accuracy(num_classes=3)})
    resumed.load_checkpoint(path)
    assert resumed.state.batch_idx == 3
    assert resumed.state.metrics_updated is fed  # a loss-only step must not log train metrics after a resume


def test_fit_without_a_loss_says_what_to_pass_and_writes_nothing(tmp_path: Path) -> None:
    model = _mlp()
    trainer = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", run_dir=tmp_path / "r")
    with pytest.raises(ValueError, match=r"`Trainer.fit` needs `loss_fn=`.*`training_step=`"):
        trainer.fit(DataLoader(_blobs(8), batch_size=4), epochs=1)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("grad_accum", [0, 2.0, True])
def test_train_one_epoch_checks_grad_accum_like_the_trainer(grad_accum) -> None:
    model = _mlp()
    with pytest.raises(ValueError, match=r"`grad_accum` must be a positive integer"):
        train_one_epoch(
            model, [], torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), grad_accum=grad_accum
        )
