"""Decoding images and masks of every supported format, pixel-exactly, and the errors for bad files."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torchvision.io import decode_gif, read_file

from data_layouts import random_image, save_palette
from trainkit.data._decode import (
    _png_values_decodable,
    lossy_format,
    pixel_format,
    read_bytes,
    read_image,
    read_mask,
)
from trainkit.errors import DecodeError

RNG = np.random.default_rng(0)
# torchvision 0.29 deprecates torchvision.io's decoders (trainkit filters the warning; pytest re-enables it).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".bmp", {}), (".webp", {"lossless": True})])
def test_lossless_rgb_images_decode_exactly(tmp_path: Path, suffix: str, options: dict) -> None:
    array = random_image(RNG)
    Image.fromarray(array).save(tmp_path / f"a{suffix}", **options)
    image = read_image(tmp_path / f"a{suffix}")
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 24, 32)
    np.testing.assert_array_equal(hwc(image), array)


def test_jpeg_decodes_close_to_the_source(tmp_path: Path) -> None:
    array = random_image(RNG)
    Image.fromarray(array).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 24, 32)
    assert np.abs(hwc(image).astype(int) - array).mean() < 5


def test_png_content_named_jpg_is_decoded_by_content(tmp_path: Path) -> None:
    array = random_image(RNG)
    Image.fromarray(array).save(tmp_path / "a.jpg", format="PNG")
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "a.jpg")), array)


def test_gray_image_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = random_image(RNG, channels=1)[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png", channels=3)
    assert tuple(image.shape) == (3, 24, 32)
    for c in range(3):
        np.testing.assert_array_equal(image[c].numpy(), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png", channels=1)[0].numpy(), gray)


def test_rgba_image_drops_alpha_or_keeps_it(tmp_path: Path) -> None:
    rgba = random_image(RNG, channels=4)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "a.png", channels=3)), rgba[:, :, :3])
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "a.png", channels=4)), rgba)


def test_rgb_to_one_channel_uses_pillow_luma(tmp_path: Path) -> None:
    array = random_image(RNG)
    Image.fromarray(array).save(tmp_path / "a.bmp")  # BMP goes through the Pillow path, then our conversion
    Image.fromarray(array).save(tmp_path / "a.webp", lossless=True)  # torchvision cannot decode WEBP to gray
    expected = np.asarray(Image.fromarray(array).convert("L")).astype(int)
    for name in ("a.bmp", "a.webp"):
        image = read_image(tmp_path / name, channels=1)
        assert tuple(image.shape) == (1, 24, 32)
        assert np.abs(image[0].numpy().astype(int) - expected).max() <= 1


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_image_becomes_its_colours(tmp_path: Path, suffix: str) -> None:
    indices = RNG.integers(0, 6, (24, 32)).astype(np.uint8)
    save_palette(tmp_path / f"p{suffix}", indices)
    expected = np.asarray(Image.open(tmp_path / f"p{suffix}").convert("RGB"))
    np.testing.assert_array_equal(hwc(read_image(tmp_path / f"p{suffix}")), expected)


def test_16bit_png_image_keeps_the_high_byte(tmp_path: Path) -> None:
    array = RNG.integers(0, 65536, (24, 32)).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", channels=1)
    np.testing.assert_array_equal(image[0].numpy(), (array >> 8).astype(np.uint8))


def test_lzw_tiff_stack_gives_its_first_page(tmp_path: Path) -> None:
    stack = RNG.integers(0, 256, (3, 24, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, compression="lzw", photometric="minisblack")
    image = read_image(tmp_path / "s.tif")
    assert tuple(image.shape) == (3, 24, 32)
    np.testing.assert_array_equal(image[1].numpy(), stack[0])


def test_planar_rgb_tiff_is_channels_first(tmp_path: Path) -> None:
    rgb = random_image(RNG)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(hwc(read_image(tmp_path / "p.tif")), rgb)


def test_float_tiff_image_is_refused_with_the_fix(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(DecodeError, match=r"f\.tif: image samples are float32.*8- or 16-bit"):
        read_image(tmp_path / "f.tif")


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("bits", [8, 2])
def test_palette_png_mask_gives_indices_not_colours(tmp_path: Path, bits: int) -> None:
    indices = RNG.integers(0, 4, (24, 32)).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200])
    image.save(tmp_path / "m.png", bits=bits)  # 2 bits: torchvision's UNCHANGED mode misreads these
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), indices)


def test_masks_take_torchvision_only_where_it_returns_stored_values(tmp_path: Path) -> None:
    indices = RNG.integers(0, 4, (8, 8)).astype(np.uint8)
    save_palette(tmp_path / "p8.png", indices)
    Image.fromarray(indices, mode="P").save(tmp_path / "p2.png", bits=2)
    Image.fromarray(indices, mode="P").save(tmp_path / "trns.png", transparency=0)
    Image.fromarray(indices, mode="L").save(tmp_path / "g8.png")
    Image.fromarray(indices.astype(np.uint16) * 300).save(tmp_path / "g16.png")
    Image.fromarray(np.stack([indices] * 3, axis=2)).save(tmp_path / "rgb.png")
    decodable = {p.stem: _png_values_decodable(np.fromfile(p, dtype=np.uint8)) for p in tmp_path.iterdir()}
    assert decodable == {"p8": True, "g8": True, "g16": True, "p2": False, "trns": False, "rgb": False}
    data = (tmp_path / "p8.png").read_bytes()
    (tmp_path / "p8.png").write_bytes(data[: len(data) - 20])
    with pytest.raises(DecodeError, match=r"p8\.png: cannot decode"):
        read_mask(tmp_path / "p8.png")


def test_palette_png_with_transparency_gives_indices(tmp_path: Path) -> None:
    indices = RNG.integers(0, 4, (24, 32)).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.save(tmp_path / "t.png", transparency=0)
    np.testing.assert_array_equal(read_mask(tmp_path / "t.png"), indices)


def test_palette_gif_mask_gives_indices_where_torchvision_gives_rgb(tmp_path: Path) -> None:
    indices = RNG.integers(0, 3, (24, 32)).astype(np.uint8)
    save_palette(tmp_path / "m.gif", indices, [[0, 0, 0], [255, 255, 255], [255, 0, 0]] + [[0, 0, 0]] * 253)
    assert decode_gif(read_file(str(tmp_path / "m.gif"))).shape[0] == 3  # why GIF masks bypass torchvision
    np.testing.assert_array_equal(read_mask(tmp_path / "m.gif"), indices)


def test_gray_16bit_and_one_bit_masks_keep_their_values(tmp_path: Path) -> None:
    binary = (RNG.integers(0, 2, (24, 32)) * 255).astype(np.uint8)
    ids16 = RNG.integers(0, 1000, (24, 32)).astype(np.uint16)
    Image.fromarray(binary, mode="L").save(tmp_path / "b.png")
    Image.fromarray(ids16).save(tmp_path / "i.png")
    Image.fromarray(binary > 0).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), binary)
    assert read_mask(tmp_path / "i.png").dtype == np.uint16
    np.testing.assert_array_equal(read_mask(tmp_path / "i.png"), ids16)
    np.testing.assert_array_equal(read_mask(tmp_path / "one.png"), (binary > 0).astype(np.uint8))


def test_rgb_masks_stay_colour_unless_gray(tmp_path: Path) -> None:
    colours = random_image(RNG)
    gray_as_rgb = np.repeat(RNG.integers(0, 5, (24, 32, 1)).astype(np.uint8), 3, axis=2)
    Image.fromarray(colours).save(tmp_path / "c.png")
    Image.fromarray(gray_as_rgb).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png"), colours)
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), gray_as_rgb[:, :, 0])
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png", rgb=True), gray_as_rgb)


def test_palette_mask_read_as_rgb_gives_palette_colours(tmp_path: Path) -> None:
    indices = RNG.integers(0, 3, (24, 32)).astype(np.uint8)
    palette = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    save_palette(tmp_path / "m.png", indices, palette + [[0, 0, 0]] * 253)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", rgb=True), np.array(palette, np.uint8)[indices])


def test_tiff_mask_first_page_uint16(tmp_path: Path) -> None:
    ids = RNG.integers(0, 3000, (2, 24, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", ids, compression="lzw", photometric="minisblack")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), ids[0])


# ---------------------------------------------------------------- errors


def truncated_png(path: Path) -> None:
    Image.fromarray(random_image(RNG)).save(path, format="PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_jpeg(path: Path) -> None:
    Image.fromarray(random_image(RNG)).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[:20] + bytes(len(data) - 20))  # header kept, markers and entropy data wiped


def text_file(path: Path) -> None:
    path.write_text("not an image")


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("a.png", truncated_png, r"truncated"),
        ("a.jpg", corrupt_jpeg, r"re-export it"),
        ("notes.png", text_file, r"not an image"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, name: str, write: Callable[[Path], None], reason: str) -> None:
    write(tmp_path / name)
    with pytest.raises(DecodeError, match=rf"{re.escape(name)}: cannot decode .*{reason}"):
        read_image(tmp_path / name)
    with pytest.raises(DecodeError, match=rf"{re.escape(name)}: cannot decode .*{reason}"):
        read_mask(tmp_path / name)


def test_missing_tiff_codec_names_the_file_and_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # LERC compression: tifffile decodes it only through imagecodecs, and Pillow cannot read it at all.
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((8, 8), np.uint8), compression="lerc")
    # Without imagecodecs, tifffile binds its small built-in fallback module to this name (tifffile.py, import).
    monkeypatch.setattr(tifffile.tifffile, "imagecodecs", importlib.import_module("tifffile._imagecodecs"))
    with pytest.raises(DecodeError, match=r"s\.tif: this TIFF needs a codec.*pip install trainkit\[tiff\]"):
        read_image(tmp_path / "s.tif")
    with pytest.raises(DecodeError, match=r"pip install trainkit\[tiff\]"):
        read_mask(tmp_path / "s.tif")


def test_pixel_format_reports_mode_and_channels(tmp_path: Path) -> None:
    Image.fromarray(random_image(RNG)).save(tmp_path / "rgb.png")
    Image.fromarray(random_image(RNG, channels=1)[:, :, 0]).save(tmp_path / "g.png")
    save_palette(tmp_path / "p.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "x.png").write_text("nope")
    assert pixel_format(tmp_path / "rgb.png") == ("RGB", 3)
    assert pixel_format(tmp_path / "g.png") == ("L", 1)
    assert pixel_format(tmp_path / "p.png") == ("P", 3)
    assert pixel_format(tmp_path / "x.png") == ("unknown", None)


def test_an_unknown_format_is_named_without_internals(tmp_path: Path) -> None:
    text_file(tmp_path / "notes.png")
    with pytest.raises(DecodeError, match=r"notes\.png: cannot decode \(not a format Pillow recognises\)") as err:
        read_mask(tmp_path / "notes.png")
    assert "BytesIO" not in str(err.value)


def test_an_unreadable_file_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: Path, dtype: object) -> np.ndarray:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "fromfile", denied)
    with pytest.raises(DecodeError, match=r"a\.png: cannot read the file \(permission denied\); make it readable"):
        read_image(tmp_path / "a.png")


# ---------------------------------------------------------------- bytes read once, lossy formats


def test_lossy_format_is_read_from_the_content(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), np.uint8)
    Image.fromarray(mask).save(tmp_path / "jpeg.png", format="JPEG")
    Image.fromarray(mask).save(tmp_path / "png.jpg", format="PNG")
    Image.fromarray(mask).save(tmp_path / "w.webp", lossless=True)
    assert lossy_format(read_bytes(tmp_path / "jpeg.png")) == "JPEG"
    assert lossy_format(read_bytes(tmp_path / "png.jpg")) is None
    assert lossy_format(read_bytes(tmp_path / "w.webp")) is None


@pytest.mark.parametrize("suffix", [".png", ".gif", ".bmp", ".jpg"])
def test_decoders_use_bytes_already_read(tmp_path: Path, suffix: str) -> None:
    indices = RNG.integers(0, 4, (12, 16)).astype(np.uint8)
    path = tmp_path / f"m{suffix}"
    if suffix == ".jpg":
        Image.fromarray(random_image(RNG, (12, 16))).save(path)
    else:
        save_palette(path, indices)
    data = read_bytes(path)
    image, mask, fmt = read_image(path), read_mask(path), pixel_format(path)
    path.unlink()  # nothing below may open the file
    assert torch.equal(read_image(path, data=data), image)
    np.testing.assert_array_equal(read_mask(path, data=data), mask)
    assert pixel_format(path, data=data) == fmt
