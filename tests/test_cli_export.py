"""`trainkit export`: a trained checkpoint to ONNX or a torch.export program, checked against PyTorch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import trainkit
from cli_runner import run_cli, run_subprocess, status_and_line
from trainkit.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    shapes = trainkit.data.make_shapes(root / "shapes", n=8, size=32, seed=1)
    status = main(["train", "--images", str(shapes / "PNGImages"), "--masks", str(shapes / "SemanticMasks"),
                   "--mask-suffix", "_mask", "--num-classes", "4", "--size", "32", "--epochs", "1", "--batch-size",
                   "4", "--base-channels", "4", "--depth", "2", "--run-dir", str(root / "run"), "--device", "cpu",
                   "--no-progress", "--amp", "off"])  # fmt: skip
    assert status == 0
    return root / "run" / "checkpoints" / "best.pt"


def test_export_onnx_checks_two_sizes_and_runs_in_onnxruntime(checkpoint: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "deploy" / "model.onnx"
    result = run_subprocess("export", "--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr
    match = re.search(rf"{re.escape(str(out))} \(onnx, float32 input\): max \|diff\| vs PyTorch (\S+) at 32x32, (\S+) "
                      r"at \d+x\d+ \(tolerance 1e-04\)", result.stdout)  # fmt: skip
    assert match is not None, result.stdout
    assert max(float(match.group(1)), float(match.group(2))) <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": np.zeros((1, 3, 40, 24), dtype=np.float32)})
    assert logits.shape == (1, 4, 40, 24)  # dynamic height and width


def test_export_program_with_embedded_preprocessing_takes_raw_pixels(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt2"
    result = run_cli("export", "--checkpoint", str(checkpoint), "--format", "exported-program", "--out", str(out),
                     "--embed-preprocessing", "--size", "32", "--size", "40x24", "--dynamic-batch")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(exported-program, uint8 input\): max \|diff\| vs PyTorch \S+ at 32x32, \S+ at 40x24",
                     result.stdout)  # fmt: skip
    program = torch.export.load(out).module()
    pixels = torch.randint(0, 256, (2, 3, 40, 24), dtype=torch.uint8)
    model, spec = trainkit.models.from_checkpoint(trainkit.load_checkpoint(checkpoint))
    prep = spec.preprocessing
    normalised = (pixels.float() * prep.scale - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(program(pixels), model(normalised), atol=1e-4, rtol=1e-4)


def test_export_static_fixes_the_size(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "static.pt2"
    result = run_cli("export", "--checkpoint", str(checkpoint), "--format", "exported-program", "--out", str(out),
                     "--static", "--size", "32x48")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"max \|diff\| vs PyTorch \S+ at 32x48 \(tolerance", result.stdout)
    with pytest.raises(Exception, match=r"(?i)shape|size|guard|expected"):
        torch.export.load(out).module()(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "tflite"], r"argument --format: invalid choice: 'tflite'"),
        (["--tolerance", "0"], r"argument --tolerance: expected a finite number > 0"),
        (["--size", "0x4"], r"argument --size: size must be N or HxW with positive numbers"),
        (["--opset", "7"], r"argument --opset: expected an integer from 18 to 99, got '7'"),
        (["--opset", "99"], r"--opset 99 is newer than the installed onnx knows \(up to \d+\): choose 18 to \d+"),
        (["--format", "exported-program", "--opset", "18"], r"--opset applies to --format onnx, not exported-program"),
        (["--static", "--size", "32", "--size", "48"], r"--static fixes the height and width, so the export runs at "
                                                       r"one size: give one --size"),
    ],
)  # fmt: skip
def test_export_options_are_refused_in_one_line(args: list[str], expected: str) -> None:
    status, line = status_and_line("export", "--checkpoint", "c.pt", "--out", "m.onnx", *args)
    assert status == 2
    assert re.search(rf"^trainkit export: error: {expected}.*\(see `trainkit export --help`\)$", line), line


def test_export_problems_are_one_line_and_write_nothing(checkpoint: Path, tmp_path: Path) -> None:
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")], r"missing\.pt"),
        (["--checkpoint", str(checkpoint), "--format", "exported-program", "--out", str(tmp_path / "m.onnx")],
         r"`out` .*m\.onnx must end in \.pt2 for format='exported-program'.*e\.g\. .*m\.pt2"),
    ]  # fmt: skip
    for args, expected in cases:
        result = run_cli("export", *args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and re.match(rf"trainkit export: error: .*{expected}", lines[0]), result.stderr
    assert list(tmp_path.iterdir()) == []
