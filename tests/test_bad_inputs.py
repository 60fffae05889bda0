"""Bad inputs across the public API, one table: each raises an exception from ``trainkit.errors`` or a standard
``ValueError``/``TypeError`` whose message names the argument or the file (never a bare traceback from inside
torch), and nothing a previous run wrote into the run directory (checkpoints, ``metrics.csv``, plots) changes.

Every case runs in a copy of a real finished run's directory; the files are compared byte for byte afterwards.
"""

from __future__ import annotations

import errno
import functools
import io
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit
from trainkit.callbacks import ModelCheckpoint
from trainkit.data import SegmentationDataset, collate, make_shapes
from trainkit.data.transforms import train_preset
from trainkit.engine import checkpoint as checkpoint_module
from trainkit.errors import (
    CheckpointError,
    DataError,
    DecodeError,
    MaskValueError,
    NonFiniteLossError,
    PairingError,
    TrainingError,
)
from trainkit.models import UNet

X = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


@dataclass
class Ctx:
    """What a case may use: a copy of a finished run's directory and the dataset folders."""

    run_dir: Path
    data: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch


def _model(hidden: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _trainer(ctx: Ctx | None, model: nn.Module | None = None, **kwargs: Any) -> trainkit.Trainer:
    model = model if model is not None else _model()
    loss_fn = kwargs.pop("loss_fn", nn.CrossEntropyLoss())
    optimizer = kwargs.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.1)
    # overwrite=True: a fresh run may replace the finished run in ctx.run_dir, so each case meets its own error
    # (and the test checks that even then nothing written is lost); the refusal without it is a case of its own.
    run_dir = trainkit.RunDir(ctx.run_dir, overwrite=True) if ctx else None
    kwargs = {"device": "cpu", "progress": False, "amp": False, "run_dir": run_dir, **kwargs}
    return trainkit.Trainer(model, optimizer, loss_fn, **kwargs)


def _fit(ctx: Ctx, batches: Any, epochs: int = 1, **kwargs: Any) -> None:
    resume = kwargs.pop("resume", None)
    _trainer(ctx, **kwargs).fit(batches, epochs=epochs, resume=resume)


def _pairs(ctx: Ctx, name: str, **kwargs: Any) -> SegmentationDataset:
    return SegmentationDataset(ctx.data / name / "images", ctx.data / name / "masks", **kwargs)


def _unet_fit(ctx: Ctx, images: torch.Tensor, masks: torch.Tensor) -> None:
    _fit(ctx, [(images, masks)], model=UNet(3, 2, base_channels=4, depth=2))


def _negative_lr_per_step(ctx: Ctx) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 2)  # negative from step 3
    trainer = _trainer(ctx, model, optimizer=optimizer, scheduler=scheduler, scheduler_interval="step")
    trainer.fit([(X, Y)] * 5, epochs=1)


def _negative_lr_per_epoch(ctx: Ctx) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 - epoch)
    _trainer(ctx, model, optimizer=optimizer, scheduler=scheduler).fit([(X, Y)], epochs=3)


def _exhausted_generator(ctx: Ctx) -> None:
    _trainer(None).fit((batch for batch in [(X, Y)] * 2), epochs=2)  # no run_dir: epoch 1 trains


def _truncated_resume(ctx: Ctx) -> None:
    broken = ctx.tmp / "broken.pt"
    data = (ctx.run_dir / "checkpoints" / "last.pt").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _fit(ctx, [(X, Y)], resume=broken)


class _DiskFull(io.FileIO):
    """A checkpoint file that fails like a full disk after 1 kB."""

    def __init__(self, path: str):
        super().__init__(path, "wb")
        self.written = 0

    def write(self, data: Any) -> int:  # type: ignore[override]
        self.written += len(data)
        if self.written > 1024:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _disk_full_while_saving(ctx: Ctx) -> None:
    save = functools.partial(checkpoint_module.save_checkpoint, opener=_DiskFull)
    ctx.monkeypatch.setattr(checkpoint_module, "save_checkpoint", save)
    _fit(ctx, [(X, Y)], epochs=3, resume="last")  # continues the finished 2-epoch run for one more epoch


def _bit_rot_resume(ctx: Ctx) -> None:
    """Resume from a copy of ``last.pt`` with 16 bytes of one tensor inverted (bit rot, a bad copy)."""
    rotten = ctx.tmp / "rotten.pt"
    shutil.copy(ctx.run_dir / "checkpoints" / "last.pt", rotten)
    with zipfile.ZipFile(rotten) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(rotten.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    rotten.write_bytes(bytes(data))
    _fit(ctx, [(X, Y)], resume=rotten)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Ctx], Any]:
    return lambda ctx: fn(*args, **kwargs)


@dataclass
class Case:
    """A bad input: the call, the exception type and a regex its message must match."""

    id: str
    call: Callable[[Ctx], Any]
    error: type[BaseException]
    match: str
    grows: tuple[str, ...] = ()  # files a resumed run may append to, and folders it may add files to


CASES = [
    # datasets
    Case("empty folder", lambda c: _pairs(c, "empty"), DataError, r"`images` folder .*empty.images contains no image"),
    Case("missing folder", lambda c: _pairs(c, "nope"), DataError, r"`images` folder .*nope.images does not exist"),
    Case("unpaired files", lambda c: _pairs(c, "unpaired"), PairingError, r"1 image in .* has no mask: lonely\.png"),
    Case("mask size", lambda c: _pairs(c, "size")[0], DataError, r"a0\.png is 16x16 .* mask .*a0\.png is 8x8"),
    Case(
        "num_classes too small",
        lambda c: _pairs(c, "classes", num_classes=3)[0],
        MaskValueError,
        r"a0\.png: mask values \[5\] are outside `num_classes`=3",
    ),
    Case(
        "unknown colour",
        lambda c: _pairs(c, "colour", color_map={(0, 0, 0): 0, (255, 0, 0): 1})[0],
        MaskValueError,
        r"a0\.png: colours \[\(10, 20, 30\)\] are not in `color_map`",
    ),
    Case("corrupt image", lambda c: _pairs(c, "corrupt")[0], DecodeError, r"images.a0\.png: cannot decode"),
    Case("unknown target", lambda c: _pairs(c, "size", target="panoptic"), ValueError, r"`target` must be one of"),
    Case("make_shapes size", lambda c: make_shapes(c.tmp / "s", n=2, size=8), ValueError, r"`size` must be at least"),
    Case("preset scale", _call(train_preset, 16, scale=(2.0, 1.0)), ValueError, r"`scale` must be a pair"),
    # collate
    Case(
        "collate shapes",
        _call(collate, [(torch.zeros(3, 8, 8), torch.zeros(8, 8)), (torch.zeros(3, 9, 9), torch.zeros(9, 9))]),
        DataError,
        r"`collate` cannot stack sample\[0\] .*\[3, 8, 8\] \(sample 0\); \[3, 9, 9\] \(sample 1\)",
    ),
    # Trainer arguments
    Case("grad_accum=0", lambda c: _trainer(c, grad_accum=0), ValueError, r"`grad_accum` must be a positive .* got 0"),
    Case("interval", lambda c: _trainer(c, scheduler_interval="week"), ValueError, r"`scheduler_interval` .*'week'"),
    Case("amp fp8", lambda c: _trainer(c, amp="fp8"), ValueError, r"`amp='fp8'` is not a precision mode"),
    Case("device gpu", lambda c: _trainer(c, device="gpu"), ValueError, r"`device='gpu'` is not a device"),
    Case("device cuda:7", lambda c: _trainer(c, device="cuda:7"), ValueError, r"`device='cuda:7'`"),
    Case("model", lambda c: trainkit.Trainer(print, None), TypeError, r"`model` must be a torch\.nn\.Module"),
    Case("optimizer", lambda c: _trainer(c, optimizer=[1]), TypeError, r"`optimizer` must be a torch\.optim\.Opt"),
    Case("callbacks", lambda c: _trainer(c, callbacks=[object()]), TypeError, r"callbacks must subclass `trainkit"),
    Case("every_n_steps", _call(ModelCheckpoint, every_n_steps=0), ValueError, r"`every_n_steps` must be a positive"),
    Case(
        "dirpath outside",
        lambda c: _fit(c, [(X, Y)], callbacks=[ModelCheckpoint("../elsewhere")]),
        ValueError,
        r"`ModelCheckpoint\(dirpath='\.\./elsewhere'\)` is outside run_dir",
    ),
    Case("seed", lambda c: _fit(c, [(X, Y)], seed="x"), ValueError, r"`seed` must be an integer"),
    Case("epochs=0", lambda c: _fit(c, [(X, Y)], epochs=0), ValueError, r"`epochs` must be a positive integer, got 0"),
    Case(
        "empty loader",
        lambda c: _fit(c, DataLoader(TensorDataset(X[:3], Y[:3]), batch_size=4, drop_last=True)),
        ValueError,
        r"`train_loader` yields no batches \(dataset of 3 samples\)",
    ),
    Case("used-up generator", _exhausted_generator, ValueError, r"yielded no batches in epoch 2; an iterator or gen"),
    # batches that do not fit the model or the loss
    Case(
        "3-D images to a UNet",
        lambda c: _unet_fit(c, torch.rand(3, 16, 16), torch.zeros(16, 16, dtype=torch.long)),
        ValueError,
        r"UNet expects a batch \[N, C, H, W\], got a 3-D tensor",
    ),
    Case(
        "mask with a channel dim",
        lambda c: _unet_fit(c, torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16, dtype=torch.long)),
        TrainingError,
        r"training step 0 \(batch 0\) failed: the targets' shape does not fit .* `loss_fn`.*squeeze\(1\)",
    ),
    Case(
        "mask of another size",
        lambda c: _unet_fit(c, torch.rand(2, 3, 16, 16), torch.zeros(2, 8, 8, dtype=torch.long)),
        TrainingError,
        r"the targets' shape does not fit the model's outputs .*Original error: size mismatch",
    ),
    Case(
        "batch sizes differ",
        lambda c: _fit(c, [(X, Y[:5])]),
        TrainingError,
        r"the targets' shape does not fit .*Expected input batch_size \(8\) to match target batch_size \(5\)",
    ),
    Case(
        "features",
        lambda c: _fit(c, [(torch.randn(8, 5), Y)]),
        TrainingError,
        r"the inputs' shape does not fit the model: .*`in_features`.*\(8x5 and 6x8\)",
    ),
    Case(
        "class id >= outputs",
        lambda c: _fit(c, [(X, torch.full((8,), 3))]),
        TrainingError,
        r"a target class id is >= the number of output channels; check `num_classes`",
    ),
    Case(
        "3-tuples",
        lambda c: _fit(c, [(X, Y, Y)]),
        TypeError,
        r"the default step expects \(inputs, targets\) batches, got a 3-sequence",
    ),
    Case(
        "inf loss",
        lambda c: _fit(c, [(X, Y), (X * float("inf"), Y)]),
        NonFiniteLossError,
        r"loss is (nan|inf) at step 1 \(epoch 1, batch 1\).*`on_nan='skip'`",
    ),
    # learning rate driven negative by the scheduler
    Case(
        "negative lr (step)",
        _negative_lr_per_step,
        ValueError,
        r"the `scheduler` set the learning rate of param group 0 to -0\.05 after optimizer step 3",
    ),
    Case(
        "negative lr (epoch)",
        _negative_lr_per_epoch,
        ValueError,
        r"the `scheduler` set the learning rate of param group 0 to -0\.05 after epoch 1; .*`LambdaLR`",
    ),
    # run directories and checkpoints
    Case(
        "run_dir under a file",
        lambda c: _fit(c, [(X, Y)], run_dir=c.run_dir / "metrics.csv" / "run"),
        ValueError,
        r"`run_dir='.*metrics\.csv/run'` cannot be created",
    ),
    Case("resume missing", lambda c: _fit(c, [(X, Y)], resume=c.tmp / "nope.pt"), CheckpointError, r"nope\.pt does no"),
    Case(
        "resume last without run_dir",
        lambda c: _fit(c, [(X, Y)], run_dir=None, resume="last"),
        ValueError,
        r"`resume='last'` needs `run_dir`",
    ),
    Case("resume=3", lambda c: _fit(c, [(X, Y)], resume=3), TypeError, r"`resume` must be a checkpoint path.* got int"),
    Case(
        "resume other architecture",
        lambda c: _fit(c, [(X, Y)], model=_model(hidden=16), resume="last"),
        CheckpointError,
        r"last\.pt does not fit Sequential: 3 shape mismatch\(es\): 0\.weight: checkpoint \(8, 6\) vs model \(16, 6\)",
    ),
    Case(
        "resume truncated", _truncated_resume, CheckpointError, r"broken\.pt is truncated or not a PyTorch checkpoint"
    ),
    Case(
        "disk full",
        _disk_full_while_saving,
        CheckpointError,
        r"could not write checkpoint .*(best|last)\.pt \(No space left on device\); the previous checkpoint there",
        grows=("metrics.csv", "tensorboard/"),
    ),
    Case(
        "resume bit rot",
        _bit_rot_resume,
        CheckpointError,
        r"rotten\.pt is corrupt: the CRC-32 of its entry .*/data/0 does not match its bytes \(a disk or copy error\)",
    ),
    Case(
        "resume other architecture: the fix",
        lambda c: _fit(c, [(X, Y)], model=_model(hidden=16), resume="last"),
        CheckpointError,
        r"3 shape mismatch\(es\).*same architecture arguments as when it was saved.*load only the tensors that fit: "
        r".*`strict=False` alone does not skip shape mismatches",
    ),
    Case(
        "resume from the run folder",
        lambda c: _fit(c, [(X, Y)], resume=c.run_dir),
        CheckpointError,
        r"run is a folder, not a checkpoint file; pass a checkpoint file in it: .*run/checkpoints/last\.pt \(or ",
    ),
]


def _image(path: Path, size: tuple[int, int] = (16, 16)) -> None:
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(path)


def _folder(root: Path, name: str, mask: np.ndarray | None = None, extra_image: bool = False) -> Path:
    images, masks = root / name / "images", root / name / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    _image(images / "a0.png")
    Image.fromarray(mask if mask is not None else np.ones((16, 16), np.uint8)).save(masks / "a0.png")
    if extra_image:
        _image(images / "lonely.png")
    return images


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for name in ("empty/images", "empty/masks"):
        (root / name).mkdir(parents=True)
    _folder(root, "unpaired", extra_image=True)
    _folder(root, "size", mask=np.ones((8, 8), np.uint8))
    _folder(root, "classes", mask=np.full((16, 16), 5, np.uint8))
    _folder(root, "colour", mask=np.full((16, 16, 3), (10, 20, 30), np.uint8))
    (_folder(root, "corrupt") / "a0.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-epoch run: metrics.csv, checkpoints/last.pt and best.pt, curves.png (and TensorBoard events)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    _trainer(None, run_dir=run_dir).fit(DataLoader(TensorDataset(X, Y), batch_size=4), epochs=2)
    return run_dir


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it names the PID of the last run that wrote the folder)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".trainkit.lock")
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def test_the_table_has_at_least_20_distinct_cases() -> None:
    assert len(CASES) >= 20 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_raises_a_clear_error_and_keeps_what_was_written(
    case: Case, data: Path, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(case.error, match=case.match) as raised:
        case.call(Ctx(run_dir=run_dir, data=data, tmp=tmp_path, monkeypatch=monkeypatch))
    assert type(raised.value).__module__ in ("builtins", "trainkit.errors")
    after = _snapshot(run_dir)
    for name in case.grows:  # a resumed run may add its rows and events, never drop the earlier ones
        if name.endswith("/"):
            after = {k: v for k, v in after.items() if not k.startswith(name) or k in before}
        else:
            assert after.pop(name).startswith(before.pop(name))
    assert after == before
    assert not (tmp_path / "elsewhere").exists()


def test_a_nan_loss_raises_by_default_before_it_reaches_the_weights_or_the_checkpoint(tmp_path: Path) -> None:
    bad = X.clone()
    bad[3, 1] = float("nan")
    model = _model()
    trainer = _trainer(None, model, run_dir=tmp_path, callbacks=[ModelCheckpoint(every_n_steps=1)])
    assert trainer.on_nan == "raise"
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 \(epoch 1, batch 2\)"):
        trainer.fit([(X, Y), (X, Y), (bad, Y), (X, Y)], epochs=1)
    saved = trainkit.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["global_step"] == 2
    weights = model.state_dict()
    assert all(torch.isfinite(w).all() and torch.equal(w, saved["model"][k]) for k, w in weights.items())


# ---------------------------------------------------------------- data files that are not what they seem (issue 12)


def _blocks(high: int, low: int = 0) -> np.ndarray:
    """A 32x32 mask: two rectangles, of ``high`` and ``low + 1``, on ``low``."""
    mask = np.full((32, 32), low, np.uint8)
    mask[4:20, 6:26] = high
    mask[22:30, 3:12] = low + 1
    return mask


def _deny_masks(ctx: Ctx, name: str) -> None:
    """List the folder's masks as a user without read permission would (also when running as root)."""
    import os

    scandir, folder = os.scandir, ctx.data / name / "masks"

    def denied(path: Any = ".") -> Any:
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    ctx.monkeypatch.setattr(os, "scandir", denied)
    _pairs(ctx, name)


def _jpeg_classes(ctx: Ctx) -> None:
    with pytest.warns(UserWarning, match=r"masks are JPEG files \(lossy\)"):
        ds = _pairs(ctx, "jpeg classes", num_classes=3)
    ds[0]


DATA_CASES = [
    Case(
        "multiclass JPEG mask",
        _jpeg_classes,
        MaskValueError,
        r"a0\.jpg: mask values \[3.*\] are outside `num_classes`=3 .*the file is a lossy JPEG: .*class-id masks must "
        r"be saved losslessly \(re-save the masks as PNG\)",
    ),
    Case(
        "image link loops",
        lambda c: _pairs(c, "looping link"),
        DataError,
        r"images.b\.png is a symbolic link that loops \(it points to b\.png.*\); point it at the real image",
    ),
    Case(
        "image link dangles",
        lambda c: _pairs(c, "dangling link", strict=False),
        DataError,
        r"images.a1\.png is a broken symbolic link: its target .*gone\.png does not exist; point it at an existing",
    ),
    Case(
        "masks folder unreadable",
        lambda c: _deny_masks(c, "unreadable"),
        DataError,
        r"`masks` folder .*unreadable.masks cannot be read \(permission denied\); make it readable .*chmod",
    ),
]


@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders for DATA_CASES; a link case's folder is missing where links cannot be made."""
    import os

    root = tmp_path_factory.mktemp("hostile")
    _image(_folder(root, "jpeg classes") / "a0.png", (32, 32))
    (root / "jpeg classes" / "masks" / "a0.png").unlink()
    Image.fromarray(_blocks(2)).save(root / "jpeg classes" / "masks" / "a0.jpg", quality=95)
    _folder(root, "unreadable")
    for name, link, target in (("looping link", "b.png", "b.png"), ("dangling link", "a1.png", "gone.png")):
        images = _folder(root, name)
        Image.fromarray(np.ones((16, 16), np.uint8)).save(root / name / "masks" / link)
        try:
            os.symlink(target, images / link)
        except (OSError, NotImplementedError):
            shutil.rmtree(root / name)
    return root


@pytest.mark.parametrize("case", DATA_CASES, ids=[case.id for case in DATA_CASES])
def test_a_bad_data_file_raises_a_clear_error(
    case: Case, hostile_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "link" in case.id and not (hostile_data / "looping link").exists():
        pytest.skip("symbolic links cannot be made here")
    with pytest.raises(case.error, match=case.match) as raised:
        case.call(Ctx(run_dir=tmp_path / "run", data=hostile_data, tmp=tmp_path, monkeypatch=monkeypatch))
    assert type(raised.value).__module__ in ("builtins", "trainkit.errors")


def test_binary_jpeg_masks_are_not_silently_wrong(tmp_path: Path) -> None:
    """0/255 masks saved as JPEG: thresholded at mid-range, with one warning a dataset."""
    import warnings

    images = _folder(tmp_path, "jpeg binary")
    masks = images.parent / "masks"
    (masks / "a0.png").unlink()
    _image(images / "a0.png", (32, 32))
    _image(images / "a1.png", (32, 32))
    source = np.where(_blocks(255) > 0, 255, 0).astype(np.uint8)
    Image.fromarray(source).save(masks / "a0.jpg")
    Image.fromarray(source).save(masks / "a1.png")
    assert ((np.array(Image.open(masks / "a0.jpg")) > 0) != (source > 0)).sum() > 100  # noise around the edges
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = SegmentationDataset(images, masks, target="binary")
        targets = [ds[0][1], ds[1][1], ds[0][1]]
    assert [str(w.message) for w in caught if "lossy" in str(w.message)] == [
        "1 of 2 masks are JPEG files (lossy): compression noise changes mask values near edges, so `target='binary'` "
        "takes values above mid-range (> 127 for 8-bit) as foreground in them, not any non-zero value; pass "
        "`threshold=` for another rule (`threshold=0` for 0/1 masks), or re-save the masks as PNG"
    ]
    for target in targets:
        np.testing.assert_array_equal(target.numpy(), (source > 0).astype(np.int64))


def test_an_nfd_mask_name_pairs_with_its_nfc_image_name(tmp_path: Path) -> None:
    """A dataset copied from a Mac: the same name, two Unicode spellings, one pair (not two unpaired files)."""
    import unicodedata

    images = _folder(tmp_path, "unicode")
    nfc, nfd = unicodedata.normalize("NFC", "Ødegård"), unicodedata.normalize("NFD", "Ødegård")
    _image(images / f"{nfc}.png")
    Image.fromarray(np.full((16, 16), 2, np.uint8)).save(images.parent / "masks" / f"{nfd}.png")
    ds = SegmentationDataset(images, images.parent / "masks")
    assert [(p.name, m.name) for p, m in ds.samples] == [("a0.png", "a0.png"), (f"{nfc}.png", f"{nfd}.png")]
    assert ds[1][1].unique().tolist() == [2]


# ---------------------------------------------------------------- the command line's own inputs (issue 12)


def _photos(ctx: Ctx, *names: str) -> Path:
    folder = ctx.tmp / "photos"
    folder.mkdir(exist_ok=True)
    for name in names:
        _image(folder / name)
    return folder


def _predict(ctx: Ctx, images: Path, out: Path, **kwargs: Any) -> Any:
    from trainkit.cli.predict import predict_folder

    # The outputs are checked before the checkpoint is read: this one does not exist.
    return predict_folder(ctx.tmp / "never-read.pt", images, out, device="cpu", **kwargs)


def _binary_color_map(ctx: Ctx) -> Any:
    from trainkit.cli.recipe import read_color_map

    (ctx.tmp / "class_dict.csv").write_bytes(bytes(range(256)) * 4)
    return read_color_map(ctx.tmp / "class_dict.csv")


def _overlays_into_images(ctx: Ctx) -> Any:
    images = ctx.tmp / "photos" / "overlays"
    images.mkdir(parents=True)
    _image(images / "a.png")
    return _predict(ctx, images, ctx.tmp / "photos", overlays=True)  # out/overlays is the images folder


def _file_as_out(ctx: Ctx) -> Any:
    (ctx.tmp / "notes.txt").write_text("not a folder")
    return _predict(ctx, _photos(ctx, "a.png"), ctx.tmp / "notes.txt")


CLI_CASES = [
    Case(
        "predict into the images folder",
        lambda c: _predict(c, _photos(c, "a.png"), c.tmp / "photos"),
        ValueError,
        r"--out .*photos is the --images folder .*photos: the masks would be written among the images .*; choose "
        r"another --out folder",
    ),
    Case(
        "predict overlays into the images folder",
        _overlays_into_images,
        ValueError,
        r"--out/overlays .*overlays is the --images folder",
    ),
    Case(
        "predict one stem twice",
        lambda c: _predict(c, _photos(c, "a.png", "a.jpg", "B.png", "b.png"), c.tmp / "out"),
        ValueError,
        r"4 images would write the same mask in .*out as another, replacing it: B\.png \+ b\.png -> B\.png; "
        r"a\.jpg \+ a\.png -> a\.png\. Rename them so that every stem is unique \(names that differ only in case",
    ),
    Case("predict into a file", _file_as_out, ValueError, r"--out .*notes\.txt is a file; give a folder for the masks"),
    Case("binary color map", _binary_color_map, DataError, r"--color-map .*class_dict\.csv is not a text CSV \("),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_a_bad_command_line_input_raises_a_clear_error_and_writes_nothing(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = Ctx(run_dir=tmp_path / "run", data=tmp_path, tmp=tmp_path, monkeypatch=monkeypatch)
    with pytest.raises(case.error, match=case.match) as raised:
        case.call(ctx)
    assert type(raised.value).__module__ in ("builtins", "trainkit.errors")
    inputs = {"photos/a.png", "photos/a.jpg", "photos/B.png", "photos/b.png", "photos/overlays/a.png"}
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left <= inputs | {"notes.txt", "class_dict.csv"}, left  # nothing written besides the case's own inputs
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "notes.txt").exists() or (tmp_path / "notes.txt").read_text() == "not a folder"
