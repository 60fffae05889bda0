"""Each script in examples/ runs end to end on tiny settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_unet_trains_checkpoints_and_reloads_the_best(tmp_path: Path) -> None:
    out = run_example("train_unet.py", "--epochs", "2", "--n", "24", "--size", "32", "--run-dir", "run", cwd=tmp_path)
    assert "best checkpoint: val mIoU" in out
    miou = float(out.rsplit("val mIoU", 1)[1].split()[0])
    assert 0.0 <= miou <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_custom_model_with_dict_output_and_custom_metric(tmp_path: Path) -> None:
    out = run_example("custom_model.py", "--epochs", "1", "--n", "16", "--size", "32", "--run-dir", "run", cwd=tmp_path)
    assert "final: val mIoU" in out and "count MAE" in out
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val/count_mae" in header and "train/miou" in header


@pytest.mark.slow
def test_instance_segmentation_trains_mask_rcnn_through_a_trainer_subclass(tmp_path: Path) -> None:
    out = run_example(
        "instance_segmentation.py", "--epochs", "1", "--n", "6", "--size", "64", "--run-dir", "run", cwd=tmp_path
    )
    assert "final: train loss" in out
    loss = float(out.split("train loss", 1)[1].split(",")[0])
    assert loss > 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
