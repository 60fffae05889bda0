"""Memory stays flat over long runs: nothing keeps a step's tensors (and their autograd graphs) alive.

The notes' trap is ``train_loss.append(loss)``: every stored loss holds its whole graph. These tests run a few
thousand tiny steps and check with weak references and the garbage collector, never with timings, that no
loss, output or graph survives its step, and that the history, the metrics and the running sums hold floats
or detached tensors only.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import trainkit
from trainkit.callbacks import Callback
from trainkit.engine.loops import LoopState, evaluate, train_one_epoch
from trainkit.metrics import Accuracy

STEPS_PER_EPOCH, EPOCHS = 500, 5  # 2500 optimizer steps


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Batches of 2 gain nothing from threads, and thread contention on a busy machine makes steps 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 4, generator=g), torch.randint(0, 2, (2,), generator=g)) for _ in range(n)]


def _graph_tensors() -> int:
    """Tensors alive anywhere in the process that carry an autograd graph."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor) and obj.grad_fn is not None)


class _WatchSteps(Callback):
    """Keeps a weak reference to every step's loss and outputs, and counts graph tensors at two points."""

    def __init__(self, sample_at: tuple[int, int]):
        self.refs: list[weakref.ref[torch.Tensor]] = []
        self.sample_at = sample_at
        self.graph_counts: list[int] = []

    def on_train_batch_end(self, trainer, state, output):
        self.refs += [weakref.ref(output.loss), weakref.ref(output.outputs)]
        if state.global_step in self.sample_at and trainer.at_step_boundary(state):
            self.graph_counts.append(_graph_tensors())


def test_thousands_of_trainer_steps_keep_no_graph_alive() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    watch = _WatchSteps(sample_at=(100, STEPS_PER_EPOCH * EPOCHS - 1))
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(),
        metrics={"acc": Accuracy(num_classes=2)}, callbacks=[watch], device="cpu", amp=False, progress=False,
    )  # fmt: skip
    baseline = _graph_tensors()
    history = trainer.fit(_batches(STEPS_PER_EPOCH), epochs=EPOCHS)

    assert trainer.state.global_step == STEPS_PER_EPOCH * EPOCHS
    assert len(watch.refs) == 2 * STEPS_PER_EPOCH * EPOCHS
    gc.collect()
    assert sum(ref() is not None for ref in watch.refs) == 0  # no loss or output outlived the run
    # Mid-run, at most the current step's own tensors are alive (the same few at step 100 and step 2999).
    early, late = watch.graph_counts
    assert late == early <= baseline + 8
    assert _graph_tensors() == baseline
    assert all(type(value) in (int, float) for row in history for value in row.values())
    assert all(type(value) is float for value in trainer.epoch_logs.values())
    assert trainer.state.loss_sum is not None and trainer.state.loss_sum.grad_fn is None
    assert not trainer.state.loss_sum.requires_grad


def test_the_functional_loop_returns_floats_so_appending_them_keeps_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = _batches(STEPS_PER_EPOCH)
    metrics = {"acc": Accuracy(num_classes=2)}
    baseline = _graph_tensors()
    train_history, val_history = [], []
    for _ in range(4):  # the notes' `train_loss.append(fit(...))` pattern, 2000 steps
        train_history.append(train_one_epoch(model, data, optimizer, nn.CrossEntropyLoss(), metrics=metrics))
        val_history.append(evaluate(model, data[:50], nn.CrossEntropyLoss(), metrics))
    assert _graph_tensors() == baseline
    assert all(type(v) is float for logs in train_history + val_history for v in logs.values())
    assert sorted(train_history[0]) == sorted(val_history[0]) == ["acc", "loss"]
    for state in (metrics["acc"].state_dict(),):
        assert all(not t.requires_grad for t in state.values() if isinstance(t, torch.Tensor))


def test_the_running_loss_sum_is_detached_from_every_step() -> None:
    state = LoopState()
    weight = torch.ones(3, requires_grad=True)
    refs = []
    for _ in range(100):
        loss = (weight * 2).sum()
        refs.append(weakref.ref(loss))
        state.add_loss(loss, 4)
        del loss
    gc.collect()
    assert state.samples == 400 and float(state.loss_sum) == 100 * 6.0 * 4
    assert state.loss_sum.grad_fn is None and all(ref() is None for ref in refs)
