"""`trainkit train --model ...`, `evaluate`, `--val-images`, `--import`: the model zoo on the command line, offline.

Commands run in this process (`trainkit.cli.main`) on a tiny shapes folder; every checkpoint is then used
from the file alone.
"""

from __future__ import annotations

import csv
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import trainkit
from cli_runner import status_and_line
from trainkit.cli import main
from trainkit.models import CheckpointSpec, ModelSpec

FIXTURES = Path(__file__).parent / "fixtures"
RECIPE_CHECKPOINT = FIXTURES / "recipe_unet_0.1.0.pt"  # written by `trainkit train` of trainkit 0.1.0
COLOURS = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2, (0, 0, 255): 3}
TINY_SMP = ["--model", "smp:Unet", "--encoder", "resnet18", "--model-option", "encoder_depth=3",
            "--model-option", "decoder_channels=[16, 8, 4]"]  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Empty weight caches and no way to download: a download attempt fails the test."""
    import huggingface_hub.constants as hub
    import huggingface_hub.file_download as hub_download

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a download was attempted: {args[:1]}")

    caches = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("TORCH_HOME", str(caches / "torch"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(caches / "hf"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(hub_download, "http_get", refuse)
    yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training and 4 validation shapes, with colour-coded copies of the masks (CamVid style)."""
    root = tmp_path_factory.mktemp("cli_models")
    trainkit.data.make_shapes(root / "train", n=12, size=32, seed=1)
    trainkit.data.make_shapes(root / "val", n=4, size=32, seed=2)
    for split in ("train", "val"):
        colour = root / split / "ColourMasks"
        colour.mkdir()
        table = np.zeros((256, 3), dtype=np.uint8)
        for rgb, class_id in COLOURS.items():
            table[class_id] = rgb
        for mask in (root / split / "SemanticMasks").glob("*.png"):
            Image.fromarray(table[np.asarray(Image.open(mask))]).save(colour / mask.name)
    (root / "class_dict.csv").write_text(
        "name,r,g,b\nbackground,0,0,0\ncircle,255,0,0\nsquare,0,255,0\ntriangle,0,0,255\n"
    )
    return root


def folders(shapes: Path, split: str = "train", masks: str = "SemanticMasks") -> list[str]:
    return ["--images", str(shapes / split / "PNGImages"), "--masks", str(shapes / split / masks),
            "--mask-suffix", "_mask"]  # fmt: skip


def train(shapes: Path, run_dir: Path, *extra: str) -> list[dict[str, str]]:
    args = ["train", *folders(shapes), "--size", "32", "--epochs", "1", "--batch-size", "4",
            "--run-dir", str(run_dir), "--device", "cpu", "--no-progress", "--amp", "off", *extra]  # fmt: skip
    if "--color-map" not in extra:
        args += ["--num-classes", "4"]
    assert main(args) == 0
    return list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))


def spec_of(checkpoint: Path) -> CheckpointSpec:
    return CheckpointSpec.from_checkpoint(trainkit.load_checkpoint(checkpoint))


@pytest.fixture(scope="module")
def smp_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    run_dir = tmp_path_factory.mktemp("smp") / "run"
    rows = train(
        shapes,
        run_dir,
        *TINY_SMP,
        "--encoder-lr",
        "1e-4",
        "--freeze-encoder",
        "1",
        "--val-images",
        str(shapes / "val" / "PNGImages"),
        "--val-masks",
        str(shapes / "val" / "SemanticMasks"),
    )
    return run_dir, rows


def test_train_records_the_smp_model_and_its_preprocessing_in_the_checkpoint(smp_run: tuple[Path, Any]) -> None:
    run_dir, rows = smp_run
    spec = spec_of(run_dir / "checkpoints" / "best.pt")
    assert spec.model == ModelSpec("smp:Unet", num_classes=4, options={
        "encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]})  # fmt: skip
    assert spec.preprocessing.size == (32, 32) and spec.target == "semantic"
    assert float(rows[0]["lr"]) == pytest.approx(1.5e-3)  # the decoder's group comes first: the logged rate is --lr
    assert set(rows[0]) >= {"val/miou", "val/loss"}


def test_evaluate_reports_the_validation_metrics_of_the_same_folder_and_size(
    smp_run: tuple[Path, Any], shapes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, rows = smp_run
    capsys.readouterr()
    checkpoint = str(run_dir / "checkpoints" / "best.pt")
    assert main(["evaluate", "--checkpoint", checkpoint, *folders(shapes, "val"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("evaluate: 4 images at 32x32 (the checkpoint's size); miou ")
    miou = float(out[0].split("miou ")[1].split()[0])
    assert miou == pytest.approx(float(rows[0]["val/miou"]), abs=1e-4)  # what validation measured in training
    assert out[1].split() == ["class", "iou", "dice"] and out[2].startswith("class 0 ")
    assert len(out) == 2 + 4


def test_predict_and_summary_need_only_the_checkpoint(
    smp_run: tuple[Path, Any], shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = str(smp_run[0] / "checkpoints" / "best.pt")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", checkpoint, "--images", str(shapes / "val" / "PNGImages"),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert len(list(out.glob("*.png"))) == 4
    assert main(["summary", checkpoint, "--depth", "1"]) == 0
    assert "Unet" in capsys.readouterr().out


def test_a_torchvision_model_trains_with_its_aux_head_and_predicts(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = train(shapes, tmp_path / "run", "--model", "torchvision:deeplabv3_mobilenet_v3_large",
                 "--model-option", "aux_loss=True", "--encoder-lr", "1e-4")  # fmt: skip
    assert float(rows[0]["train/loss"]) > 0
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    spec = spec_of(checkpoint)
    assert spec.model.options == {"aux_loss": True}
    assert any(k.startswith("aux_classifier.") for k in trainkit.load_checkpoint(checkpoint)["model"])
    out = tmp_path / "masks"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(shapes / "val" / "PNGImages"),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert Image.open(next(out.glob("*.png"))).size == (32, 32)


def test_the_colour_map_itself_is_in_the_checkpoint_and_used_by_predict_and_evaluate(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    color_map = tmp_path / "class_dict.csv"
    shutil.copy(shapes / "class_dict.csv", color_map)
    train(shapes, tmp_path / "run", "--base-channels", "4", "--depth", "2", "--color-map", str(color_map),
          *(["--masks", str(shapes / "train" / "ColourMasks")]))  # fmt: skip
    color_map.unlink()  # the checkpoint holds the map, not its path
    checkpoint = str(tmp_path / "run" / "checkpoints" / "best.pt")
    spec = spec_of(Path(checkpoint))
    assert spec.color_map == COLOURS and spec.class_names == ["background", "circle", "square", "triangle"]
    out = tmp_path / "masks"
    assert main(["predict", "--checkpoint", checkpoint, "--images", str(shapes / "val" / "PNGImages"),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert Image.open(next(out.glob("*.png"))).getpalette()[:12] == [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    capsys.readouterr()
    assert (
        main(["evaluate", "--checkpoint", checkpoint, *folders(shapes, "val", "ColourMasks"), "--device", "cpu"]) == 0
    )
    table = capsys.readouterr().out.splitlines()[2:]
    assert [line.split()[0] for line in table] == ["background", "circle", "square", "triangle"]


def test_a_checkpoint_of_trainkit_0_1_predicts_evaluates_and_summarises(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--checkpoint", str(RECIPE_CHECKPOINT), "--images", str(shapes / "val" / "PNGImages"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0  # fmt: skip
    assert len(list((tmp_path / "out").glob("*.png"))) == 4
    assert main(["evaluate", "--checkpoint", str(RECIPE_CHECKPOINT), *folders(shapes, "val"), "--device", "cpu"]) == 0
    assert main(["summary", str(RECIPE_CHECKPOINT)]) == 0
    out = capsys.readouterr().out
    assert "evaluate: 4 images at 32x32" in out and "UNet" in out


def test_a_registered_model_trains_and_is_rebuilt_with_import(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainkit.models import factory

    monkeypatch.setattr(factory, "_registry", {})
    module = tmp_path / "my_models.py"
    module.write_text(
        textwrap.dedent("""
        from torch import nn
        import trainkit

        class TinyNet(nn.Sequential):
            def __init__(self, num_classes, in_channels=3, width=4):
                super().__init__(nn.Conv2d(in_channels, width, 3, padding=1), nn.Conv2d(width, num_classes, 1))

        trainkit.models.register("tiny_net", TinyNet)
    """)
    )
    train(shapes, tmp_path / "run", "--model", "tiny_net", "--model-option", "width=2", "--import", str(module))
    checkpoint = str(tmp_path / "run" / "checkpoints" / "best.pt")
    monkeypatch.setattr(factory, "_registry", {})  # a new process: nothing registered
    capsys.readouterr()
    assert main(["summary", checkpoint]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'tiny_net'" in err[0] and "`--import MODULE`" in err[0]
    assert main(["summary", checkpoint, "--import", str(module)]) == 0
    assert "TinyNet" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--val-images", "v"], r"--val-images and --val-masks go together: give both folders, or neither"),
        (["--val-images", "v", "--val-masks", "m", "--val-split", "0.1"],
         r"give --val-split or --val-images/--val-masks, not both"),
        (["--model", "smp:Unet", "--depth", "3"],
         r"--depth does not apply to --model smp:Unet \(it takes --encoder, --encoder-weights\); pass other builder "
         r"options with --model-option KEY=VALUE"),
        (["--encoder", "resnet18"], r"--encoder does not apply to --model unet \(it takes --base-channels, --depth\)"),
        (["--model", "torchvision:fcn_resnet50", "--encoder", "resnet18", "--weights", "X"],
         r"--encoder does not apply to --model torchvision:fcn_resnet50"),
        (["--model-option", "3"], r"argument --model-option: expected KEY=VALUE, e\.g\. encoder_depth=3, got '3'"),
        (["--freeze-encoder", "-1"], r"argument --freeze-encoder: expected an integer >= 0"),
        (["--encoder-lr", "0"], r"argument --encoder-lr: expected a finite number > 0"),
    ],
)  # fmt: skip
def test_model_flags_that_do_not_fit_are_one_line_and_status_2(extra: list[str], expected: str) -> None:
    import re

    status, line = status_and_line("train", "--images", "a", "--masks", "b", "--num-classes", "3", *extra)
    assert status == 2
    assert re.search(expected, line), line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model", "segformer"], r"^trainkit train: error: unknown model 'segformer': give 'unet', "),
        (["--model", "smp:Unet", "--encoder", "resnet18", "--encoder-weights", "imagenet"],
         r"^trainkit train: error: the pretrained weights \(encoder_weights='imagenet' of resnet18\) are not in the "
         r"Hugging Face cache .*`hf download smp-hub/resnet18\.imagenet .*leave out `--encoder-weights`"),
        (["--model", "torchvision:lraspp_mobilenet_v3_large", "--encoder-weights", "DEFAULT"],
         r"^trainkit train: error: the pretrained weights MobileNet_V3_Large_Weights\.IMAGENET1K_V\d "
         r"\(`weights_backbone`\) are not in the torch hub cache: .*leave out `--encoder-weights`"),
    ],
)  # fmt: skip
def test_an_unknown_model_or_missing_weights_is_one_line_before_training(
    extra: list[str], expected: str, shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    args = ["train", *folders(shapes), "--num-classes", "4", "--size", "32", "--run-dir", str(tmp_path / "run"),
            "--device", "cpu", *extra]  # fmt: skip
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines
    assert not (tmp_path / "run" / "checkpoints").exists()
