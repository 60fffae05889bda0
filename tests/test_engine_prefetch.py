"""device_batches: plain moves on the CPU; on CUDA, batch i+1 is copied on a side stream before batch i is used.

The CUDA path is exercised on the CPU with stand-in stream objects that record the calls, so CI
without a GPU still checks the ordering that makes the copy overlap the compute.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torchvision import tv_tensors

from trainkit.engine import batches as _prefetch
from trainkit.engine.batches import BatchFixer, device_batches


def test_cpu_path_moves_fixes_and_transforms_each_batch() -> None:
    batches = [
        (torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.long)),
        (torch.zeros(1, 3), tv_tensors.Mask(torch.ones(1, dtype=torch.uint8))),  # widened, still a Mask
    ]
    fixer = BatchFixer(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float64 inputs' warning
        seen = list(device_batches(batches, torch.device("cpu"), fixer=fixer, transform=lambda b: (b[0] + 1, b[1])))
    assert [n for n, _ in seen] == [2, 1]
    assert all(b[0].dtype == torch.float32 and torch.equal(b[0], torch.ones_like(b[0])) for _, b in seen)
    assert all(b[1].dtype == torch.int64 for _, b in seen)
    assert type(seen[1][1][1]) is tv_tensors.Mask


def test_a_batch_that_needs_no_fix_passes_through_as_the_same_objects() -> None:
    model, loss_fn = torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss()
    fixer = BatchFixer(model, loss_fn)
    fine = (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    assert fixer(fine) is fine
    assert fixer([fine[0], "a label list"])[1] == "a label list"  # not a tensor: left alone
    ((inputs, targets),) = [b for _, b in device_batches([fine], torch.device("cpu"), fixer=fixer)]
    assert inputs is fine[0] and targets is fine[1]
    with pytest.warns(UserWarning, match="targets are uint8 but CrossEntropyLoss needs int64"):
        fixed = fixer((fine[0], torch.zeros(2, dtype=torch.uint8)))
    assert fixed[1].dtype == torch.long and fixed[0] is fine[0]


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []


class _FakeStream:
    def __init__(self, name: str, log: _Log) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.events.append(f"{self.name} waits {other.name}")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> _Log:
    log = _Log()
    side, main = _FakeStream("side", log), _FakeStream("main", log)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: side)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: main)

    @contextlib.contextmanager
    def on_stream(stream: _FakeStream):
        log.events.append(f"enter {stream.name}")
        yield
        log.events.append(f"exit {stream.name}")

    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(_prefetch, "move_to_device", lambda batch, device: log.events.append(f"copy {batch}") or batch)
    return log


def test_cuda_path_copies_the_next_batch_before_the_current_one_is_used(fake_cuda: _Log) -> None:
    consumed = []
    for n, batch in device_batches([[0], [1], [2]], torch.device("cuda")):
        fake_cuda.events.append(f"step {batch}")
        consumed.append((n, batch))
    assert consumed == [(1, [0]), (1, [1]), (1, [2])]
    events = fake_cuda.events
    # every copy runs on the side stream, after the side stream waited for the main one
    for k in range(3):
        i = events.index(f"copy [{k}]")
        assert events[i - 1] == "enter side" and events[i - 2] == "side waits main"
    # batch k+1 is copied before step k (overlap), and the main stream waits for the copy before step k
    assert events.index("copy [1]") < events.index("step [0]")
    assert events.index("copy [2]") < events.index("step [1]")
    before_step0 = events[: events.index("step [0]")]
    assert "main waits side" in before_step0


def test_cuda_path_with_an_empty_loader_yields_nothing(fake_cuda: _Log) -> None:
    assert list(device_batches([], torch.device("cuda"))) == []
