"""What ``trainkit predict`` writes: masks in an encoding, the label map beside them, probability maps, overlays.

=============  =================================================  ==========================================
``--encoding``  mask file                                          pixels
=============  =================================================  ==========================================
``ids``         ``<stem>.png``, palette PNG                        class ids; the palette holds the run's colours
``training``    ``<stem><mask_suffix>.png``, as the training       binary runs: 0/255 gray; colour-coded runs:
                masks were named                                   RGB in the colour map's colours; else ids
=============  =================================================  ==========================================

``labels.txt`` beside the masks names each class and its colour in the masks (a palette holds colours, not
names), one class a line in id order, in CVAT's ``labelmap.txt`` format, which ``--color-map`` and
:func:`trainkit.data.read_class_dict` read back. Every file is written to a hidden temporary file in its
folder and renamed into place, so an interrupted prediction leaves whole files or none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from trainkit.models import CheckpointSpec

__all__ = [
    "ENCODINGS",
    "LABELS",
    "OVERLAYS",
    "PROBABILITIES",
    "PROBABILITY_FORMATS",
    "MaskFormat",
    "open_probabilities",
    "overlay",
    "require_tifffile",
    "write_atomically",
]

ENCODINGS = ("ids", "training")
PROBABILITY_FORMATS = ("npy", "tif")
LABELS = "labels.txt"  # in --out, beside the masks
OVERLAYS = "overlays"  # the subfolder of --out the overlays go to, `<stem>.png`
PROBABILITIES = "probabilities"  # the subfolder of --out the probability maps go to, `<stem>.npy` / `.tif`
_LABELMAP_HEADER = "# label:color_rgb:parts:actions"  # CVAT's labelmap.txt


@dataclass(frozen=True)
class MaskFormat:
    """How class ids become a mask file: its name, its pixels, and the label map that describes them.

    Example:
        >>> from trainkit.models import CheckpointSpec, ModelSpec, Preprocessing
        >>> spec = CheckpointSpec(ModelSpec("unet", 2), Preprocessing(32), target="binary", mask_suffix="_mask")
        >>> fmt = MaskFormat.of(spec, "training")
        >>> fmt.file_name("cat"), fmt.image(np.array([[0, 1]], dtype=np.uint8)).getpixel((1, 0))
        ('cat_mask.png', 255)
        >>> print(fmt.label_map(), end="")
        # label:color_rgb:parts:actions
        background:0,0,0::
        foreground:255,255,255::
    """

    suffix: str
    mode: str  # "P" (ids with a palette), "L" (0/255) or "RGB" (the colour map's colours)
    colours: list[tuple[int, int, int]]  # the colour of each id 0..255 in the written file
    names: list[str]  # one per class

    @classmethod
    def of(cls, spec: CheckpointSpec, encoding: str) -> MaskFormat:
        """The format of ``encoding`` (``"ids"`` or ``"training"``) for the checkpoint's classes."""
        if encoding not in ENCODINGS:
            raise ValueError(f"`encoding` must be one of {ENCODINGS}, got {encoding!r}")
        classes = max(2, spec.num_classes)  # one binary logit: background and foreground
        names = list(spec.class_names) if len(spec.class_names) == classes else []
        if not names:
            names = ["background", "foreground"] if spec.target == "binary" else [f"class_{i}" for i in range(classes)]
        colours = spec.colors()
        if encoding == "ids":
            return cls("", "P", colours, names)
        if spec.target == "binary":
            return cls(spec.mask_suffix, "L", [(0, 0, 0)] + [(255, 255, 255)] * 255, names)
        return cls(spec.mask_suffix, "RGB" if spec.color_map else "P", colours, names)

    def file_name(self, stem: str) -> str:
        """The mask's file name for an image stem."""
        return f"{stem}{self.suffix}.png"

    def image(self, ids: np.ndarray) -> Any:
        """The PIL image of ``[H, W]`` uint8 class ids in this format."""
        from PIL import Image

        if self.mode == "L":
            return Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8), mode="L")
        if self.mode == "RGB":
            return Image.fromarray(np.asarray(self.colours, dtype=np.uint8)[ids], mode="RGB")
        image = Image.fromarray(ids, mode="L")
        image.putpalette(np.asarray(self.colours, dtype=np.uint8).reshape(-1).tolist())  # "L" becomes "P"
        return image

    def label_map(self) -> str:
        """CVAT's ``labelmap.txt``: one ``name:r,g,b::`` line a class, in id order (``:`` in a name becomes ``_``)."""
        lines = [_LABELMAP_HEADER]
        for class_id, name in enumerate(self.names):
            r, g, b = self.colours[class_id]
            lines.append(f"{name.replace(':', '_')}:{r},{g},{b}::")
        return "\n".join(lines) + "\n"


def write_atomically(target: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary path)`` and rename it to ``target``; on any error the temporary file is removed.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> write_atomically(target, lambda tmp: tmp.write_text("whole")).read_text()
        'whole'
    """
    tmp = _temporary(target)
    try:
        # No fsync: the rename already keeps a crash or kill from leaving a partial file under the real name,
        # and a sync per mask would slow a folder of thousands for the sake of a power cut.
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


@contextlib.contextmanager
def open_probabilities(target: Path, shape: tuple[int, int, int], fmt: str) -> Iterator[np.ndarray]:
    """A float32 ``[K, H, W]`` array mapped onto a temporary ``.npy`` or ``.tif`` file, renamed to ``target`` after.

    The caller fills it a band of rows at a time: the map is never in memory whole. On an error the temporary
    file is removed and ``target`` is left as it was.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.npy"
        >>> with open_probabilities(target, (2, 3, 4), "npy") as array:
        ...     array[:] = 0.5
        >>> np.load(target).shape, float(np.load(target).max())
        ((2, 3, 4), 0.5)
    """
    tmp = _temporary(target)
    try:
        if fmt == "tif":
            tifffile = require_tifffile()
            array = tifffile.memmap(tmp, shape=shape, dtype=np.float32, photometric="minisblack")  # K pages
        else:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        yield array
        array.flush()
        del array
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def require_tifffile() -> Any:
    """``tifffile``, or an ImportError that says how to install it (the ``tiff`` extra)."""
    try:
        import tifffile
    except ImportError as err:
        raise ImportError(
            "--probabilities tif needs tifffile: `pip install 'trainkit[tiff]'`, or write .npy files with "
            "--probabilities npy"
        ) from err
    return tifffile


def overlay(image: torch.Tensor, ids: np.ndarray, colours: list[tuple[int, int, int]]) -> Any:
    """The image (``[C, H, W]`` uint8) with each non-background pixel half covered by its class colour (RGB PIL).

    In uint8 and uint16 arrays: a 12-megapixel photo costs a few times its own size, not floats per channel.

    Example:
        >>> import torch
        >>> image = torch.full((3, 1, 2), 100, dtype=torch.uint8)
        >>> overlay(image, np.array([[0, 1]], dtype=np.uint8), [(0, 0, 0), (255, 0, 0)]).getpixel((1, 0))
        (177, 50, 50)
    """
    from PIL import Image

    pixels = image.permute(1, 2, 0).numpy()
    rgb = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)  # gray, RGBA
    painted = np.asarray(colours, dtype=np.uint8)[ids]
    half = ((rgb.astype(np.uint16) + painted) // 2).astype(np.uint8)  # the mean of image and colour, rounded down
    return Image.fromarray(np.where((ids > 0)[..., None], half, rgb))


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")  # hidden: never listed as an image
