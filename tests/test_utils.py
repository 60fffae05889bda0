"""Tests for trainkit.utils: seeding, device resolution, nested batches (walker, key roles, moves, batch size),
the CSV logger, RNG state round trips."""

from __future__ import annotations

import random
import warnings
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

import trainkit.utils
from trainkit.data import collate, collate_instances
from trainkit.engine.batches import BatchFixer, split_batch
from trainkit.utils.batch import (
    BATCH,
    INPUT,
    INPUT_KEYS,
    KEEP,
    KEPT_KEYS,
    TARGET,
    TARGET_KEYS,
    batch_size_of,
    key_for,
    key_role,
    map_tensors,
)
from trainkit.utils.device import move_to_device, resolve_device
from trainkit.utils.dtypes import batch_dtype, to_batch_dtype
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


def test_move_to_device_is_the_same_function_from_every_import_path() -> None:
    from trainkit.utils.batch import move_to_device as from_batch

    assert trainkit.utils.move_to_device is move_to_device is from_batch


def test_move_to_device_keeps_the_non_blocking_choice_per_call() -> None:
    calls = []

    class Spy(torch.Tensor):
        def to(self, *args, **kwargs):
            calls.append(kwargs["non_blocking"])
            return torch.zeros(1, device="meta")

    spy = torch.zeros(1).as_subclass(Spy)
    meta = torch.device("meta")
    move_to_device((spy,), meta, non_blocking=True)
    move_to_device((spy,), meta, non_blocking=False)
    move_to_device((spy,), meta)  # the default: non-blocking only on CUDA
    assert calls == [True, False, False]


# ----------------------------------------------------------------------------- nested batches


class _Pair(namedtuple("_Pair", ["image", "mask"])):
    pass


class _NeedsTwoArguments(dict):
    def __init__(self, items, extra):
        super().__init__(items)


def test_map_tensors_maps_every_tensor_and_keeps_containers_and_leaves() -> None:
    mask = tv_tensors.Mask(torch.ones(2, dtype=torch.int64))
    batch = {
        "pair": _Pair(torch.ones(1), mask),
        "ordered": OrderedDict(a=torch.ones(2)),
        "odd": _NeedsTwoArguments({"b": torch.ones(1)}, extra=None),
        "list": [torch.zeros(1), "a.png", 3, None, Path("x.png")],
        "shape": torch.Size([2, 3]),
        "range": range(2),
    }
    out = map_tensors(batch, lambda t: t * 2)
    assert type(out) is dict and type(out["pair"]) is _Pair and type(out["ordered"]) is OrderedDict
    assert type(out["odd"]) is dict and out["odd"]["b"].tolist() == [2.0]  # cannot be rebuilt: a dict
    assert out["pair"].image.tolist() == [2.0] and out["ordered"]["a"].tolist() == [2.0, 2.0]
    assert out["pair"].mask.tolist() == [2, 2] and map_tensors([mask], type) == [tv_tensors.Mask]  # fn gets the Mask
    widened = map_tensors(_Pair(torch.ones(1), mask), lambda t: t.to(torch.float64))
    assert type(widened.mask) is tv_tensors.Mask and widened.mask.dtype == torch.float64  # kept by `.to()`
    assert out["list"][1:] == ["a.png", 3, None, Path("x.png")] and out["list"][0].tolist() == [0.0]
    assert out["shape"] == torch.Size([2, 3]) and type(out["shape"]) is torch.Size
    assert out["range"] == [0, 1]  # another Sequence: a list
    assert map_tensors(torch.ones(1), lambda t: t + 1).tolist() == [2.0]
    assert map_tensors("text", lambda t: t + 1) == "text"


def test_map_tensors_calls_fn_once_per_tensor_in_order_for_the_usual_batch() -> None:
    x, y = torch.zeros(2, 3), torch.ones(2, dtype=torch.long)
    seen: list[torch.Tensor] = []
    out = map_tensors((x, y), lambda t: seen.append(t) or t)
    assert type(out) is tuple and out[0] is x and out[1] is y and seen == [x, y]
    out = map_tensors([x, [y, "id"]], lambda t: t.shape[0])
    assert out == [2, [2, "id"]]


def test_map_tensors_with_roles_follows_the_roles_table() -> None:
    def role_of(tensor: torch.Tensor, role: str) -> str:
        return role

    t = torch.zeros(1)
    assert map_tensors(t, role_of, with_role=True) == BATCH
    assert map_tensors((t, t, t), role_of, with_role=True) == (INPUT, TARGET, TARGET)
    assert map_tensors(_Pair(t, t), role_of, with_role=True) == _Pair(INPUT, TARGET)
    sample = {"image": t, "mask": t, "masks": t, "y": t, "name": "a", "weight": t}
    assert map_tensors(sample, role_of, with_role=True) == {
        "image": INPUT, "mask": TARGET, "masks": TARGET, "y": TARGET, "name": "a", "weight": INPUT
    }  # fmt: skip
    detection = (t, {"labels": t, "masks": t, "boxes": t, "area": t, "iscrowd": t, "image_id": t, "extra": [t]})
    assert map_tensors(detection, role_of, with_role=True) == (
        INPUT,
        {"labels": TARGET, "masks": KEEP, "boxes": KEEP, "area": KEEP, "iscrowd": KEEP, "image_id": KEEP,
         "extra": [TARGET]},
    )  # fmt: skip
    nested = ([t, {"mask": t}], ({"boxes": {"labels": t}},))
    assert map_tensors(nested, role_of, with_role=True) == ([INPUT, {"mask": TARGET}], ({"boxes": {"labels": KEEP}},))
    assert map_tensors([t], role_of, with_role=True, role=TARGET) == [TARGET]


def test_map_tensors_leaf_types_reach_fn_too() -> None:
    out = map_tensors((np.ones(2), [np.int64(3)], "a"), torch.as_tensor, leaf_types=(np.ndarray, np.generic))
    assert out[0].tolist() == [1.0, 1.0] and out[1][0].item() == 3 and out[2] == "a"


def test_key_role_table() -> None:
    assert [key_role(k) for k in (0, 1, 2, "image", "name")] == [INPUT, TARGET, TARGET, INPUT, INPUT]
    assert all(key_role(k) == TARGET for k in TARGET_KEYS)  # "masks" at the root names the targets
    assert all(key_role(k, TARGET) == KEEP for k in KEPT_KEYS)  # inside a target: a detection target's fields
    assert [key_role(k, TARGET) for k in ("labels", "mask", 0)] == [TARGET, TARGET, TARGET]
    assert [key_role(k, INPUT) for k in (0, 1, "mask", "image")] == [INPUT, INPUT, TARGET, INPUT]
    assert [key_role(k, KEEP) for k in ("labels", 1)] == [KEEP, KEEP]
    assert all(key_role(k) == INPUT for k in INPUT_KEYS)


def test_key_for_prefers_the_tables_order() -> None:
    batch = {"labels": 1, "x": 2, "mask": 3, "image": 4}
    assert key_for(batch, INPUT) == "image" and key_for(batch, TARGET) == "mask"
    assert key_for({"name": 1}, INPUT) is None and key_for({"name": 1}, TARGET) is None


@pytest.mark.parametrize("target_key", TARGET_KEYS)
@pytest.mark.parametrize("input_key", INPUT_KEYS)
def test_collate_and_split_batch_read_the_same_keys(input_key: str, target_key: str) -> None:
    sample = {input_key: torch.zeros(2, dtype=torch.uint8), target_key: torch.ones(2, dtype=torch.int32), "id": 7}
    batch = collate([sample, sample])
    inputs, targets = split_batch(batch)
    assert inputs.dtype == torch.uint8 and inputs.shape == (2, 2)  # inputs keep their dtype
    assert targets.dtype == torch.int64 and targets.tolist() == [[1, 1], [1, 1]]  # class ids made int64
    assert batch["id"].tolist() == [7, 7]


def test_collate_instances_keeps_a_detection_targets_fields_by_the_table() -> None:
    target = {k: np.ones(2, dtype=np.int32) for k in KEPT_KEYS} | {"labels": np.ones(2, dtype=np.int32)}
    _, (fixed, _) = collate_instances([(torch.zeros(1), target)] * 2)
    assert {k: fixed[k].dtype for k in fixed} == {**dict.fromkeys(KEPT_KEYS, torch.int32), "labels": torch.int64}


@pytest.mark.parametrize(
    ("batch", "size"),
    [
        ((torch.zeros(4, 3), torch.zeros(4)), 4),
        ([torch.zeros(5, 3)], 5),
        (torch.zeros(3, 2), 3),
        (torch.tensor(1.0), 1),
        ({"image": torch.zeros(2, 3), "mask": torch.zeros(2)}, 2),
        ({"name": ["a", "b", "c"], "image": torch.zeros(2, 3)}, 3),  # the first entry decides
        (([torch.zeros(3, 8, 8), torch.zeros(3, 5, 5)], [{"labels": torch.ones(1)}] * 2), 2),  # detection lists
        ((tv_tensors.Image(torch.zeros(6, 3, 2, 2)), torch.zeros(6)), 6),
        (["a.png", "b.png"], 2),
        ("not a batch", 1),
    ],
)
def test_batch_size_of(batch: object, size: int) -> None:
    assert batch_size_of(batch) == size


# ----------------------------------------------------------------------------- the dtype contract


@pytest.mark.parametrize(
    ("tensor", "role", "kwargs", "dtype"),
    [
        (torch.zeros(2, dtype=torch.uint8), INPUT, {}, torch.uint8),  # images stay uint8
        (torch.zeros(2, dtype=torch.float64), INPUT, {}, torch.float32),
        (torch.zeros(2, dtype=torch.float16), INPUT, {}, torch.float16),
        (torch.zeros(2, dtype=torch.float64), INPUT, {"input_dtype": torch.bfloat16}, torch.bfloat16),
        (torch.zeros(2), BATCH, {"input_dtype": torch.float64}, torch.float64),
        (torch.zeros(2, dtype=torch.int32), INPUT, {"input_dtype": torch.float32}, torch.int32),
        (torch.zeros(2, dtype=torch.int32), INPUT, {}, torch.int32),
        (torch.zeros(2, dtype=torch.uint8), TARGET, {}, torch.int64),
        (torch.zeros(2, dtype=torch.bool), TARGET, {}, torch.int64),
        (torch.zeros(2, dtype=torch.uint8), TARGET, {"class_ids": False}, torch.uint8),
        (torch.zeros(2, dtype=torch.float64), TARGET, {}, torch.float32),  # float targets stay float
        (torch.zeros(2, dtype=torch.float64), TARGET, {"input_dtype": torch.float16}, torch.float32),
        (tv_tensors.Mask(torch.zeros(2, dtype=torch.int32)), INPUT, {}, torch.int64),  # a Mask is class ids anywhere
        (tv_tensors.Mask(torch.zeros(2, dtype=torch.bool)), KEEP, {}, torch.bool),  # ... but a detection target's
        (torch.zeros(2, dtype=torch.int32), KEEP, {}, torch.int32),
        (torch.zeros(2, dtype=torch.float64), KEEP, {}, torch.float32),
        (torch.zeros(2, dtype=torch.complex64), TARGET, {}, torch.complex64),
    ],
)
def test_batch_dtype_table(tensor: torch.Tensor, role: str, kwargs: dict, dtype: torch.dtype) -> None:
    assert batch_dtype(tensor, role, **kwargs) == dtype
    assert to_batch_dtype(tensor, role, **kwargs).dtype == dtype


def test_to_batch_dtype_decides_float_class_ids_by_their_values() -> None:
    whole, half = torch.tensor([0.0, 3.0], dtype=torch.float64), torch.tensor([0.0, 0.5])
    mask = to_batch_dtype(tv_tensors.Mask(whole), TARGET)
    assert type(mask) is tv_tensors.Mask and mask.dtype == torch.int64 and mask.tolist() == [0, 3]
    assert to_batch_dtype(tv_tensors.Mask(half), TARGET).dtype == torch.float32  # a soft mask
    assert to_batch_dtype(tv_tensors.Mask(whole), KEEP).dtype == torch.float32
    assert to_batch_dtype(whole, TARGET).dtype == torch.float32  # not a Mask: BCE targets
    assert to_batch_dtype(whole, TARGET, class_ids=True).tolist() == [0, 3]  # the loss takes class ids
    assert to_batch_dtype(half, TARGET, class_ids=True).dtype == torch.float32  # the caller raises for these
    assert to_batch_dtype(tv_tensors.Mask(whole), TARGET, class_ids=False).dtype == torch.float32
    ready = torch.zeros(2, dtype=torch.int64)
    assert to_batch_dtype(ready, TARGET) is ready
    from_numpy = to_batch_dtype(np.array([1, 2], dtype=np.uint8), TARGET)
    assert from_numpy.dtype == torch.int64 and from_numpy.tolist() == [1, 2]


@pytest.mark.parametrize(
    "target",
    [
        torch.tensor([1, 0], dtype=torch.uint8),
        torch.tensor([1, 0], dtype=torch.int32),
        torch.tensor([True, False]),
        tv_tensors.Mask(torch.tensor([1.0, 0.0])),
    ],
    ids=["uint8", "int32", "bool", "float-mask"],
)
def test_collate_and_the_trainers_batch_fixer_give_the_same_targets(target: torch.Tensor) -> None:
    inputs = torch.zeros(2, 3, 2, dtype=torch.float64)  # [N, C, L]: targets [N, L] are class ids, not probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each says once what it converted
        collated = collate([(inputs[0], target), (inputs[1], target)])
        fixed = BatchFixer(torch.nn.Linear(3, 2), torch.nn.CrossEntropyLoss())((inputs, torch.stack([target] * 2)))
    assert collated[1].dtype == fixed[1].dtype == torch.int64 and torch.equal(collated[1], fixed[1])
    assert collated[0].dtype == fixed[0].dtype == torch.float32


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


@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 9, 7), (1, 2, 33, 17), (3, 21, 8, 8)])
def test_argmax_classes_is_argmax_with_ties_and_nans(shape: tuple[int, ...]) -> None:
    from trainkit.utils.outputs import argmax_classes

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, shape, generator=g).float()  # three values: ties everywhere
    logits.view(-1)[::11] = float("nan")
    for dim in range(len(shape)):
        assert torch.equal(argmax_classes(logits, dim), logits.argmax(dim))
    assert torch.equal(argmax_classes(logits.bfloat16()), logits.bfloat16().argmax(1))
