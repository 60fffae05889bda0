"""Each script in examples/ runs end to end on tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    # No network: empty weight caches, the Hugging Face Hub offline, and any HTTP(S) request sent to a closed port.
    offline = {"TORCH_HOME": str(cwd / "torch_home"), "HF_HOME": str(cwd / "hf_home"), "HF_HUB_OFFLINE": "1",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300, env={**os.environ, **offline},
    )  # fmt: skip
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


def _checkpoint_spec(path: Path) -> object:
    import trainkit
    from trainkit.models import CheckpointSpec

    return CheckpointSpec.from_checkpoint(trainkit.load_checkpoint(path))


@pytest.mark.slow  # about 20 s on 2 CPU cores
def test_finetune_torchvision_trains_deeplabv3_with_its_aux_head_offline(tmp_path: Path) -> None:
    out = run_example("finetune_torchvision.py", "--epochs", "2", "--n", "20", "--size", "32", "--run-dir", "run",
                      cwd=tmp_path)  # fmt: skip
    assert "best checkpoint (torchvision:deeplabv3_mobilenet_v3_large): val mIoU" in out
    assert 0.0 <= float(out.rsplit("val mIoU", 1)[1].split()[0]) <= 1.0
    spec = _checkpoint_spec(tmp_path / "run" / "checkpoints" / "best.pt")
    assert spec.model.options == {"aux_loss": True} and spec.class_names[1] == "circle"  # type: ignore[attr-defined]
    assert not any((tmp_path / "torch_home").rglob("*.pth"))  # nothing was downloaded


def test_smp_unet_trains_with_the_encoder_at_a_tenth_of_the_rate_offline(tmp_path: Path) -> None:
    out = run_example("smp_unet.py", "--epochs", "1", "--n", "20", "--size", "32", "--encoder-depth", "3",
                      "--run-dir", "run", cwd=tmp_path)  # fmt: skip
    rates = out.split("final rates: decoder ", 1)[1].split()
    assert float(rates[0].rstrip(",")) == pytest.approx(10 * float(rates[2]), rel=0.01)
    assert "best checkpoint (smp:Unet, resnet18): val mIoU" in out
    spec = _checkpoint_spec(tmp_path / "run" / "checkpoints" / "best.pt")
    assert spec.model.options["encoder_name"] == "resnet18"  # type: ignore[attr-defined]
    assert not (tmp_path / "hf_home").exists() or not any((tmp_path / "hf_home").rglob("*.safetensors"))
