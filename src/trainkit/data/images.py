"""``ImageDataset``: a folder of images without masks, for prediction.

A sample is ``(image, path)``: the image as :class:`~trainkit.data.SegmentationDataset` decodes it
(``tv_tensors.Image`` uint8 ``[C, H, W]``, turned by its EXIF orientation tag, gray/palette/RGBA files
converted to ``channels``) and the file's path as a string, so a batch from ``trainkit.data.collate`` is
``(images [B, C, H, W], [paths])``. The folder is listed by the same rules as the dataset's: image
extensions only, hidden files and ``__MACOSX`` skipped, natural order (``img2`` before ``img10``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision import tv_tensors

from trainkit.data._decode import check_channels, read_image
from trainkit.data._pairing import list_image_files
from trainkit.data._threads import one_thread

__all__ = ["ImageDataset"]


class ImageDataset(Dataset[tuple[Any, str]]):
    """The images of a folder, decoded like ``SegmentationDataset``'s, each with its path.

    Images of different sizes cannot be stacked into one batch: use ``batch_size=1`` for them, or a
    ``transform`` that resizes (the masks of such a prediction are usually wanted at each image's size).

    Args:
        folder: the folder of images.
        channels: 1 (gray), 3 (RGB) or 4 (RGBA).
        recursive: also list subfolders (natural order of the relative path).
        exif_orientation: turn JPEG/PNG/WEBP images by their EXIF orientation tag, as viewers show them.
        transform: applied to each image, e.g. a ``torchvision.transforms.v2`` resize.

    Raises:
        DataError: the folder does not exist, cannot be read or holds no images.
        ValueError: ``channels`` is not 1, 3 or 4.
        TypeError: ``transform`` is not callable.

    Example:
        >>> from PIL import Image
        >>> folder = getfixture("tmp_path")
        >>> for name in ("img10.png", "img2.png", ".hidden.png"):
        ...     Image.new("RGB", (6, 4)).save(folder / name)
        >>> ds = ImageDataset(folder)
        >>> image, path = ds[0]
        >>> len(ds), tuple(image.shape), image.dtype, Path(path).name
        (2, (3, 4, 6), torch.uint8, 'img2.png')
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        channels: int = 3,
        recursive: bool = False,
        exif_orientation: bool = True,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        check_channels(channels)
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be callable(image) -> image, got {transform!r}")
        self.folder = Path(folder)
        self.channels = channels
        self.exif_orientation = exif_orientation
        self.transform = transform
        self.files: list[Path] = list_image_files(self.folder, recursive=recursive, role="images")

    def __len__(self) -> int:
        """Number of images.

        Example:
            >>> from PIL import Image
            >>> folder = getfixture("tmp_path")
            >>> Image.new("RGB", (4, 4)).save(folder / "a.png"); Image.new("RGB", (4, 4)).save(folder / "b.jpg")
            >>> len(ImageDataset(folder))
            2
        """
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        """Decode image ``index``; return it (after ``transform``) with its path.

        Raises:
            DecodeError: an unreadable, truncated or corrupt file (named in the message).

        Example:
            >>> from PIL import Image
            >>> folder = getfixture("tmp_path")
            >>> Image.new("L", (5, 3)).save(folder / "gray.png")
            >>> image, path = ImageDataset(folder)[0]  # gray files become RGB
            >>> tuple(image.shape), Path(path).name
            ((3, 3, 5), 'gray.png')
        """
        path = self.files[index]  # IndexError when out of range, as for a list
        with one_thread():
            image = tv_tensors.Image(read_image(path, self.channels, exif_orientation=self.exif_orientation))
            return (self.transform(image) if self.transform is not None else image), str(path)

    def __repr__(self) -> str:
        return f"ImageDataset({str(self.folder)!r}, {len(self)} images, channels={self.channels})"
