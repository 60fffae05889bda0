"""Tiny dataset folders in the layouts public segmentation datasets ship in, written into ``tmp_path``.

Each builder writes images and masks from random arrays and returns them, so tests compare what the dataset
decodes with what generated the files, pixel for pixel (masks are always lossless; JPEG images are compared
approximately).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HEIGHT, WIDTH = 24, 32

# Pascal VOC's colour map (first 21 classes): the palette its SegmentationClass PNGs carry.
VOC_PALETTE = [
    [(i >> 0 & 1) << 7 | (i >> 3 & 1) << 6, (i >> 1 & 1) << 7 | (i >> 4 & 1) << 6, (i >> 2 & 1) << 7] for i in range(21)
]
CAMVID_CLASSES = [("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Road", (128, 64, 128)), ("Void", (0, 0, 0))]


@dataclass
class Layout:
    """A written dataset: its folders and, per sample in natural order, the arrays that made the files."""

    images: Path
    masks: Path
    names: list[str] = field(default_factory=list)  # image stems, natural order
    images_hwc: list[np.ndarray] = field(default_factory=list)  # uint8 [H, W, C] or [H, W] as written
    masks_raw: list[np.ndarray] = field(default_factory=list)  # values as stored (ids, indices, colours)
    class_dict: Path | None = None


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_image(rng: np.random.Generator, size: tuple[int, int] = (HEIGHT, WIDTH), channels: int = 3) -> np.ndarray:
    """Smooth-ish uint8 image (JPEG-friendly): a gradient plus a little noise."""
    h, w = size
    base = (
        np.linspace(0, 200, w, dtype=np.float32)[None, :, None] + np.linspace(0, 50, h, dtype=np.float32)[:, None, None]
    )
    image = base + rng.integers(0, 12, (h, w, channels))
    return np.clip(image, 0, 255).astype(np.uint8)


def rectangles(
    rng: np.random.Generator, n: int, values: list[int], size: tuple[int, int] = (HEIGHT, WIDTH)
) -> np.ndarray:
    """A uint8 mask of ``n`` random rectangles (later ones on top) with values drawn from ``values``."""
    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8)
    for k in range(n):
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        dy, dx = int(rng.integers(3, h // 2)), int(rng.integers(3, w // 2))
        mask[y : y + dy, x : x + dx] = values[k % len(values)]
    return mask


def save_palette(path: Path, indices: np.ndarray, palette: list[list[int]] | None = None) -> None:
    """Save indices as a palette ("P") image (PNG or GIF by suffix)."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    colours = palette or [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(256)]
    image.putpalette([c for rgb in colours for c in rgb])
    image.save(path)


def penn_fudan(root: Path, n: int = 3, seed: int = 0) -> Layout:
    """``PNGImages/FudanPed0000k.png`` + ``PedMasks/FudanPed0000k_mask.png`` (palette, instance ids 1..k)."""
    rng = _rng(seed)
    layout = Layout(root / "PNGImages", root / "PedMasks")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    for k in range(1, n + 1):
        name = f"FudanPed{k:05d}"
        image = random_image(rng)
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)  # disjoint people side by side, ids 1..k
        for obj in range(1, k + 1):
            x0 = 2 + (obj - 1) * 9
            mask[3 + obj : 20, x0 : x0 + 6] = obj
        Image.fromarray(image).save(layout.images / f"{name}.png")
        save_palette(layout.masks / f"{name}_mask.png", mask)
        layout.names.append(name)
        layout.images_hwc.append(image)
        layout.masks_raw.append(mask)
    return layout


def carvana(root: Path, n: int = 2, seed: int = 1, foreground: int = 1) -> Layout:
    """``train/<id>_<angle>.jpg`` + ``train_masks/<id>_<angle>_mask.gif`` (palette GIF, 0 and ``foreground``)."""
    rng = _rng(seed)
    layout = Layout(root / "train", root / "train_masks")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    palette = [[0, 0, 0]] + [[255, 255, 255]] * 255  # both 1 and 255 are white, as in Carvana's GIFs
    for k in range(1, n + 1):
        name = f"0cdf5b5d0ce1_{k:02d}"
        image = random_image(rng)
        mask = rectangles(rng, 2, [foreground])
        Image.fromarray(image).save(layout.images / f"{name}.jpg", quality=95)
        save_palette(layout.masks / f"{name}_mask.gif", mask, palette)
        layout.names.append(name)
        layout.images_hwc.append(image)
        layout.masks_raw.append(mask)
    return layout


def oxford_pets(root: Path, n: int = 3, seed: int = 2) -> Layout:
    """``images/<Breed>_<k>.jpg`` + ``annotations/trimaps/<Breed>_<k>.png`` (values 1 pet, 2 background, 3 border).

    Like the real download, the images folder also holds ``.mat`` files, and one ``.jpg`` is really a PNG.
    """
    rng = _rng(seed)
    layout = Layout(root / "images", root / "annotations" / "trimaps")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    for k in range(1, n + 1):
        name = f"Abyssinian_{k}"
        image = random_image(rng)
        trimap = np.full((HEIGHT, WIDTH), 2, dtype=np.uint8)
        trimap[4:20, 6:26] = 3
        trimap[5:19, 7:25] = 1
        trimap[rng.integers(0, HEIGHT), rng.integers(0, WIDTH)] = 3
        Image.fromarray(image).save(layout.images / f"{name}.jpg", format="PNG" if k == n else "JPEG", quality=95)
        Image.fromarray(trimap, mode="L").save(layout.masks / f"{name}.png")
        layout.names.append(name)
        layout.images_hwc.append(image)
        layout.masks_raw.append(trimap)
    (layout.images / "Abyssinian_1.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    return layout


def camvid(root: Path, n: int = 2, seed: int = 3) -> Layout:
    """``train/<seq>_<frame>.png`` + ``train_labels/<seq>_<frame>_L.png`` (RGB colours) + ``class_dict.csv``."""
    rng = _rng(seed)
    layout = Layout(root / "train", root / "train_labels", class_dict=root / "class_dict.csv")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    rows = ["name,r,g,b"] + [f"{name},{r},{g},{b}" for name, (r, g, b) in CAMVID_CLASSES]
    layout.class_dict.write_text("\n".join(rows) + "\n")
    colours = np.array([rgb for _, rgb in CAMVID_CLASSES], dtype=np.uint8)
    for k in range(n):
        name = f"0001TP_{6690 + 30 * k:06d}"
        image = random_image(rng)
        class_ids = rectangles(rng, 5, [0, 1, 2, 3])
        Image.fromarray(image).save(layout.images / f"{name}.png")
        Image.fromarray(colours[class_ids]).save(layout.masks / f"{name}_L.png")
        layout.names.append(name)
        layout.images_hwc.append(image)
        layout.masks_raw.append(class_ids)  # the class ids the colours encode
    return layout


def pascal_voc(root: Path, n: int = 2, extra_images: int = 2, seed: int = 4) -> Layout:
    """``JPEGImages/<year>_<id>.jpg`` + ``SegmentationClass/<year>_<id>.png`` (VOC palette, 255 borders).

    As in VOC, there are more JPEG images (``extra_images``) than segmentation masks.
    """
    rng = _rng(seed)
    layout = Layout(root / "JPEGImages", root / "SegmentationClass")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    palette = VOC_PALETTE + [[0, 0, 0]] * (255 - len(VOC_PALETTE)) + [[224, 224, 192]]
    for k in range(n + extra_images):
        name = f"2007_{32 + k:06d}"
        image = random_image(rng)
        Image.fromarray(image).save(layout.images / f"{name}.jpg", quality=95)
        if k >= n:
            continue
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        mask[4:20, 5:27] = 255  # the void border around the object
        mask[5:19, 6:26] = int(rng.integers(1, 21))
        mask[8:12, 10:14] = int(rng.integers(1, 21))
        save_palette(layout.masks / f"{name}.png", mask, palette)
        layout.names.append(name)
        layout.images_hwc.append(image)
        layout.masks_raw.append(mask)
    return layout


def natural_order_trap(root: Path, seed: int = 5) -> Layout:
    """``images/img1.png ... img12.png`` + ``masks/img1.png ... img12.png`` and a stray ``masks/img13.png``.

    Sorted as strings, img10 comes before img2; every mask holds its own number so a wrong pairing shows.
    """
    rng = _rng(seed)
    layout = Layout(root / "images", root / "masks")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    for k in [*range(1, 13), 13]:
        mask = np.full((HEIGHT, WIDTH), k, dtype=np.uint8)
        Image.fromarray(mask, mode="L").save(layout.masks / f"img{k}.png")
        if k == 13:
            continue
        image = random_image(rng)
        Image.fromarray(image).save(layout.images / f"img{k}.png")
        layout.names.append(f"img{k}")
        layout.images_hwc.append(image)
        layout.masks_raw.append(mask)
    return layout


def tiff_stacks(root: Path, n: int = 2, pages: int = 3, seed: int = 6) -> Layout:
    """``images/stack<k>.tif`` (multi-page LZW, gray) + ``masks/stack<k>.tif`` (multi-page LZW, uint16 ids).

    Only the first page belongs to the sample; later pages hold other values so using them would show.
    """
    rng = _rng(seed)
    layout = Layout(root / "images", root / "masks")
    layout.images.mkdir(parents=True)
    layout.masks.mkdir(parents=True)
    for k in range(n):
        name = f"stack{k}"
        stack = rng.integers(0, 256, (pages, HEIGHT, WIDTH), dtype=np.uint8)
        labels = np.stack(
            [rectangles(rng, 3, [1, 2, 3]).astype(np.uint16) * (300 if p == 0 else 7) for p in range(pages)]
        )
        tifffile.imwrite(layout.images / f"{name}.tif", stack, compression="lzw", photometric="minisblack")
        tifffile.imwrite(layout.masks / f"{name}.tif", labels, compression="lzw", photometric="minisblack")
        layout.names.append(name)
        layout.images_hwc.append(stack[0])
        layout.masks_raw.append(labels[0])
    return layout
