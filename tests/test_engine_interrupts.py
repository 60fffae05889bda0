"""Tests for trainkit.engine.interrupts: Ctrl-C/SIGTERM during fit stop at a step boundary, save, say how to resume.

The signals are sent by the process to itself from a callback, so the moment is exact; tests/test_resume.py
sends them from outside at random moments.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trainkit
from trainkit.callbacks import Callback, ModelCheckpoint
from trainkit.engine.interrupts import GracefulInterrupt, StopRequested, resume_hint


def _data(n: int = 36, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(torch.randn(n, 6, generator=g) + y[:, None], y)


def _trainer(run_dir: Path | None, callbacks=(), grad_accum: int = 3, model_seed: int = 0) -> trainkit.Trainer:
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=3 * 3)
    return trainkit.Trainer(
        model, opt, nn.CrossEntropyLoss(), scheduler=sched, scheduler_interval="step", grad_accum=grad_accum,
        callbacks=list(callbacks), run_dir=run_dir, device="cpu", amp=False, seed=1, progress=False,
    )  # fmt: skip


def _loader() -> DataLoader:
    return DataLoader(_data(), batch_size=4, shuffle=True)  # 9 batches: 3 groups of grad_accum=3


def _val() -> DataLoader:
    return DataLoader(_data(8, seed=1), batch_size=8)


class _SignalAt(Callback):
    """Send ``signals`` to this process after the given ``(epoch, batch_idx)`` points (0-based epoch)."""

    def __init__(self, *points: tuple[int, int, int]):
        self.points = {(epoch, batch): sig for epoch, batch, sig in points}
        self.seen_handlers: list[object] = []

    def on_train_batch_end(self, trainer, state, output):
        self.seen_handlers.append(signal.getsignal(signal.SIGINT))
        sig = self.points.get((state.epoch, state.batch_idx))
        if sig is not None:
            os.kill(os.getpid(), sig)


class _Exceptions(Callback):
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_exception(self, trainer, error):
        self.errors.append(error)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sigint_mid_group_finishes_the_group_saves_and_resumes_bitwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = _trainer(tmp_path / "full")
    full_history = full.fit(_loader(), _val(), epochs=3)

    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    seen = _Exceptions()
    with pytest.raises(KeyboardInterrupt):
        _trainer(run, callbacks=[_SignalAt((1, 4, signal.SIGINT)), seen]).fit(_loader(), _val(), epochs=3)
    assert signal.getsignal(signal.SIGINT) is before  # restored
    assert [type(e) for e in seen.errors] == [KeyboardInterrupt]

    last = run / "checkpoints" / "last.pt"
    saved = trainkit.load_checkpoint(last)
    # Signalled after batch 5 of epoch 2 (batch_idx 4, inside the group 3..5): the group is finished first.
    assert (saved["epoch"], saved["batch_idx"], saved["global_step"]) == (1, 6, 5)
    err = capsys.readouterr().err
    assert "trainkit: SIGINT received: stopping after the current optimizer step" in err
    assert f"stopped at epoch 2, batch 6 (step 5); saved {last}; resume with `trainer.fit(..., resume='{last}')`" in err

    resumed = _trainer(run, model_seed=99)
    history = resumed.fit(_loader(), _val(), epochs=3, resume=str(last))
    assert _same_weights(full.module, resumed.module)
    assert history == full_history


def test_sigterm_exits_143_after_saving_at_the_step_boundary(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        _trainer(tmp_path, callbacks=[_SignalAt((0, 2, signal.SIGTERM))]).fit(_loader(), epochs=3)
    assert exc.value.code == 143
    saved = trainkit.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch_idx"], saved["global_step"]) == (0, 3, 1)
    assert saved["loader"] is not None  # the epoch's permutation, for the mid-epoch resume


def test_a_signal_at_the_last_batch_resumes_into_the_validation_pass(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full")
    full_history = full.fit(_loader(), _val(), epochs=3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _trainer(run, callbacks=[_SignalAt((0, 9, signal.SIGINT))]).fit(_loader(), _val(), epochs=3)
    saved = trainkit.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch_idx"], saved["history"]) == (0, 9, [])  # trained, not yet validated
    resumed = _trainer(run, model_seed=5)
    assert resumed.fit(_loader(), _val(), epochs=3, resume="last") == full_history
    assert _same_weights(full.module, resumed.module)


def test_a_signal_during_validation_stops_at_the_end_of_the_epoch(tmp_path: Path) -> None:
    class SignalInValidation(Callback):
        def on_validation_end(self, trainer, logs):
            if trainer.state.epoch == 0:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, callbacks=[SignalInValidation()]).fit(_loader(), _val(), epochs=3)
    saved = trainkit.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["batch_idx"], len(saved["history"])) == (1, 0, 1)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # header + the finished epoch


def test_a_second_signal_aborts_at_once_without_saving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = _SignalAt((0, 1, signal.SIGINT), (0, 2, signal.SIGINT))  # both inside the first group of 3
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, callbacks=[both]).fit(_loader(), epochs=3)
    assert not (tmp_path / "checkpoints").exists()
    assert "second SIGINT: stopping now, without a checkpoint" in capsys.readouterr().err


def test_without_run_dir_it_stops_and_says_nothing_was_saved(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = _trainer(None, callbacks=[_SignalAt((0, 4, signal.SIGINT))])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(_loader(), epochs=3)
    assert trainer.state.batch_idx == 6
    assert re.search(
        r"stopped at epoch 1, batch 6 \(step 2\); no checkpoint was written \(set `Trainer\(run_dir=",
        (capsys.readouterr().err),
    )


def test_handlers_are_installed_during_fit_only_and_only_in_the_main_thread(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    probe = _SignalAt()
    _trainer(None, callbacks=[probe]).fit(_loader(), epochs=1)
    assert all(getattr(h, "__self__", None).__class__ is GracefulInterrupt for h in probe.seen_handlers)
    assert signal.getsignal(signal.SIGTERM) is before

    in_thread = _SignalAt()
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            _trainer(None, callbacks=[in_thread]).fit(_loader(), epochs=1)
        except BaseException as err:  # surfaced below
            errors.append(err)

    worker = threading.Thread(target=fit)
    worker.start()
    worker.join()
    assert errors == []
    assert in_thread.seen_handlers and all(h is signal.getsignal(signal.SIGINT) for h in in_thread.seen_handlers)


class _SelfSignalling(Dataset):
    """A dataset whose DataLoader worker receives SIGINT (like a Ctrl-C reaching the whole process group)."""

    def __init__(self) -> None:
        self.base = _data()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if i == 0 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGINT)
        return self.base[i]


@pytest.mark.slow
def test_a_forked_worker_ignores_the_signal_and_keeps_serving_batches(capfd: pytest.CaptureFixture[str]) -> None:
    model = nn.Linear(6, 3)
    trainer = trainkit.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                               device="cpu", progress=False)  # fmt: skip
    loader = DataLoader(_SelfSignalling(), batch_size=4, shuffle=True, num_workers=2, multiprocessing_context="fork")
    history = trainer.fit(loader, epochs=2)  # a worker killed by KeyboardInterrupt would fail the epoch
    assert [row["epoch"] for row in history] == [1, 2]
    assert trainer.state.global_step == 18
    assert "SIGINT" not in capfd.readouterr().err  # the worker neither stopped the run nor printed the notice


def test_graceful_interrupt_records_then_raises_the_exit_error() -> None:
    interrupt = GracefulInterrupt(stream=open(os.devnull, "w"))  # noqa: SIM115 - closed with the object
    interrupt.install()
    try:
        interrupt.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested
        with pytest.raises(StopRequested, match="SIGTERM"):
            interrupt.check()
    finally:
        interrupt.restore()
        interrupt.stream.close()
    error = interrupt.exit_error()
    assert isinstance(error, SystemExit) and error.code == 143
    assert not GracefulInterrupt(enabled=False).install().installed


def test_resume_hint_names_the_fit_argument_and_the_cli_command() -> None:
    path = Path("runs/a/checkpoints/last.pt")
    assert resume_hint(path, ["train.py", "--lr", "0.1"]) == f"resume with `trainer.fit(..., resume='{path}')`"
    cli = resume_hint(path, ["/venv/bin/trainkit", "train", "--images", "my images", "--resume", "old.pt", "--lr=1"])
    assert cli.endswith("or run: trainkit train --images 'my images' --lr=1 --resume last")
    module = resume_hint(path, ["/x/site-packages/trainkit/__main__.py", "train", "--resume=last"])
    assert module.endswith("or run: python -m trainkit train --resume last")
    assert resume_hint(None).startswith("no checkpoint was written")


def test_model_checkpoint_dirpath_is_where_the_interrupt_checkpoint_goes(tmp_path: Path) -> None:
    callbacks = [ModelCheckpoint("ckpts", save_best=False), _SignalAt((0, 3, signal.SIGINT))]
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, callbacks=callbacks).fit(_loader(), epochs=3)
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["last.pt"]
    assert trainkit.load_checkpoint(tmp_path / "ckpts" / "last.pt")["batch_idx"] == 3


def test_a_signal_ignored_before_fit_stays_ignored(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        probe = _SignalAt((0, 2, signal.SIGTERM))
        history = _trainer(tmp_path, callbacks=[probe]).fit(_loader(), epochs=1)  # the SIGTERM changes nothing
        assert [row["epoch"] for row in history] == [1]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
