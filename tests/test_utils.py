"""Tests for trainkit.utils: seeding, device resolution and batch moves, the CSV logger, RNG state round trips."""

from __future__ import annotations

import random
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from trainkit.utils.device import move_to_device, resolve_device
from trainkit.utils.logging import CSVLogger, TensorBoardLogger
from trainkit.utils.seed import get_rng_state, seed_everything, set_rng_state

CPU = torch.device("cpu")


def _draws() -> tuple[float, np.ndarray, torch.Tensor]:
    return random.random(), np.random.rand(3), torch.rand(3)


# ----------------------------------------------------------------------------- seeding


def test_seed_everything_makes_every_rng_repeat() -> None:
    assert seed_everything(7) == 7
    first = _draws()
    seed_everything(np.int64(7))
    second = _draws()
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])
    seed_everything(8)
    assert not torch.equal(torch.rand(3), first[2])


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0", True, None])
def test_seed_everything_rejects_bad_seeds(bad) -> None:
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*32\), got"):
        seed_everything(bad)


def test_rng_state_round_trip_restores_python_numpy_and_torch() -> None:
    seed_everything(3)
    np.random.standard_normal()  # a cached gaussian is part of NumPy's state
    random.gauss(0, 1)
    state = get_rng_state()
    assert isinstance(state["python"]["state"], torch.Tensor) and isinstance(state["numpy"]["keys"], torch.Tensor)
    expected = (*_draws(), random.gauss(0, 1), np.random.standard_normal())
    seed_everything(4)
    set_rng_state(state)
    got = (*_draws(), random.gauss(0, 1), np.random.standard_normal())
    assert got[0] == expected[0] and got[3] == expected[3] and got[4] == expected[4]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


# ----------------------------------------------------------------------------- devices


def test_resolve_device_accepts_cpu_and_auto() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device(CPU) == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (expected, "mps")
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "tpu:x"])
def test_resolve_device_rejects_unknown_strings(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"`device={bad!r}` is not a device PyTorch knows; use 'auto', 'cpu'"):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="needs a machine with fewer than 8 GPUs")
def test_resolve_device_rejects_a_missing_gpu() -> None:
    pattern = r"only \d+ CUDA device\(s\) exist" if torch.cuda.is_available() else r"no CUDA GPU is available"
    with pytest.raises(ValueError, match=rf"`device='cuda:7'`.*{pattern}"):
        resolve_device("cuda:7")


def test_move_to_device_keeps_containers_types_and_non_tensor_leaves() -> None:
    Pair = namedtuple("Pair", ["image", "mask"])
    image = tv_tensors.Image(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(2, 4, 4, dtype=torch.int64))
    batch = {
        "pair": Pair(image, mask),
        "ordered": OrderedDict(a=torch.ones(1)),
        "list": [torch.zeros(1), "a.png", 3],
        "tuple": (torch.zeros(1), None),
        "path": Path("x.png"),
        "name": "sample",
    }
    moved = move_to_device(batch, CPU)
    assert type(moved) is dict
    assert type(moved["pair"]) is Pair
    assert type(moved["pair"].image) is tv_tensors.Image and type(moved["pair"].mask) is tv_tensors.Mask
    assert moved["pair"].image.dtype == torch.uint8 and torch.equal(moved["pair"].mask, mask)
    assert type(moved["ordered"]) is OrderedDict and list(moved["ordered"]) == ["a"]
    assert moved["list"][1:] == ["a.png", 3] and isinstance(moved["list"], list)
    assert isinstance(moved["tuple"], tuple) and moved["tuple"][1] is None
    assert moved["path"] == Path("x.png") and moved["name"] == "sample"


def test_move_to_device_changes_the_device_of_every_tensor() -> None:
    moved = move_to_device({"x": [torch.ones(2)], "y": (torch.zeros(1),)}, torch.device("meta"))
    assert moved["x"][0].device.type == "meta" and moved["y"][0].device.type == "meta"


def test_move_to_device_leaves_tensors_already_there_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.ones(2), torch.zeros(2, dtype=torch.long)

    def no_to(*args, **kwargs):
        raise AssertionError("`.to()` called for a tensor already on the device")

    monkeypatch.setattr(torch.Tensor, "to", no_to)
    moved = move_to_device((x, [y], {"y": y}), CPU)
    monkeypatch.undo()
    assert moved[0] is x and moved[1][0] is y and moved[2]["y"] is y


# ----------------------------------------------------------------------------- logging


def test_csv_logger_widens_the_header_and_keeps_rows(tmp_path: Path) -> None:
    log = CSVLogger(tmp_path / "metrics.csv")
    log.start()
    log.log_epoch({"epoch": 1, "train/loss": 0.5})
    log.log_epoch({"epoch": 2, "train/loss": 0.25})
    assert log.path.read_text().splitlines() == ["epoch,train/loss", "1,0.5", "2,0.25"]
    log.log_epoch({"epoch": 3, "train/loss": 0.125, "val/loss": 0.3})
    assert log.path.read_text().splitlines() == ["epoch,train/loss,val/loss", "1,0.5,", "2,0.25,", "3,0.125,0.3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_csv_logger_start_on_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    log = CSVLogger(tmp_path / "metrics.csv")
    for epoch in (1, 2, 3):
        log.log_epoch({"epoch": epoch, "train/loss": 1.0 / epoch})
    resumed = CSVLogger(tmp_path / "metrics.csv")
    resumed.start([{"epoch": 1, "train/loss": 1.0}])
    resumed.log_epoch({"epoch": 2, "train/loss": 0.75})
    assert resumed.path.read_text().splitlines() == ["epoch,train/loss", "1,1.0", "2,0.75"]


def test_tensorboard_logger_without_tensorboard_is_a_silent_no_op(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert logger.available is False
        logger.log_scalars({"train/loss": 1.0}, step=0)
        logger.close()
        assert not (tmp_path / "tb").exists()
    else:
        assert logger.available is True
