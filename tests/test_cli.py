"""The `trainkit` command end to end on tiny data: in this process (`run_cli`), and as `python -m trainkit`
(`run_subprocess`) for one train, predict and demo, and where a process is the point (the console script, file
permissions under `setpriv`)."""

from __future__ import annotations

import csv
import dataclasses
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import run_cli, run_subprocess, status_and_line
from trainkit.cli import main

COMMANDS = ("demo", "train", "lr-find", "predict", "evaluate", "export", "check", "synth", "summary")


def train_args(shapes: Path, run_dir: Path, *, epochs: int) -> list[str]:
    """`trainkit train` on the tiny shapes folder with a tiny UNet, on the CPU."""
    return [
        "train", "--images", str(shapes / "PNGImages"), "--masks", str(shapes / "SemanticMasks"),
        "--mask-suffix", "_mask", "--num-classes", "4", "--size", "32", "--epochs", str(epochs),
        "--batch-size", "4", "--base-channels", "4", "--depth", "2", "--run-dir", str(run_dir),
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "shapes"
    result = run_cli("synth", str(root), "--n", "12", "--size", "32", "--seed", "1")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def trained(shapes: Path) -> Path:
    run_dir = shapes.parent / "run"
    result = run_cli(*train_args(shapes, run_dir, epochs=1))
    assert result.returncode == 0, result.stderr
    assert "train: 1 epochs" in result.stdout
    return run_dir


def test_synth_writes_the_penn_fudan_layout(shapes: Path) -> None:
    assert len(list((shapes / "PNGImages").glob("*.png"))) == 12
    assert len(list((shapes / "PedMasks").glob("*_mask.png"))) == 12
    assert Image.open(next((shapes / "PedMasks").glob("*.png"))).mode == "P"


def test_train_writes_checkpoints_and_metrics(trained: Path) -> None:
    assert (trained / "checkpoints" / "best.pt").is_file()
    assert (trained / "checkpoints" / "last.pt").is_file()
    rows = list(csv.DictReader((trained / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1"]
    assert 0.0 <= float(rows[0]["val/miou"]) <= 1.0


def test_train_resume_last_continues_to_more_epochs(trained: Path, shapes: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(trained, run_dir)
    result = run_subprocess(*train_args(shapes, run_dir, epochs=2), "--resume", "last")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_predict_writes_one_palette_mask_per_image_with_the_same_stem(trained: Path, tmp_path: Path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a1": (40, 30), "a2": (32, 32), "a10": (20, 50)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "out"
    result = run_subprocess(
        "predict",
        "--checkpoint",
        str(trained / "checkpoints" / "best.pt"),
        "--images",
        str(images),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--overlays",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 masks" in result.stdout
    for name, (h, w) in {"a1": (40, 30), "a2": (32, 32), "a10": (20, 50)}.items():
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == (w, h)  # the image's own size, so it lines up
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2, 3}
        assert Image.open(out / "overlays" / f"{name}.png").size == (w, h)


def test_summary_prints_the_layer_table(trained: Path) -> None:
    result = run_cli("summary", str(trained / "checkpoints" / "best.pt"))
    assert result.returncode == 0, result.stderr
    assert "UNet" in result.stdout and "Total params" in result.stdout


def test_check_passes_on_good_data_and_fails_on_bad(shapes: Path, tmp_path: Path) -> None:
    good = run_cli(
        "check",
        "--images",
        str(shapes / "PNGImages"),
        "--masks",
        str(shapes / "SemanticMasks"),
        "--mask-suffix",
        "_mask",
        "--num-classes",
        "4",
    )
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "bad"
    shutil.copytree(shapes, bad)
    (bad / "PNGImages" / "shape_000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (bad / "SemanticMasks" / "shape_001_mask.png").unlink()
    result = run_cli(
        "check",
        "--images",
        str(bad / "PNGImages"),
        "--masks",
        str(bad / "SemanticMasks"),
        "--mask-suffix",
        "_mask",
        "--num-classes",
        "2",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "shape_000.png" in result.stdout and "shape_001" in result.stdout


def test_demo_command_defaults_are_run_demos() -> None:
    import inspect

    from trainkit.cli import build_parser
    from trainkit.cli.demo import demo_recipe, run_demo

    args = build_parser().parse_args(["demo"])
    defaults = {name: p.default for name, p in inspect.signature(demo_recipe).parameters.items()}
    defaults["n"] = inspect.signature(run_demo).parameters["n"].default
    for name in ("epochs", "n", "size", "seed", "device"):
        assert getattr(args, name) == defaults[name], name
    recipe = demo_recipe("data", None)
    assert (recipe.epochs, recipe.early_stopping, recipe.val_split) == (defaults["epochs"], False, 0.1)


def test_the_demo_recipe_runs_every_planned_epoch(tmp_path: Path) -> None:
    from trainkit.cli.demo import demo_recipe
    from trainkit.cli.recipe import build_recipe
    from trainkit.data import make_shapes
    from trainkit.engine import EarlyStopping

    data = make_shapes(tmp_path / "data", n=8, size=16, seed=0)
    trainer = build_recipe(demo_recipe(data, None, size=16, depth=2, progress=False)).trainer
    assert not any(isinstance(cb, EarlyStopping) for cb in trainer.callbacks.callbacks)
    asked = build_recipe(dataclasses.replace(demo_recipe(data, None, size=16, depth=2), early_stopping=True))
    assert sum(isinstance(cb, EarlyStopping) for cb in asked.trainer.callbacks.callbacks) == 1


def test_train_runs_every_epoch_unless_told_to_stop_early() -> None:
    from trainkit.cli import build_parser
    from trainkit.cli._recipe_args import recipe_from_args

    base = ["train", "--images", "i", "--masks", "m", "--num-classes", "3"]
    assert recipe_from_args(build_parser().parse_args(base)).early_stopping is False  # type: ignore[union-attr]
    assert recipe_from_args(build_parser().parse_args([*base, "--early-stop"])).early_stopping is True  # type: ignore[union-attr]


def test_train_plans_enough_steps_for_a_small_set(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 12 images, 10 for training in batches of 4: 2 steps an epoch. The defaults (20 epochs, 500 steps) are
    # scaled down so the run stays short: at least 3 epochs and 10 steps -> 5 epochs of 2 steps.
    import trainkit.cli.recipe as recipe_module

    monkeypatch.setattr(recipe_module, "MIN_EPOCHS", 3)
    monkeypatch.setattr(recipe_module, "MIN_STEPS", 10)
    args = [a for a in train_args(shapes, tmp_path / "run", epochs=1) if a not in ("--epochs", "1")]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "2 optimizer steps an epoch: planning 5 epochs, so the schedule has at least 10 steps" in result.stderr
    assert "train: 5 epochs" in result.stdout
    lrs = [float(row["lr"]) for row in csv.DictReader((tmp_path / "run" / "metrics.csv").open())]
    factor = recipe_module.warmup_cosine(10)  # the schedule spans the 5 epochs planned: each logs its first step's
    assert lrs == pytest.approx([1.5e-3 * factor(2 * epoch) for epoch in range(5)])
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["extra"]["recipe"]["train"]["epochs"] == 5

    told = run_cli(*train_args(shapes, tmp_path / "told", epochs=2))
    assert told.returncode == 0 and "planning" not in told.stderr and "train: 2 epochs" in told.stdout


def test_train_scale_is_off_unless_asked() -> None:
    from trainkit.cli import build_parser
    from trainkit.cli._recipe_args import recipe_from_args

    base = ["train", "--images", "i", "--masks", "m", "--num-classes", "3"]
    assert recipe_from_args(build_parser().parse_args(base)).scale == (1.0, 1.0)  # type: ignore[union-attr]
    zoom = recipe_from_args(build_parser().parse_args([*base, "--scale", "0.5", "2"]))
    assert zoom.scale == (0.5, 2.0)  # type: ignore[union-attr]
    status, line = status_and_line(*base, "--scale", "2", "0.5")
    assert status == 2
    assert "--scale 2 0.5: give the lower zoom first, e.g. --scale 0.5 2" in line


def test_demo_runs_offline_and_leaves_its_outputs(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    result = run_subprocess(
        "demo",
        "--run-dir",
        str(run_dir),
        "--epochs",
        "1",
        "--n",
        "16",
        "--size",
        "32",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "demo: val mIoU" in result.stdout
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "curves.png", "predictions.png"):
        assert (run_dir / name).is_file(), name


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("trainkit")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert all(command in result.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example: trainkit " + command in capsys.readouterr().out.replace("\n", " ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--images", "x"], "--masks"),
        (["demo", "--epochs", "0"], "positive integer"),
        (["train", "--images", "a", "--masks", "b", "--size", "big"], "size must be"),
        (["train", "--images", "a", "--masks", "b", "--amp", "fp8"], "--amp"),
        (["frobnicate"], "invalid choice"),
        (["train", "--images", "a", "--masks", "b"], "--num-classes is required"),
    ],
)
def test_bad_arguments_give_one_clear_line_and_status_2(args: list[str], expected: str) -> None:
    status, line = status_and_line(*args)
    assert status == 2
    assert expected in line


def test_missing_folder_is_one_line_and_status_1(tmp_path: Path) -> None:
    result = run_cli("check", "--images", str(tmp_path / "nope"), "--masks", str(tmp_path / "nope2"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nope" in result.stderr or "nope" in result.stdout


def test_predict_skips_hidden_files(trained: Path, tmp_path: Path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(images / "a.png")
    (images / "._a.png").write_bytes(b"AppleDouble metadata, not an image")
    result = run_cli("predict", "--checkpoint", str(trained / "checkpoints" / "best.pt"), "--images", str(images),
                     "--out", str(tmp_path / "out"), "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "labels.txt"]


# ------------------------------------------------------------------ faults a hunt found (issue 12)


def _photos(folder: Path, names: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in names.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _predict(trained: Path, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    checkpoint = str(trained / "checkpoints" / "best.pt")
    return run_cli("predict", "--checkpoint", checkpoint, "--images", str(images), "--out", str(out), "--device", "cpu",
                   *extra)  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def _without_root_powers() -> list[str]:
    """A command prefix that makes root obey file permissions (`setpriv` drops the DAC override); [] if not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    drop = "-dac_override,-dac_read_search"
    probe = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", "true"] if setpriv else []
    if not probe or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("running as root, which ignores file permissions, and `setpriv` cannot drop that")
    return probe[:-1]


def test_predict_refuses_to_write_into_the_images_folder(trained: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", {"a.png": (32, 32), "b.jpg": (20, 30)})
    before = _contents(photos)
    (tmp_path / "link").symlink_to(photos, target_is_directory=True)
    for out in (str(photos), f"{photos}/", str(tmp_path / "link"), f"{photos}/../photos"):
        result = _predict(trained, photos, Path(out))
        assert result.returncode == 1
        _one_error_line(result, r"--out \S+ is the --images folder \S+photos: the masks would be written among the "
                                r"images .*; choose another --out folder")  # fmt: skip
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "overlays").symlink_to(photos, target_is_directory=True)  # --overlays would write into photos/
    result = _predict(trained, photos, masks, "--overlays")
    assert result.returncode == 1
    _one_error_line(result, r"--out/overlays .*overlays is the --images folder .*the overlays would be written")
    assert _contents(photos) == before
    assert list(masks.iterdir()) == [masks / "overlays"]


def test_predict_refuses_images_whose_outputs_would_share_a_path(trained: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", {"a.png": (32, 32), "a.jpg": (20, 30), "b.png": (16, 16)})
    result = _predict(trained, photos, tmp_path / "out", "--overlays")
    assert result.returncode == 1
    _one_error_line(result, r"2 images would write the same mask in .*out as another, replacing it: a\.jpg \+ "
                            r"a\.png -> a\.png\. Rename them so that every stem is unique")  # fmt: skip
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_predict_writes_overlays_apart_so_x_and_x_overlay_both_keep_their_masks(trained: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", {"x.png": (40, 30), "x_overlay.png": (20, 50)})
    out = tmp_path / "out"
    result = _predict(trained, photos, out, "--overlays")
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote 2 masks to .*out and 2 overlays to .*out/overlays", result.stdout)
    expected = ["labels.txt", "overlays/x.png", "overlays/x_overlay.png", "x.png", "x_overlay.png"]
    assert sorted(_contents(out)) == expected
    for name, (h, w) in {"x": (40, 30), "x_overlay": (20, 50)}.items():
        assert Image.open(out / f"{name}.png").mode == "P" and Image.open(out / f"{name}.png").size == (w, h)
        assert Image.open(out / "overlays" / f"{name}.png").mode == "RGB"


def test_predict_reports_each_unreadable_image_and_predicts_the_rest(trained: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", {f"p{i}.png": (24, 24) for i in range(5)})
    (photos / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photos / "p3.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    result = _predict(trained, photos, out, "--batch-size", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "p0.png", "p2.png", "p4.png"]
    assert "predict: wrote 3 masks to" in result.stdout
    # (libpng itself may print "libpng error: ..." for the truncated PNG, below trainkit's reach)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("libpng ")]
    assert len(lines) == 3, lines
    assert re.match(r"trainkit predict: skipped .*p1\.png: cannot decode .*re-export it, or remove it", lines[0])
    assert re.match(r"trainkit predict: skipped .*p3\.png: cannot decode", lines[1])
    assert re.match(r"trainkit predict: error: 2 of 5 images could not be read and have no mask: .*p1\.png, "
                    r".*p3\.png; re-export or remove them and run again", lines[2])  # fmt: skip


def test_predict_reports_an_image_without_read_permission(trained: Path, tmp_path: Path) -> None:
    prefix = _without_root_powers()
    photos = _photos(tmp_path / "photos", {"a.png": (24, 24), "b.png": (24, 24)})
    (photos / "a.png").chmod(0o000)
    checkpoint = str(trained / "checkpoints" / "best.pt")
    result = run_subprocess("predict", "--checkpoint", checkpoint, "--images", str(photos), "--out",
                            str(tmp_path / "out"), "--device", "cpu", prefix=prefix)  # fmt: skip
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.png", "labels.txt"]
    assert re.search(r"skipped .*a\.png: .*[Pp]ermission denied", result.stderr), result.stderr
    assert re.search(r"error: 1 of 2 images could not be read and have no mask: .*a\.png", result.stderr)


def test_predict_writes_each_file_whole_or_not_at_all(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainkit.cli.predict import predict_folder

    photos = _photos(tmp_path / "photos", {"a.png": (24, 24), "b.png": (24, 24)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"the mask of an earlier run")
    save = Image.Image.save

    def disk_full_on_b(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        if "b.png" in str(getattr(fp, "name", fp)):
            fp.write(b"\x89PNG\r\n\x1a\n half")  # the start of a PNG, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full_on_b)
    with pytest.raises(OSError, match=r"cannot write .*out/b\.png \(No space left on device\); 1 of 2 masks were "
                                      r"written before, each complete"):  # fmt: skip
        predict_folder(trained / "checkpoints" / "best.pt", photos, out, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "labels.txt"]  # no temporary file left
    assert (out / "b.png").read_bytes() == b"the mask of an earlier run"
    assert Image.open(out / "a.png").size == (24, 24)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--lr", "inf"], r"argument --lr: expected a finite number > 0 \(e\.g\. 0\.001\), got 'inf'"),
        (["train", "--lr=-inf"], r"argument --lr: expected a finite number > 0 .*got '-inf'"),
        (["train", "--lr", "nan"], r"argument --lr: expected a finite number > 0 .*got 'nan'"),
        (["train", "--lr", "1e400"], r"argument --lr: .*got '1e400' \(not finite\)"),
        (["train", "--lr", "0"], r"argument --lr: expected a finite number > 0"),
        (["train", "--val-split", "nan"], r"argument --val-split: expected a fraction from 0 .* to 1 .*got 'nan'"),
        (["train", "--val-split", "1"], r"argument --val-split: expected a fraction from 0 \(inclusive\) to 1"),
        (["train", "--val-split", "-0.1"], r"argument --val-split: expected a fraction"),
        (["train", "--workers", "-1"], r"argument --workers: expected an integer >= 0 below 2\*\*31, got '-1'"),
        (["train", "--seed", "-1"], r"argument --seed: expected an integer from 0 to 4294967295, got '-1'"),
        (["train", "--seed", str(2**32)], r"argument --seed: expected an integer from 0 to 4294967295"),
        (["train", "--num-classes", "1"], r"argument --num-classes: expected an integer from 2 to 255, got '1'"),
        (["train", "--num-classes", "256"], r"argument --num-classes: expected an integer from 2 to 255"),
        (["train", "--epochs", "1e3"], r"argument --epochs: expected a positive integer below 2\*\*31, got '1e3'"),
        (["train", "--batch-size", str(10**20)], r"argument --batch-size: expected a positive integer below 2\*\*31"),
        (["train", "--base-channels", "0"], r"argument --base-channels: expected a positive integer"),
        (["train", "--size", "8", "--depth", "4"], r"--size 8x8 is too small for --depth 4: .*at least 16x16; raise"),
        (["predict", "--batch-size", "0"], r"argument --batch-size: expected a positive integer"),
        (["check", "--channels", "2"], r"argument --channels: expected 1 \(gray\), 3 \(RGB\) or 4 \(RGBA\)"),
        (["check", "--num-classes", "300"], r"argument --num-classes: expected an integer from 2 to 255"),
        (["synth", "out", "--size", "8"], r"argument --size: expected an integer >= 16 below 2\*\*31, got '8'"),
        (["synth", "out", "--n", "0"], r"argument --n: expected a positive integer"),
        (["synth", "out", "--seed", "-3"], r"argument --seed: expected an integer from 0 to 4294967295"),
        (["demo", "--size", "15"], r"argument --size: expected an integer >= 16"),
        (["summary", "x.pt", "--depth", "-1"], r"argument --depth: expected a positive integer"),
    ],
)
def test_every_numeric_option_must_be_finite_and_in_range(args: list[str], expected: str) -> None:
    required = {
        "train": ["--images", "a", "--masks", "b", "--num-classes", "3"],
        "predict": ["--checkpoint", "c.pt", "--images", "a", "--out", "o"],
        "check": ["--images", "a", "--masks", "b"],
    }
    status, line = status_and_line(*args, *required.get(args[0], []))
    assert status == 2
    assert re.search(rf"^trainkit {args[0]}: error: {expected}.*\(see `trainkit {args[0]} --help`\)$", line)


def test_a_binary_color_map_is_named_in_one_line(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "class_dict.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    folders = [
        "--images",
        str(shapes / "PNGImages"),
        "--masks",
        str(shapes / "SemanticMasks"),
        "--mask-suffix",
        "_mask",
    ]
    for command in (["check"], ["train", "--device", "cpu", "--run-dir", str(tmp_path / "run")]):
        assert main([*command, *folders, "--color-map", str(binary)]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert re.match(rf"trainkit {command[0]}: error: --color-map .*class_dict\.csv is not a text CSV \(.*\); give "
                        r"a class_dict\.csv with a name,r,g,b header", lines[0])  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_an_output_path_that_is_a_file_is_one_clear_line(trained: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("someone's notes")
    photos = _photos(tmp_path / "photos", {"a.png": (24, 24)})
    result = _predict(trained, photos, taken)
    assert result.returncode == 1
    _one_error_line(result, r"trainkit predict: error: --out .*taken is a file; give a folder for the masks")
    result = run_cli("synth", str(taken), "--n", "2", "--size", "16")
    assert result.returncode == 1
    _one_error_line(result, r"trainkit synth: error: .*taken is a file; `trainkit synth` writes a dataset folder: "
                            r"give a folder path")  # fmt: skip
    result = run_cli("synth", str(taken / "inside"), "--n", "2", "--size", "16")
    assert result.returncode == 1
    _one_error_line(result, r"trainkit synth: error: .*taken/inside.*: Not a directory; a file is in the way where a "
                            r"folder is needed: choose another path")  # fmt: skip
    assert taken.read_text() == "someone's notes"


@pytest.mark.slow
def test_a_corrupt_image_read_in_a_worker_is_the_same_one_line(shapes: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(shapes, bad)
    (bad / "PNGImages" / "shape_003.png").write_bytes(b"garbage")
    for workers in ("0", "2"):
        result = run_cli(*train_args(bad, tmp_path / f"run{workers}", epochs=1), "--workers", workers)
        assert result.returncode == 1
        pattern = r"^trainkit train: error: .*PNGImages/shape_003\.png: cannot decode .*re-export it, or remove it"
        _one_error_line(result, pattern)


def test_an_unwritable_checkpoint_folder_is_refused_before_training(shapes: Path, tmp_path: Path) -> None:
    prefix = _without_root_powers()
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints").chmod(0o555)
    result = run_subprocess(*train_args(shapes, run_dir, epochs=2), prefix=prefix)
    assert result.returncode == 1
    assert "epoch 1" not in result.stdout  # refused before training, not after the first epoch
    _one_error_line(result, r"^trainkit train: error: .*run/checkpoints.* is not writable.*fix its permissions or "
                            r"choose another `run_dir`")  # fmt: skip


def test_train_refuses_to_replace_a_finished_run_unless_told_to_overwrite(
    trained: Path, shapes: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "finished"
    shutil.copytree(trained, run_dir)
    before = {k: v for k, v in _contents(run_dir).items() if k != ".trainkit.lock"}  # the lock names its holder
    result = run_cli(*train_args(shapes, run_dir, epochs=1))
    assert result.returncode == 1
    _one_error_line(
        result, r"^trainkit train: error: .*finished'` already holds a run .*`--overwrite` on the command line"
    )
    assert {k: v for k, v in _contents(run_dir).items() if k != ".trainkit.lock"} == before
    result = run_cli(*train_args(shapes, run_dir, epochs=1), "--overwrite")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1"]
