"""Tests for trainkit.engine.checkpoint: atomic writes, safe loading, clear errors, RNG states under weights_only,
weights_only on every torch.load, nothing written outside the run directory."""

from __future__ import annotations

import ast
import errno
import io
import random
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.serialization import config as serialization_config

import trainkit
from trainkit.callbacks import ModelCheckpoint
from trainkit.engine.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint, unwrap_model
from trainkit.errors import CheckpointError
from trainkit.utils.seed import get_rng_state, set_rng_state


def _model(hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


class _DiskFullAfter(io.FileIO):
    """A file that accepts ``limit`` bytes and then fails like a full disk."""

    def __init__(self, path: str, limit: int = 200):
        super().__init__(path, "wb")
        self.limit, self.written = limit, 0

    def write(self, data) -> int:  # type: ignore[override]
        self.written += len(data)
        if self.written > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


class _CreatesFile:
    """A pickle payload that would create ``path`` when unpickled (a stand-in for running any code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_save_then_load_round_trip_adds_the_format_version(tmp_path: Path) -> None:
    model = _model()
    path = save_checkpoint(tmp_path / "sub" / "a.pt", {"model": model.state_dict(), "epoch": 3})
    assert path == tmp_path / "sub" / "a.pt"
    other = _model()
    ckpt = load_checkpoint(path, other)
    assert ckpt["epoch"] == 3 and ckpt["trainkit_format"] == FORMAT_VERSION
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pt"]  # no temporary file left


def test_disk_full_mid_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    first = _model()
    path = save_checkpoint(tmp_path / "last.pt", {"model": first.state_dict(), "epoch": 1})
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoint there is kept.*disk"):
        save_checkpoint(path, {"model": _model().state_dict(), "epoch": 2}, opener=_DiskFullAfter)
    restored = _model()
    assert load_checkpoint(path, restored)["epoch"] == 1
    assert torch.equal(restored[0].weight, first[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the temporary file is removed


def test_disk_full_on_the_first_write_says_nothing_was_written(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint was written.*Free disk space"):
        save_checkpoint(tmp_path / "last.pt", {"model": _model().state_dict()}, opener=_DiskFullAfter)
    assert list(tmp_path.iterdir()) == []


def test_a_pickle_payload_does_not_execute_on_load(tmp_path: Path) -> None:
    victim = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"trainkit_format": 1, "model": {}, "payload": _CreatesFile(str(victim))}, path)
    with pytest.raises(CheckpointError, match=r"refused.*weights_only=True.*run code"):
        load_checkpoint(path)
    assert not victim.exists()


def test_a_truncated_file_is_reported_as_truncated(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", {"model": _model(64).state_dict()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "strings.pt"
    torch.save(["not", "a", "checkpoint"], path)
    with pytest.raises(CheckpointError, match=r"not a trainkit checkpoint or a model state_dict \(it holds a list\)"):
        load_checkpoint(path)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"truncated or not a PyTorch checkpoint"):
        load_checkpoint(text)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_architecture_mismatch_lists_keys_and_shapes(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "w.pt", {"model": _model(8).state_dict()})
    wider = _model(16)
    with pytest.raises(
        CheckpointError, match=r"3 shape mismatch\(es\): 0\.weight: checkpoint \(8, 4\) vs model \(16, 4\)"
    ):
        load_checkpoint(path, wider)
    deeper = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\): 3\.weight, 3\.bias"):
        load_checkpoint(path, deeper)
    shallower = nn.Sequential(nn.Linear(4, 8))
    with pytest.raises(CheckpointError, match=r"2 unexpected key\(s\): 2\.weight, 2\.bias"):
        load_checkpoint(path, shallower)
    before = shallower[0].weight.detach().clone()
    load_checkpoint(path, shallower, strict=False)  # loads what fits
    assert not torch.equal(shallower[0].weight, before)


def test_a_newer_format_asks_to_upgrade(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "new.pt", {"model": {}, "trainkit_format": FORMAT_VERSION + 1, "trainkit_version": "9.0"}
    )
    with pytest.raises(CheckpointError, match=r"trainkit 9\.0 \(checkpoint format 2\).*pip install -U trainkit"):
        load_checkpoint(path)


def test_a_plain_state_dict_file_loads(tmp_path: Path) -> None:
    model = _model()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    other = _model()
    ckpt = load_checkpoint(tmp_path / "plain.pt", other)
    assert list(ckpt) == ["model"]
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_ddp_prefixed_state_dict_loads_into_the_plain_model(tmp_path: Path) -> None:
    model = _model()
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    other = _model()
    load_checkpoint(tmp_path / "ddp.pt", other)
    assert torch.equal(other[2].bias, model[2].bias)


def test_optimizer_and_scheduler_states_load_and_missing_ones_are_named(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(
        tmp_path / "full.pt",
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
    )
    model2 = _model()
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    load_checkpoint(path, model2, opt2, sched2)
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    weights_only = save_checkpoint(tmp_path / "w.pt", {"model": model.state_dict()})
    with pytest.raises(CheckpointError, match=r"holds no optimizer state; pass `optimizer=None`"):
        load_checkpoint(weights_only, _model(), torch.optim.SGD(_model().parameters(), lr=0.1))


def test_rng_states_round_trip_under_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gaussian in NumPy's legacy state
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(path)["rng"])  # load_checkpoint reads with weights_only=True
    got = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    np.testing.assert_array_equal(got[2], expected[2])
    assert got[3] == expected[3]
    assert torch.equal(got[4], expected[4])


def test_unwrap_model_reaches_the_inner_module() -> None:
    inner = _model()
    assert unwrap_model(nn.DataParallel(torch.compile(inner))) is inner
    assert unwrap_model(inner) is inner


def test_every_torch_load_in_the_package_uses_weights_only() -> None:
    calls = []
    for source in Path(trainkit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{source.name}:{node.lineno}", safe))
    assert calls, "no torch.load call found: the scan is broken"
    assert [where for where, safe in calls if not safe] == []


def test_a_full_run_writes_nothing_outside_its_run_dir_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    model = _model()
    data = [(torch.randn(4, 4), torch.randint(0, 2, (4,))) for _ in range(5)]
    callbacks = [ModelCheckpoint("weights/nested", every_n_steps=2, keep_last=2)]
    trainer = trainkit.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), callbacks=callbacks,
        run_dir=tmp_path / "run", device="cpu", progress=False,
    )  # fmt: skip
    trainer.fit(data, data[:2], epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    written = sorted(str(p.relative_to(tmp_path / "run")) for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert [name for name in written if ".tmp-" in name] == []
    # keep_last=2: last.pt plus the one before it, under the relative dirpath inside run_dir
    checkpoints = [name for name in written if name.startswith("weights/")]
    assert checkpoints == ["weights/nested/best.pt", "weights/nested/last-step15.pt", "weights/nested/last.pt"]
    assert {"metrics.csv", "curves.png"} <= set(written)


def test_random_bytes_are_called_damaged_not_a_refused_payload(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=r"damaged or not a PyTorch checkpoint|truncated or not a PyTorch"):
        load_checkpoint(path)


def test_unwrap_model_keeps_a_users_module_that_has_a_module_attribute() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)
            self.head = nn.Linear(2, 1)

    model = Wrapped()
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    assert unwrap_model(torch.compile(model)) is model


def _flip_bytes(path: Path, entry: str, count: int = 16, skip: int = 100) -> None:
    """Invert ``count`` bytes of a zip entry's data in place, as bit rot or a bad copy would."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local file header
    start = info.header_offset + 30 + name_len + extra_len + skip
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


def _tensor_entry(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return next(name for name in archive.namelist() if name.endswith("/data/0"))


def test_bit_rot_inside_a_tensor_is_reported_with_the_file_and_older_checkpoints(tmp_path: Path) -> None:
    model = _model(64)
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict()})
    path = save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "epoch": 2})
    _flip_bytes(path, _tensor_entry(path))
    target = _model(64)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=r"last\.pt is corrupt: the CRC-32 of its entry archive/data/0 does not match its bytes \(a disk or copy "
        r"error\); its weights cannot be trusted\. Use an older checkpoint: best\.pt in .*, or copy the file again",
    ):
        load_checkpoint(path, target)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # the model is left as it was


def test_bit_rot_in_the_pickle_of_a_plain_state_dict_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(_model().state_dict(), path)
    _flip_bytes(path, next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")), count=4, skip=20)
    with pytest.raises(CheckpointError, match=r"plain\.pt is corrupt: the CRC-32 of its entry .*data\.pkl"):
        load_checkpoint(path)


def test_files_saved_without_crc32_still_load(tmp_path: Path) -> None:
    model = _model()
    saved_crc32 = serialization_config.save.compute_crc32
    torch.serialization.set_crc32_options(False)
    try:
        path = save_checkpoint(tmp_path / "nocrc.pt", {"model": model.state_dict(), "epoch": 1})
        torch.save(model.state_dict(), tmp_path / "plain-nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(saved_crc32)
    for saved in (path, tmp_path / "plain-nocrc.pt"):
        with zipfile.ZipFile(saved) as archive:
            assert {info.CRC for info in archive.infolist()} == {0}  # really written without checksums
        other = _model()
        load_checkpoint(saved, other)
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_shape_mismatch_suggests_the_architecture_or_a_filtered_state_dict_not_strict_false(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "w.pt", {"model": _model(8).state_dict()})
    new_head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))  # same body, another number of classes
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"2 shape mismatch\(es\)") as raised:
            load_checkpoint(path, new_head, strict=strict)
        message = str(raised.value)
        assert "strict=False` to load what fits" not in message  # strict=False never relaxes shapes
        assert re.search(r"same architecture arguments as when it was saved \(e\.g\. the number of classes", message)
        assert re.search(
            r"load only the tensors that fit: `state = trainkit\.load_checkpoint\('.*w\.pt'\)\[\"model\"\]; ", message
        )
    # the recipe the message shows loads the body and leaves the new head as it was
    head_before = new_head[2].weight.detach().clone()
    state = load_checkpoint(path)["model"]
    own = new_head.state_dict()
    new_head.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)
    assert torch.equal(new_head[0].weight, state["0.weight"]) and torch.equal(new_head[2].weight, head_before)


def test_missing_keys_alone_still_suggest_strict_false(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "w.pt", {"model": _model(8).state_dict()})
    deeper = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\): 3\.weight, 3\.bias.*pass `strict=False` to load"):
        load_checkpoint(path, deeper)


def test_a_folder_is_called_a_folder_and_the_checkpoints_in_it_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        CheckpointError,
        match=r"empty is a folder, not a checkpoint file, and holds no checkpoints; pass a checkpoint file, e\.g\. "
        r"`.*empty/checkpoints/last\.pt` of a run directory",
    ):
        load_checkpoint(empty)
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir / "checkpoints" / "best.pt", {"model": _model().state_dict()})
    save_checkpoint(run_dir / "checkpoints" / "last.pt", {"model": _model().state_dict()})
    with pytest.raises(
        CheckpointError,
        match=r"run is a folder, not a checkpoint file; pass a checkpoint file in it: .*run/checkpoints/last\.pt "
        r"\(or .*run/checkpoints/best\.pt\)",
    ):
        load_checkpoint(run_dir, _model())
    with pytest.raises(
        CheckpointError, match=r"checkpoints is a folder.*: .*run/checkpoints/last\.pt \(or .*best\.pt\)"
    ):
        load_checkpoint(run_dir / "checkpoints")
