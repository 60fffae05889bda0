"""`trainkit predict` at full resolution: the training scale, windows, TTA, encodings, probabilities, resuming.

The masks written are compared with the model's logits computed here independently (torchvision's resize,
`F.interpolate`), on checkpoints made in the test from a seeded tiny UNet and its spec.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import trainkit
from cli_runner import run_cli, run_subprocess, status_and_line
from trainkit.cli import main
from trainkit.cli.predict import predict_folder
from trainkit.data import read_class_dict
from trainkit.inference import sliding_window
from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing

PHOTOS = {"a1": (40, 30), "a2": (32, 32), "a10": (20, 50)}  # stem: (height, width)
COLOURS = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2, (0, 0, 255): 3}
# A registered model whose classes follow the pixels' colours (a seeded UNet predicts one class everywhere).
MODEL_MODULE = """
import torch
import trainkit

class PixelNet(torch.nn.Sequential):
    def __init__(self, num_classes, in_channels=3):
        layers = [torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, num_classes, 1)]
        super().__init__(*layers)

trainkit.models.register("pixel_net", PixelNet)
"""


@pytest.fixture(scope="module")
def model_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file that registers `pixel_net`, imported here and by the commands' `--import`."""
    from trainkit.cli._model_flags import import_modules

    path = tmp_path_factory.mktemp("models") / "pixel_net.py"
    path.write_text(MODEL_MODULE)
    import_modules([str(path)])
    return path


def make_checkpoint(path: Path, *, num_classes: int = 4, size: int = 16, **classes: Any) -> Path:
    """A seeded `pixel_net` and its spec: no training needed, its classes vary from pixel to pixel."""
    torch.manual_seed(0)
    spec = CheckpointSpec(ModelSpec("pixel_net", num_classes), Preprocessing(size), **classes)
    model = spec.model.build()
    return trainkit.save_checkpoint(path, {"model": model.state_dict(), "extra": {"spec": spec.to_dict()}})


def photos(folder: Path, sizes: dict[str, tuple[int, int]] = PHOTOS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, (h, w) in sizes.items():
        smooth = rng.integers(0, 255, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)  # blobs the model can tell apart
        Image.fromarray(smooth).resize((w, h), Image.Resampling.BILINEAR).save(folder / f"{stem}.png")
    return folder


def expected_logits(checkpoint: Path, image_path: Path, *, window: int | None = None, flip: bool = False,
                    overlap: float = 0.25, blend: str = "gaussian") -> torch.Tensor:  # fmt: skip
    """[K, H, W]: the model at the training scale (the image just covering the crop size), resized back."""
    model, spec = trainkit.models.from_checkpoint(trainkit.load_checkpoint(checkpoint))
    image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)
    (h, w), (th, tw) = image.shape[-2:], spec.preprocessing.size
    ratio = max(th / h, tw / w)
    x = TF.resize(image, [round(h * ratio), round(w * ratio)], antialias=True)[None].float() / 255
    x = (x - torch.tensor(spec.preprocessing.mean).view(1, 3, 1, 1)) / torch.tensor(spec.preprocessing.std).view(
        1, 3, 1, 1
    )

    def forward(batch: torch.Tensor) -> torch.Tensor:
        if window is not None and max(batch.shape[-2:]) > window:
            return sliding_window(model, batch, window=window, overlap=overlap, blend=blend)
        return model(batch)

    with torch.no_grad():
        logits = forward(x)
        if flip:
            logits = (logits + forward(x.flip(-1)).flip(-1)) / 2
    return F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)[0]


def assert_ids_match(written: np.ndarray, logits: torch.Tensor) -> None:
    """The argmax of ``logits``, except where its top two classes are within float error of each other."""
    top2 = logits.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    np.testing.assert_array_equal(written[clear], logits.argmax(0).numpy()[clear])
    assert clear.mean() > 0.99
    assert len(np.unique(written)) >= 2  # a test of something: the classes vary


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model_module: Path) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("predict") / "best.pt", class_names=["bg", "circle", "sq", "tri"])


def test_predict_runs_the_model_at_the_training_scale_and_resizes_its_logits(
    checkpoint: Path, model_module: Path, tmp_path: Path
) -> None:
    images, out = photos(tmp_path / "photos"), tmp_path / "out"
    result = run_subprocess("predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                            "--device", "cpu", "--probabilities", "npy", "--import", str(model_module))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote 3 masks to .*out and 3 probability maps to .*out/probabilities \(classes in "
                     r".*out/labels\.txt\)", result.stdout)  # fmt: skip
    for stem, (h, w) in PHOTOS.items():
        logits = expected_logits(checkpoint, images / f"{stem}.png")
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (w, h)
        assert_ids_match(np.asarray(mask), logits)
        probabilities = np.load(out / "probabilities" / f"{stem}.npy")
        assert probabilities.shape == (4, h, w) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, logits.softmax(0).numpy(), atol=1e-5)
    names = read_class_dict(out / "labels.txt")
    spec = trainkit.models.CheckpointSpec.from_checkpoint(trainkit.load_checkpoint(checkpoint))
    assert names.names == ["bg", "circle", "sq", "tri"]
    assert names.color_map == {colour: i for i, colour in enumerate(spec.colors()[:4])}
    assert Image.open(out / "a1.png").getpalette()[:12] == [c for rgb in spec.colors()[:4] for c in rgb]


def test_tiles_and_flip_tta_are_the_library_s_windows_and_mean(
    checkpoint: Path, model_module: Path, tmp_path: Path
) -> None:
    images, out = photos(tmp_path / "photos", {"wide": (20, 60)}), tmp_path / "out"  # 16 x 48 at the training scale
    result = run_cli("predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                     "--device", "cpu", "--tile", "16", "--overlap", "0.5", "--blend", "constant", "--tta", "flip",
                     "--import", str(model_module))  # fmt: skip
    assert result.returncode == 0, result.stderr
    logits = expected_logits(checkpoint, images / "wide.png", window=16, overlap=0.5, blend="constant", flip=True)
    assert_ids_match(np.asarray(Image.open(out / "wide.png")), logits)
    whole = expected_logits(checkpoint, images / "wide.png")
    assert not torch.equal(logits.argmax(0), whole.argmax(0))  # the windows and the mirror changed the prediction


def test_encoding_training_writes_0_255_masks_named_as_the_training_ones(model_module: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "binary.pt", num_classes=2, target="binary", mask_suffix="_mask")
    images, out = photos(tmp_path / "photos"), tmp_path / "out"
    result = run_cli("predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                     "--device", "cpu", "--encoding", "training", "--overlays",
                     "--import", str(model_module))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["a10_mask.png", "a1_mask.png", "a2_mask.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a1.png", "a10.png", "a2.png"]
    for stem, (h, w) in PHOTOS.items():
        mask = Image.open(out / f"{stem}_mask.png")
        assert mask.mode == "L" and mask.size == (w, h)
        logits = expected_logits(checkpoint, images / f"{stem}.png")
        assert_ids_match(np.asarray(mask) // 255, logits)
        assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}
    assert (out / "labels.txt").read_text() == (
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\nforeground:255,255,255::\n"
    )
    # what it wrote is a binary training set again: the pairs check as such
    assert trainkit.data.check(images, out, mask_suffix="_mask", target="binary").ok


def test_encoding_training_writes_the_colour_map_s_colours(model_module: Path, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "colours.pt", color_map=COLOURS)
    images, out = photos(tmp_path / "photos"), tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                 "--device", "cpu", "--encoding", "training"]) == 0  # fmt: skip
    color_map, _ = read_class_dict(out / "labels.txt")
    assert color_map == COLOURS
    for stem in PHOTOS:
        rgb = np.asarray(Image.open(out / f"{stem}.png"))
        assert rgb.ndim == 3 and Image.open(out / f"{stem}.png").mode == "RGB"
        ids = np.vectorize(lambda r, g, b: COLOURS[(r, g, b)])(rgb[..., 0], rgb[..., 1], rgb[..., 2])
        assert_ids_match(ids, expected_logits(checkpoint, images / f"{stem}.png"))
    assert trainkit.data.check(images, out, color_map=color_map).ok  # a colour-coded training set again


def test_probabilities_as_tif(checkpoint: Path, tmp_path: Path) -> None:
    images, out = photos(tmp_path / "photos", {"a": (24, 20)}), tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                 "--device", "cpu", "--probabilities", "tif"]) == 0  # fmt: skip
    maps = tifffile.imread(out / "probabilities" / "a.tif")
    assert maps.shape == (4, 24, 20) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(0), 1.0, atol=1e-5)


def test_skip_existing_continues_an_interrupted_prediction(
    checkpoint: Path, model_module: Path, tmp_path: Path
) -> None:
    images, out = photos(tmp_path / "photos"), tmp_path / "out"
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(images),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--import",
        str(model_module),
    ]
    assert run_cli(*args).returncode == 0
    (out / "a1.png").write_bytes(b"kept: not predicted again")
    (out / "a2.png").unlink()  # the run was interrupted before a2
    result = run_cli(*args, "--skip-existing")
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote 1 masks to .*; 2 skipped, their outputs already there", result.stdout), result.stdout
    assert (out / "a1.png").read_bytes() == b"kept: not predicted again"
    assert Image.open(out / "a2.png").size == (32, 32)
    result = run_cli(*args, "--skip-existing", "--overlays")  # an output asked for now is missing: predicted again
    assert re.search(r"wrote 3 masks to .* and 3 overlays to", result.stdout), result.stdout


def test_the_folder_is_streamed_one_image_at_a_time(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, out = photos(tmp_path / "photos", {f"p{i}": (24, 24) for i in range(6)}), tmp_path / "out"
    written_when_read = []
    read_image = trainkit.data.read_image

    def counting(path: Any, **kwargs: Any) -> torch.Tensor:
        written_when_read.append(len(list(out.glob("p*.png"))))
        return read_image(path, **kwargs)

    monkeypatch.setattr(trainkit.data, "read_image", counting)
    result = predict_folder(checkpoint, images, out, device="cpu")
    assert len(result.masks) == 6
    assert written_when_read == [0, 1, 2, 3, 4, 5]  # each image read after the previous one's mask was written


def test_a_progress_bar_on_a_terminal(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    predict_folder(checkpoint, photos(tmp_path / "photos"), tmp_path / "out", device="cpu", progress=True)
    assert re.search(r"3/3 \[.*image", terminal.getvalue()), terminal.getvalue()
    terminal.truncate(0)
    predict_folder(checkpoint, tmp_path / "photos", tmp_path / "out2", device="cpu", progress=False)
    assert terminal.getvalue().strip("\x00") == ""


def test_no_exif_orientation_predicts_the_stored_pixels(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise": stored 40 wide and 30 high, shown 30 wide and 40 high
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "photos" / "IMG_1.jpg", exif=exif)
    for extra, size in (([], (30, 40)), (["--no-exif-orientation"], (40, 30))):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "photos"), "--out",
                     str(out), "--device", "cpu", *extra]) == 0  # fmt: skip
        assert Image.open(out / "IMG_1.png").size == size  # (width, height)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--overlap", "0.5"], r"--overlap weigh the sliding windows of --tile: give --tile SIZE too"),
        (["--overlap", "0.5", "--blend", "constant"], r"--overlap and --blend weigh the sliding windows of --tile"),
        (["--tile", "0"], r"argument --tile: size must be N or HxW with positive numbers, got '0'"),
        (["--tile", "64", "--overlap", "1"], r"argument --overlap: expected a fraction from 0 \(inclusive\) to 1"),
        (["--tile", "64", "--overlap", "nan"], r"argument --overlap: expected a fraction .*got 'nan'"),
        (["--tile", "64", "--blend", "median"], r"argument --blend: invalid choice: 'median'"),
        (["--tta", "rotate"], r"argument --tta: invalid choice: 'rotate'"),
        (["--encoding", "voc"], r"argument --encoding: invalid choice: 'voc'"),
        (["--probabilities", "png"], r"argument --probabilities: invalid choice: 'png'"),
        (["--batch-size", "0"], r"argument --batch-size: expected a positive integer"),
    ],
)
def test_predict_options_are_refused_in_one_line(args: list[str], expected: str) -> None:
    status, line = status_and_line("predict", "--checkpoint", "c.pt", "--images", "i", "--out", "o", *args)
    assert status == 2
    assert re.search(rf"^trainkit predict: error: {expected}.*\(see `trainkit predict --help`\)$", line), line


def test_a_tile_the_model_cannot_take_is_refused_with_the_size_that_fits(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainkit.cli.predict as predict

    monkeypatch.setattr(predict, "size_multiple", lambda model: 32)  # as an smp encoder of output stride 32
    with pytest.raises(ValueError, match=r"--tile 100x64 does not fit pixel_net: its encoder needs a height and "
                                         r"width divisible by 32; use --tile 128x64"):  # fmt: skip
        predict_folder(checkpoint, photos(tmp_path / "photos"), tmp_path / "out", device="cpu", tile=(100, 64))


def test_probabilities_into_the_images_folder_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    images = photos(tmp_path / "out" / "probabilities")
    with pytest.raises(ValueError, match=r"--out/probabilities .* is the --images folder .*: the probabilities "
                                         r"would be written among the images"):  # fmt: skip
        predict_folder(checkpoint, images, tmp_path / "out", device="cpu", probabilities="npy")


def test_logits_are_resized_in_bands_as_f_interpolate_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainkit.cli._predict_forward as forward

    monkeypatch.setattr(forward, "_BAND_BYTES", 4 * 3 * 30 * 7)  # 7 rows a band
    logits = torch.randn(3, 9, 11)
    for size in ((40, 30), (5, 4), (9, 11)):
        bands = list(forward.bilinear_bands(logits, size))
        assert [start for start, _ in bands] == list(range(0, size[0], max(1, 4 * 3 * 30 * 7 // (12 * size[1]))))
        whole = F.interpolate(logits[None], size, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(torch.cat([band for _, band in bands], dim=1), whole, atol=1e-5, rtol=0)


def test_an_image_is_padded_to_the_multiple_the_model_needs_and_cropped_back() -> None:
    from trainkit.cli._predict_forward import Forward

    class Strided(torch.nn.Conv2d):  # as smp models: check_input_shape, encoder.output_stride
        encoder = torch.nn.Module()

        def check_input_shape(self, x: torch.Tensor) -> None:
            assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0, tuple(x.shape)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.check_input_shape(x)
            return super().forward(x)

    Strided.encoder.output_stride = 8  # type: ignore[assignment]
    model = Strided(3, 2, 1).eval()
    image = torch.rand(1, 3, 20, 30)
    with torch.no_grad():
        logits = Forward(model, tta="flip+scale")(image)  # 20x30, and 15x22 / 25x38 for the scales
        assert logits.shape == (1, 2, 20, 30)
        torch.testing.assert_close(Forward(model)(image), super(Strided, model).forward(image))  # 1x1: no seams
