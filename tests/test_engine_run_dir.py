"""The run directory: one writer at a time, no silent replacement of a finished run, best-effort plots."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit
from trainkit.engine.run_dir import RunDir, RunDirBusy

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 2
SRC = Path(trainkit.__file__).parents[1]


def _trainer(run_dir, lr: float = 0.1) -> trainkit.Trainer:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=lr), nn.CrossEntropyLoss(), device="cpu", progress=False,
        run_dir=run_dir, seed=0,
    )  # fmt: skip


def _data() -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=4)


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_second_writer_in_this_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    first = RunDir(tmp_path)
    first.open()
    with pytest.raises(RunDirBusy, match=rf"is in use by PID {os.getpid()} on .*choose another `run_dir`"):
        RunDir(tmp_path).open()
    with pytest.raises(RunDirBusy, match=r"is in use by PID"):
        _trainer(tmp_path).fit(_data(), epochs=1)
    first.close()
    _trainer(tmp_path).fit(_data(), epochs=1)  # released: the next run writes


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_lock_of_a_killed_run_is_released_by_the_kernel(tmp_path: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(SRC)!r})
        from trainkit.engine.run_dir import RunDir
        run = RunDir({str(tmp_path)!r})
        run.open()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=rf"is in use by PID {proc.pid} "):
            _trainer(tmp_path).fit(_data(), epochs=1)
        assert not (tmp_path / "metrics.csv").exists()  # refused before writing anything
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    history = _trainer(tmp_path).fit(_data(), epochs=1)
    assert len(history) == 1


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    _trainer(tmp_path).fit(_data(), epochs=3)
    before = {k: v for k, v in _files(tmp_path).items() if k != ".trainkit.lock"}
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 4
    found = r"\(metrics.csv, checkpoints/last.pt, checkpoints/best.pt\)"
    with pytest.raises(ValueError, match=rf"already holds a run {found}.*resume='last'.*overwrite=True.*--overwrite"):
        _trainer(tmp_path, lr=1.0).fit(_data(), epochs=1)
    assert {k: v for k, v in _files(tmp_path).items() if k != ".trainkit.lock"} == before

    resumed = _trainer(tmp_path).fit(_data(), epochs=4, resume="last")  # continues: epoch 4 only
    assert [row["epoch"] for row in resumed] == [1, 2, 3, 4]
    replaced = _trainer(RunDir(tmp_path, overwrite=True), lr=1.0).fit(_data(), epochs=1)
    assert [row["epoch"] for row in replaced] == [1]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # the new run's rows


def test_a_second_fit_on_one_trainer_continues_its_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = _trainer(tmp_path)
    trainer.fit(_data(), epochs=2)
    history = trainer.fit(_data(), epochs=4)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 5
    whole = _trainer(tmp_path / "whole").fit(_data(), epochs=4)
    assert history == whole  # the same run as one fit of 4 epochs
    assert trainer.fit(_data(), epochs=4) == history
    assert "already trained 4 of 4 epochs; nothing to do" in capsys.readouterr().out
    with pytest.raises(
        ValueError, match=r"`epochs=3` but this run has already trained 4 epochs; `epochs` is the total"
    ):
        trainer.fit(_data(), epochs=3)


def test_a_resume_with_fewer_epochs_than_done_says_so(tmp_path: Path) -> None:
    _trainer(tmp_path).fit(_data(), epochs=3)
    with pytest.raises(ValueError, match=r"`epochs=2` but this run has already trained 3 epochs"):
        _trainer(tmp_path).fit(_data(), epochs=2, resume="last")


def test_an_unwritable_checkpoint_folder_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: stand in for the permission check the kernel would make
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != checkpoints and real(path, mode))
    else:
        checkpoints.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"checkpoints` is not writable, so the run could not save its results"):
            _trainer(tmp_path).fit(_data(), epochs=1)
    finally:
        checkpoints.chmod(0o700)
    assert not (tmp_path / "metrics.csv").exists()


def test_a_run_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("notes")
    with pytest.raises(ValueError, match=r"is a file, not a folder"):
        _trainer(tmp_path / "run").fit(_data(), epochs=1)
    assert (tmp_path / "run").read_text() == "notes"


def test_a_failed_plot_warns_and_keeps_the_finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainkit.utils.plots as plots

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "plot_curves", full_disk)
    with pytest.warns(UserWarning, match=r"could not draw .*curves.png.*No space left.*metrics.csv are saved"):
        history = _trainer(tmp_path).fit(_data(), epochs=2)
    assert len(history) == 2 and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


# ----------------------------------------------------------------------------- resuming with other settings


class _StopAt(trainkit.callbacks.Callback):
    """Raise after batch ``n`` of epoch 1, as a crash would (the mid-epoch last.pt stays)."""

    def __init__(self, n: int):
        self.n = n

    def on_train_batch_end(self, trainer, state, output):
        if state.epoch == 0 and state.batch_idx == self.n:
            raise RuntimeError("crash")


def _checkpointing(run_dir, *, lr: float = 0.1, optimizer=torch.optim.SGD, callbacks=(), scheduler=False):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = optimizer(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5) if scheduler else None
    return trainkit.Trainer(
        model, opt, nn.CrossEntropyLoss(), device="cpu", progress=False, run_dir=run_dir, seed=0, scheduler=sched,
        callbacks=[trainkit.callbacks.ModelCheckpoint(every_n_steps=1), *callbacks],
    )  # fmt: skip


def _shuffled(batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(X, Y), batch_size=batch_size, shuffle=True)


def test_a_mid_epoch_resume_with_another_batch_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="crash"):
        _checkpointing(tmp_path, callbacks=[_StopAt(2)]).fit(_shuffled(4), epochs=2)
    refused = (
        r"after 1 batch\(es\) of 4 samples, and this training loader makes batches of 2.*Resume with `batch_size=4`"
    )
    with pytest.raises(ValueError, match=refused):
        _checkpointing(tmp_path).fit(_shuffled(2), epochs=2, resume="last")
    history = _checkpointing(tmp_path).fit(_shuffled(4), epochs=2, resume="last")
    assert history == _checkpointing(tmp_path / "whole").fit(_shuffled(4), epochs=2)


def test_a_resume_says_the_learning_rate_comes_from_the_checkpoint(tmp_path: Path) -> None:
    _checkpointing(tmp_path, scheduler=True).fit(_data(), epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same script resuming: no warning, whatever the scheduler did
        _checkpointing(tmp_path, scheduler=True).fit(_data(), epochs=2, resume="last")
    changed = _checkpointing(tmp_path, lr=0.01, scheduler=True)
    with pytest.warns(UserWarning, match=r"learning rate included \(\[0\.1\], not the \[0\.01\].*on_fit_start"):
        changed.fit(_data(), epochs=3, resume="last")
    assert changed.optimizer.param_groups[0]["initial_lr"] == 0.1


def test_a_resume_with_another_optimizer_class_names_both(tmp_path: Path) -> None:
    _checkpointing(tmp_path).fit(_data(), epochs=1)
    with pytest.raises(trainkit.errors.CheckpointError, match=r"written with a SGD optimizer and this run has a Adam"):
        _checkpointing(tmp_path, optimizer=torch.optim.Adam).fit(_data(), epochs=2, resume="last")


def test_extending_a_finished_run_follows_the_rebuilt_schedule_from_its_first_step(tmp_path: Path) -> None:
    from trainkit.cli.recipe import warmup_cosine

    def run(epochs: int, resume: str | None) -> tuple[list[float], list[dict[str, float]]]:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(epochs * 4))  # 4 steps an epoch
        used: list[float] = []

        def step(batch):
            used.append(opt.param_groups[0]["lr"])  # the rate this step trains at
            x, y = batch
            return nn.functional.cross_entropy(model(x), y)

        trainer = trainkit.Trainer(
            model, opt, scheduler=sched, scheduler_interval="step", training_step=step, device="cpu",
            progress=False, run_dir=tmp_path, seed=0,
        )  # fmt: skip
        return used, trainer.fit(_data(), epochs=epochs, resume=resume)

    run(3, None)
    used, history = run(4, "last")
    expected = [0.1 * warmup_cosine(16)(step) for step in range(12, 16)]
    assert used == pytest.approx(expected, rel=1e-12)  # the new schedule from the first step of epoch 4
    assert history[-1]["lr"] == pytest.approx(expected[0], rel=1e-12)  # and metrics.csv logs that rate
