"""`trainkit lr-find`: the LR range test on `train`'s data and model, from the command line, on tiny shapes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

import trainkit
from cli_runner import run_cli, run_subprocess, status_and_line


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainkit.data.make_shapes(tmp_path_factory.mktemp("lr_find") / "shapes", n=12, size=32, seed=1)


def data_args(shapes: Path) -> list[str]:
    return ["--images", str(shapes / "PNGImages"), "--masks", str(shapes / "SemanticMasks"), "--mask-suffix", "_mask",
            "--num-classes", "4", "--size", "32", "--batch-size", "4", "--base-channels", "4", "--depth", "2",
            "--device", "cpu", "--amp", "off"]  # fmt: skip


def test_lr_find_plots_the_test_and_suggests_a_rate_for_train(shapes: Path, tmp_path: Path) -> None:
    result = run_cli("lr-find", *data_args(shapes), "--min-lr", "1e-5", "--num-steps", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.match(r"LR range test: \d+ steps from 1e-05 to ", lines[-2]), lines
    hint = re.match(r"lr-find: plot in lr_find\.png; train with `trainkit train \.\.\. --lr ([0-9.e-]+)`$", lines[-1])
    assert hint is not None, lines
    assert 1e-5 <= float(hint.group(1)) <= 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find.png"]  # no run folder, no checkpoint
    assert Image.open(tmp_path / "lr_find.png").format == "PNG"


def test_lr_find_writes_the_plot_to_out_and_takes_the_range_options(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "lr.png"
    result = run_subprocess("lr-find", *data_args(shapes), "--min-lr", "1e-4", "--max-lr", "1", "--num-steps", "4",
                            "--smooth", "0", "--diverge", "1000", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "LR range test: 4 steps from 0.0001 to 1;" in result.stdout  # no smoothing, no divergence: all 4 steps
    assert out.is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--min-lr", "0"], r"argument --min-lr: expected a finite number > 0"),
        (["--max-lr", "inf"], r"argument --max-lr: expected a finite number > 0 .*got 'inf' \(not finite\)"),
        (["--min-lr", "1e-2", "--max-lr", "1e-3"], r"--max-lr 0\.001 must be larger than --min-lr 0\.01"),
        (["--num-steps", "1"], r"argument --num-steps: expected an integer >= 2 below 2\*\*31, got '1'"),
        (["--smooth", "1"], r"argument --smooth: expected a fraction from 0 \(inclusive\) to 1 \(exclusive\)"),
        (["--diverge", "1"], r"argument --diverge: expected a finite number > 1 \(e\.g\. 4\.0\), got '1'"),
        (["--diverge", "nan"], r"argument --diverge: expected a finite number > 1 .*got 'nan'"),
        (["--size", "8", "--depth", "4"], r"--size 8x8 is too small for --depth 4"),
        (["--out", "."], r"--out \. is a folder: give the PNG file to write, e\.g\. \./lr_find\.png"),
        (["--encoder", "resnet18"], r"--encoder does not apply to --model unet"),
    ],
)
def test_lr_find_options_are_refused_in_one_line(args: list[str], expected: str) -> None:
    status, line = status_and_line("lr-find", "--images", "i", "--masks", "m", "--num-classes", "3", *args)
    assert status == 2
    assert re.search(rf"^trainkit lr-find: error: {expected}.*\(see `trainkit lr-find --help`\)$", line), line


def test_lr_find_reports_bad_data_in_one_line(tmp_path: Path) -> None:
    result = run_cli("lr-find", "--images", str(tmp_path / "nope"), "--masks", str(tmp_path / "nope"), "--num-classes",
                     "2", "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainkit lr-find: error: ") and "nope" in lines[0], lines
