"""`trainkit check` on the data people have: 0/255 masks (`--target`), COCO exports (`--annotations`), phone
photos (`--no-exif-orientation`); and `train --class-names`. On tiny generated files, in this process
(`run_cli`) but for one `python -m trainkit check` (`run_subprocess`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainkit
from cli_runner import run_cli, run_subprocess, status_and_line
from trainkit.cli import main
from trainkit.cli.predict import predict_folder


@pytest.fixture(scope="module")
def binary_masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes images with 0/255 masks (foreground 255), as Kaggle sets and tool exports store binary masks."""
    root = trainkit.data.make_shapes(tmp_path_factory.mktemp("check") / "shapes", n=4, size=24, seed=3)
    (root / "Binary").mkdir()
    for mask in (root / "SemanticMasks").glob("*.png"):
        ids = np.asarray(Image.open(mask))
        Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8), mode="L").save(root / "Binary" / mask.name)
    return root


def folders(root: Path, masks: str = "Binary") -> list[str]:
    return ["--images", str(root / "PNGImages"), "--masks", str(root / masks), "--mask-suffix", "_mask"]


def test_0_255_masks_read_as_class_ids_are_an_error_that_proposes_target_binary(binary_masks: Path) -> None:
    result = run_subprocess("check", *folders(binary_masks))
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"the masks hold only the values 0 and 255.*\(`--target binary`\)", result.stdout)
    assert "result: FAILED (1 errors" in result.stdout
    result = run_subprocess("check", *folders(binary_masks), "--target", "binary")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"class histogram \(pixels\): 0: \d+ .*, 1: \d+", result.stdout)  # 255 read as class 1
    assert "suggested pos_weight (n_negative / n_positive)" in result.stdout


def test_threshold_sets_the_foreground_of_binary_masks(binary_masks: Path, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for mask in (binary_masks / "Binary").glob("*.png"):  # a JPEG-like fringe of low values around the shapes
        values = np.asarray(Image.open(mask)).copy()
        values[(values == 0) & (np.roll(values, 1, axis=1) == 255)] = 40
        Image.fromarray(values, mode="L").save(noisy / mask.name)
    counts = {}
    for extra in ([], ["--threshold", "127"]):
        result = run_cli("check", "--images", str(binary_masks / "PNGImages"), "--masks", str(noisy), "--mask-suffix",
                         "_mask", "--target", "binary", *extra)  # fmt: skip
        assert result.returncode == 0, result.stdout
        counts[len(extra)] = int(re.search(r"1: (\d+) \(", result.stdout).group(1))  # type: ignore[union-attr]
    assert counts[2] < counts[0]  # above 127: the fringe of 40 is background


def test_annotations_check_a_coco_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(images / name)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "b.png", "height": 20, "width": 30}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 2, "category_id": 9, "iscrowd": 0, "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]},
        ],
    }  # fmt: skip
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))
    result = run_cli("check", "--images", str(images), "--annotations", str(annotations))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"annotations={annotations}" in result.stdout
    assert re.search(r"class histogram \(pixels\): 0: \d+ .*, 1: \d+ .*, 2: \d+", result.stdout)  # ids 7, 9 -> 1, 2
    (images / "b.png").unlink()
    result = run_cli("check", "--images", str(images), "--annotations", str(annotations), "--target", "binary")
    assert result.returncode == 1
    assert "b.png" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_no_exif_orientation_reads_photos_as_stored(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise": a phone held upright
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / "IMG_1.jpg", exif=exif)
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(tmp_path / "masks" / "IMG_1.png")  # on the stored pixels
    args = ["check", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), "--num-classes", "2"]
    result = run_cli(*args)
    assert result.returncode == 1
    assert re.search(r"IMG_1.*EXIF", result.stdout), result.stdout
    result = run_cli(*args, "--no-exif-orientation")
    assert result.returncode == 0, result.stdout
    assert "image sizes (WxH): 40x30 (1)" in result.stdout


def test_train_reads_photos_as_stored_and_predict_and_evaluate_follow_the_checkpoint(tmp_path: Path) -> None:
    # Phone photos stored 40 wide and 30 high, tagged "turn 90 degrees clockwise" (viewers show 30x40), with masks
    # drawn on the stored pixels: the mask's left half is class 1, as is the left half of the stored image.
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    for i in range(4):
        pixels = np.zeros((30, 40, 3), dtype=np.uint8)
        pixels[:, :20] = 200 + 10 * i
        Image.fromarray(pixels).save(images / f"IMG_{i}.png", exif=exif)
        Image.fromarray((pixels[..., 0] > 0).astype(np.uint8)).save(masks / f"IMG_{i}.png")
    data = ["--images", str(images), "--masks", str(masks), "--num-classes", "2"]
    train = ["train", *data, "--size", "16", "--epochs", "1", "--batch-size", "2", "--base-channels", "4", "--depth",
             "2", "--device", "cpu", "--no-progress", "--amp", "off"]  # fmt: skip
    result = run_cli(*train, "--run-dir", str(tmp_path / "turned"))
    assert result.returncode == 1
    expected = (
        r"^trainkit train: error: image .*IMG_\d\.png is stored as 40x30 .*EXIF orientation 6.*Read the "
        r"images as stored: `--no-exif-orientation` \(trainkit train, lr-find, evaluate, check\)"
    )
    assert re.search(expected, result.stderr), result.stderr
    run_dir = tmp_path / "stored"
    result = run_cli(*train, "--run-dir", str(run_dir), "--no-exif-orientation")
    assert result.returncode == 0, result.stderr
    checkpoint = run_dir / "checkpoints" / "last.pt"
    spec = trainkit.models.CheckpointSpec.from_checkpoint(trainkit.load_checkpoint(checkpoint))
    assert spec.preprocessing.exif_orientation is False
    # predict reads the photos as the training did (stored: 40x30), unless told otherwise
    out = tmp_path / "predicted"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert Image.open(out / "IMG_0.png").size == (40, 30)  # (width, height)
    turned = predict_folder(checkpoint, images, tmp_path / "predicted_turned", device="cpu", exif_orientation=True)
    assert len(turned.masks) == 4 and Image.open(tmp_path / "predicted_turned" / "IMG_0.png").size == (30, 40)
    evaluate = ["evaluate", "--checkpoint", str(checkpoint), "--images", str(images), "--masks", str(masks),
                "--device", "cpu"]  # fmt: skip
    result = run_cli(*evaluate)
    assert result.returncode == 0, result.stderr  # turned, the 40x30 masks would not fit the 30x40 photos
    assert re.search(r"4 images", result.stdout), result.stdout
    # a checkpoint of turned photos (the default) evaluates photos as stored when told to
    turned_run = tmp_path / "masks_as_shown"
    shown = tmp_path / "shown"
    shown.mkdir()
    for mask in masks.iterdir():
        Image.fromarray(np.rot90(np.asarray(Image.open(mask)), k=-1).copy()).save(shown / mask.name)
    assert run_cli(*train, "--masks", str(shown), "--run-dir", str(turned_run)).returncode == 0
    evaluate[2] = str(turned_run / "checkpoints" / "last.pt")
    result = run_cli(*evaluate)
    assert (
        result.returncode == 1 and "`--no-exif-orientation` (trainkit train, lr-find, evaluate, check)" in result.stderr
    )
    assert run_cli(*evaluate, "--no-exif-orientation").returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--images", "i"], r"one of the arguments --masks --annotations is required"),
        (["--images", "i", "--masks", "m", "--annotations", "a.json"],
         r"argument --annotations: not allowed with argument --masks"),
        (["--images", "i", "--masks", "m", "--target", "panoptic"], r"argument --target: invalid choice: 'panoptic'"),
        (["--images", "i", "--masks", "m", "--threshold", "nan"], r"argument --threshold: expected a finite number "
                                                                  r">= 0 \(e\.g\. 127\), got 'nan'"),
        (["--images", "i", "--masks", "m", "--threshold", "-1"], r"argument --threshold: expected a finite number >="),
        (["--images", "i", "--masks", "m", "--threshold", "127"],
         r"--threshold applies to --target binary, not --target semantic"),
        (["--images", "i", "--annotations", "a.json", "--mask-suffix", "_m", "--num-classes", "3"],
         r"--mask-suffix, --num-classes read a folder of masks, not --annotations: .*drop them"),
    ],
)  # fmt: skip
def test_check_options_are_refused_in_one_line(args: list[str], expected: str) -> None:
    status, line = status_and_line("check", *args)
    assert status == 2
    assert re.search(rf"^trainkit check: error: {expected}.*\(see `trainkit check --help`\)$", line), line


def test_color_map_help_names_cvat_labelmap(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("check", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "CVAT's labelmap.txt" in capsys.readouterr().out.replace("\n", " ")


def test_train_records_class_names_in_the_checkpoint(binary_masks: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", *folders(binary_masks, "SemanticMasks"), "--num-classes", "4", "--class-names",
                     "background, circle,square,triangle", "--size", "24", "--epochs", "1", "--batch-size", "2",
                     "--base-channels", "4", "--depth", "2", "--run-dir", str(run_dir), "--device", "cpu",
                     "--no-progress", "--amp", "off")  # fmt: skip
    assert result.returncode == 0, result.stderr
    spec = trainkit.load_checkpoint(run_dir / "checkpoints" / "best.pt")["extra"]["spec"]
    assert spec["classes"]["names"] == ["background", "circle", "square", "triangle"]
    assert spec["classes"]["mask_suffix"] == "_mask"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["extra"]["spec"] == spec


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--num-classes", "3", "--class-names", "a,b"], r"--class-names gives 2 names for 3 classes: give one name "
                                                         r"per class id, background \(0\) first"),
        (["--target", "binary", "--class-names", "a,b,c"], r"--class-names gives 3 names for 2 classes"),
        (["--num-classes", "3", "--class-names", "a,,c"], r"argument --class-names: expected comma-separated names, "
                                                          r"one per class id from 0 .*got an empty name in 'a,,c'"),
        (["--num-classes", "3", "--class-names", "a,b,a"], r"argument --class-names: .*each once; a repeated"),
    ],
)  # fmt: skip
def test_class_names_are_one_per_class(args: list[str], expected: str) -> None:
    status, line = status_and_line("train", "--images", "i", "--masks", "m", *args)
    assert status == 2
    assert re.search(rf"^trainkit train: error: {expected}", line), line


def test_class_names_that_do_not_fit_the_color_map_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nbackground,0,0,0\ncar,255,0,0\n")
    color_map = str(tmp_path / "class_dict.csv")
    result = run_cli("train", "--images", str(tmp_path), "--masks", str(tmp_path), "--color-map", color_map,
                     "--class-names", "a,b,c", "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"trainkit train: error: `class_names` \(--class-names\) gives 3 names for 2 "
                                        r"classes", lines[0]), lines  # fmt: skip
    assert not (tmp_path / "run").exists()
