"""Tests for trainkit.engine.loops: the functional loops restore the model's train/eval mode and check
their ``device`` argument like the Trainer does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainkit
from trainkit.engine.loops import evaluate, predict, train_one_epoch


class _ModeSpy(nn.Module):
    """A linear model that records ``self.training`` at every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return self.linear(x)


def _data(batches: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 4, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(batches)]


def _train(model: nn.Module, **kwargs: Any) -> dict[str, float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_one_epoch(model, _data(), opt, nn.CrossEntropyLoss(), **kwargs)


# ----------------------------------------------------------------------------- train/eval mode


@pytest.mark.parametrize("training", [False, True])
def test_train_one_epoch_trains_in_train_mode_and_restores_the_previous_mode(training: bool) -> None:
    model = _ModeSpy().train(training)
    _train(model)
    assert model.seen == [True, True]
    assert model.training is training and model.linear.training is training


def test_train_one_epoch_restores_the_mode_when_the_step_fails() -> None:
    model = _ModeSpy().eval()

    def failing_step(batch: Any) -> torch.Tensor:
        model(batch[0])
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        train_one_epoch(model, _data(), torch.optim.SGD(model.parameters(), lr=0.1), step_fn=failing_step)
    assert model.seen == [True] and model.training is False


@pytest.mark.parametrize("with_validation", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_fit_leaves_the_model_in_the_mode_it_had(training: bool, with_validation: bool) -> None:
    model = _ModeSpy().train(training)
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), device="cpu", progress=False
    )
    trainer.fit(_data(), _data(1) if with_validation else None, epochs=2)
    per_epoch = [True, True, False] if with_validation else [True, True]  # 2 training batches, 1 validation batch
    assert model.seen == per_epoch * 2
    assert model.training is training


def test_the_mode_of_a_module_wrapped_in_ddp_is_restored(tmp_path: Path) -> None:
    """``m.eval()`` does not change the flag of a DDP wrapper made before or after it: the loops read the module's."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _ModeSpy()
        ddp = nn.parallel.DistributedDataParallel(model)
        model.eval()
        assert ddp.training and not model.training
        _train(ddp)
        assert model.training is False
        evaluate(ddp, _data(), nn.CrossEntropyLoss())
        predict(ddp, [x for x, _ in _data()])
        assert model.training is False and model.seen == [True, True] + [False, False] * 2
    finally:
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- device argument


_LOOPS: dict[str, Callable[[nn.Module, Any], Any]] = {
    "train_one_epoch": lambda model, device: _train(model, device=device),
    "evaluate": lambda model, device: evaluate(model, _data(), nn.CrossEntropyLoss(), device=device),
    "predict": lambda model, device: predict(model, [x for x, _ in _data()], device=device),
}


@pytest.mark.parametrize("loop", sorted(_LOOPS))
@pytest.mark.parametrize("device", ["cuda", torch.device("cuda")])
def test_a_cuda_device_without_cuda_is_a_clear_error(
    loop: str, device: str | torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _ModeSpy()
    message = r"`device=(device\(type=)?'cuda'\)?` asks for CUDA but no CUDA GPU is available; use 'auto' or 'cpu'"
    with pytest.raises(ValueError, match=message):
        _LOOPS[loop](model, device)
    assert model.seen == [] and model.training  # refused before any batch, the mode untouched


@pytest.mark.parametrize("loop", sorted(_LOOPS))
def test_an_unknown_device_name_is_a_clear_error(loop: str) -> None:
    with pytest.raises(ValueError, match=r"`device='gpu'` is not a device PyTorch knows; use 'auto', 'cpu', 'cuda'"):
        _LOOPS[loop](_ModeSpy(), "gpu")


@pytest.mark.parametrize("loop", sorted(_LOOPS))
@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu"), "auto"])
def test_none_keeps_the_models_device_and_names_resolve(
    loop: str, device: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" is then the CPU (or MPS: not in CI)
    if device == "auto" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("'auto' picks MPS here")
    model = _ModeSpy()
    _LOOPS[loop](model, device)
    assert len(model.seen) == 2
