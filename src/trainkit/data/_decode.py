"""Reading image and mask files into tensors/arrays, with errors that name the file.

Images come back as uint8 ``[C, H, W]`` tensors with the requested channel count; masks as the raw values
stored in the file (palette indices, not colours), or as ``[H, W, 3]`` RGB when colours are wanted.

The decoder is chosen by the file's first bytes, not its extension (public datasets ship PNGs named
``.jpg``). ``torchvision.io`` decodes PNG, JPEG and WEBP images (the fast path; it expands PNG palettes to
colours correctly) and the masks it reads exactly: 8/16-bit gray PNGs and 8-bit palette PNGs without
transparency (its ``UNCHANGED`` mode returns their stored indices; it misreads 1/2/4-bit palettes and
transparent ones, and expands GIF palettes to RGB). Pillow decodes everything else; TIFF goes through
``tifffile`` when installed (LZW and friends need ``imagecodecs``), else Pillow.

Each file is read once (:func:`read_bytes`) and decoded from memory; a caller that already holds the bytes (to
hash them, or to ask :func:`lossy_format`) passes them as ``data=``. TIFF is the exception: it is decoded from
the file, because a multi-page stack can be gigabytes of which only the first page is wanted.

Images are turned the way a viewer shows them (``exif_orientation=True``): cameras and phones store the sensor's
pixels and record the turn in the EXIF orientation tag, and annotation tools draw masks on the turned image.
torchvision applies the tag to JPEG and PNG; WEBP files that carry EXIF go through Pillow
(``ImageOps.exif_transpose``), as do the formats torchvision does not decode. TIFF images are read as stored
(microscopy stacks, whose viewers disagree about the tag). Masks are always read as stored.

torchvision 0.29 deprecated its image decoders in favour of TorchCodec and warns on every call; that one
warning is filtered here, and a torchvision without the decoders makes Pillow decode everything.
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from trainkit.errors import DecodeError

try:
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision that dropped its decoders: Pillow decodes everything
    ImageReadMode = decode_image = None  # type: ignore[assignment,misc]

__all__ = [
    "IMAGE_EXTENSIONS",
    "TORCHVISION_DEPRECATION",
    "check_channels",
    "lossy_format",
    "orientation_tag",
    "pixel_format",
    "read_bytes",
    "read_image",
    "read_mask",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
"""File extensions (lower case) that are listed as images or masks; everything else in a folder is ignored."""

TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"
"""The start of the warning torchvision 0.29+ gives on every decode, filtered here (a ``warnings`` message regex)."""

warnings.filterwarnings("ignore", message=TORCHVISION_DEPRECATION, category=DeprecationWarning)

_TIFF_HINT = "install the TIFF codecs with `pip install trainkit[tiff]` (tifffile + imagecodecs)"
_READ_MODES = {1: "GRAY", 3: "RGB", 4: "RGB_ALPHA"}  # ImageReadMode names per channel count
_PILLOW_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_CHANNELS_OF_MODE = {"1": 1, "L": 1, "P": 3, "I": 1, "F": 1, "LA": 2, "PA": 4, "RGB": 3, "YCbCr": 3, "LAB": 3}
_CHANNELS_OF_MODE.update({"RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I;16": 1, "I;16B": 1, "I;16L": 1})
_CPP_LOCATION = re.compile(r"^.*\.cpp:\d+,\s*")


def _kind(head: bytes) -> str:
    """The container format from the first bytes of a file."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return "other"  # GIF, BMP and anything else Pillow can identify


def _webp_has_exif(head: bytes) -> bool:
    """Whether an extended WEBP (``VP8X`` chunk first) says it carries EXIF (flag bit 3), from its first bytes."""
    return head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x08)


def orientation_tag(data: np.ndarray) -> int:
    """The EXIF orientation tag of an image file's bytes: 1 (as stored) to 8; 1 when there is none.

    5 to 8 turn the image by 90 or 270 degrees, so a viewer shows it with width and height swapped; 2 to 4
    mirror it or turn it by 180 degrees.

    Example:
        >>> orientation_tag(np.frombuffer(b"\\x89PNG\\r\\n\\x1a\\n", np.uint8))  # no EXIF: as stored
        1
    """
    try:
        with Image.open(_in_memory(data)) as pil:
            value = pil.getexif().get(0x0112, 1)
    except Exception:  # not an image Pillow reads, or a corrupt EXIF block: as stored
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def lossy_format(data: np.ndarray) -> str | None:
    """The name of the file's format when its compression is lossy (``"JPEG"``), else ``None``.

    A lossy mask does not hold the values it was saved with: compression noise adds values near every edge
    (a 0/255 mask gains 1..254), so it needs a threshold to be a binary mask and cannot be a class-id mask.

    Example:
        >>> lossy_format(np.frombuffer(b"\\xff\\xd8\\xff\\xe0", np.uint8)), lossy_format(np.zeros(8, np.uint8))
        ('JPEG', None)
    """
    return "JPEG" if _kind(data[:12].tobytes()) == "jpeg" else None


def _decode_error(path: Path, err: BaseException) -> DecodeError:
    if isinstance(err, UnidentifiedImageError):  # its message names a BytesIO object, not the file
        reason = "not a format Pillow recognises"
    else:
        reason = _CPP_LOCATION.sub("", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    return DecodeError(
        f"{path}: cannot decode ({reason}); the file is truncated, corrupt or not an image: "
        "re-export it, or remove it from the folder"
    )


def _is_missing_codec(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, ImportError) or "imagecodecs" in text or "not available" in text


def _read_tiff(path: Path) -> np.ndarray:
    """First page of a (multi-page) TIFF as ``[H, W]`` or ``[H, W, C]``."""
    try:
        import tifffile
    except ImportError:
        has_tifffile = False
    else:
        has_tifffile = True
    codec_error: BaseException | None = None
    if has_tifffile:
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                array = page.asarray()
                axes = page.axes
        except Exception as err:
            if not _is_missing_codec(err):
                raise _decode_error(path, err) from err
            codec_error = err  # Pillow's libtiff may still have the codec
        else:
            if "S" in axes and axes.index("S") < axes.index("Y"):  # planar samples: [C, H, W] -> [H, W, C]
                array = np.moveaxis(array, axes.index("S"), -1)
            if array.ndim not in (2, 3):
                raise DecodeError(f"{path}: a TIFF page with axes {axes!r} is not a 2-D image; save it as [H, W, C]")
            return array
    try:
        with Image.open(path) as image:  # the first page
            return np.array(image)
    except Exception as err:
        if codec_error is not None or _is_missing_codec(err):
            raise DecodeError(
                f"{path}: this TIFF needs a codec that is not installed ({codec_error or err}); {_TIFF_HINT}"
            ) from err
        if not has_tifffile and isinstance(err, UnidentifiedImageError):
            raise DecodeError(
                f"{path}: Pillow cannot read this TIFF ({err}); it is corrupt, or compressed with a codec only "
                f"tifffile reads: {_TIFF_HINT}"
            ) from err
        raise _decode_error(path, err) from err


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    raise DecodeError(
        f"{path}: image samples are {array.dtype}; images must be 8- or 16-bit unsigned integers: "
        "convert the file (e.g. to 8-bit PNG)"
    )


def _convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a uint8 ``[C, H, W]`` image with C in 1..4 (gray, gray+alpha, RGB, RGBA) to ``channels``."""
    have = image.shape[0]
    if have == channels:
        return image
    if have <= 2:  # gray (+ alpha)
        gray = image[:1]
        if channels == 1:
            return gray.contiguous()
        rgb = gray.expand(3, -1, -1)
        return rgb.contiguous() if channels == 3 else torch.cat([rgb, _alpha(image)])
    rgb = image[:3]
    if channels == 3:
        return rgb.contiguous()
    if channels == 4:
        return torch.cat([rgb, _alpha(image)])
    # ITU-R 601-2 luma in fixed point, the weights Pillow uses for "L".
    r, g, b = rgb.to(torch.int32).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(torch.uint8).unsqueeze(0)


def _alpha(image: torch.Tensor) -> torch.Tensor:
    if image.shape[0] in (2, 4):
        return image[-1:]
    return torch.full_like(image[:1], 255)


def read_bytes(path: Path) -> np.ndarray:
    """The whole file as a writable uint8 array (``torch.from_numpy`` shares it without a copy).

    Raises:
        DecodeError: the file cannot be read (permissions, a broken link, an I/O error).

    Example:
        >>> data = read_bytes(Path("masks/a.png"))  # doctest: +SKIP
        >>> data[:4].tobytes()  # doctest: +SKIP
        b'\\x89PNG'
    """
    try:
        return np.fromfile(path, dtype=np.uint8)
    except PermissionError as err:
        raise DecodeError(
            f"{path}: cannot read the file (permission denied); make it readable by the user running trainkit "
            f"(e.g. `chmod a+r {path}`)"
        ) from err
    except OSError as err:
        fix = "fix or delete the link" if err.errno == errno.ELOOP else "check that it exists and is a file"
        raise DecodeError(f"{path}: cannot read the file ({err.strerror or err}); {fix}") from err


def _in_memory(data: np.ndarray) -> io.BytesIO:
    """A file object over bytes already read, for Pillow and tifffile (a copy: small next to the decode)."""
    return io.BytesIO(data.data)


def _png_values_decodable(data: np.ndarray) -> bool:
    """Whether torchvision's ``UNCHANGED`` mode returns this PNG's stored values (read from its chunk headers)."""
    head = data[:8192].tobytes()
    depth = color = -1
    pos = 8
    while pos + 18 <= len(head):
        length, chunk = int.from_bytes(head[pos : pos + 4], "big"), head[pos + 4 : pos + 8]
        if chunk == b"IHDR":
            depth, color = head[pos + 16], head[pos + 17]
        elif chunk == b"tRNS":
            return False
        elif chunk == b"IDAT":
            return (color == 0 and depth in (8, 16)) or (color == 3 and depth == 8)
        pos += 12 + length
    return False


def check_channels(channels: int) -> None:
    """Raise ``ValueError`` unless ``channels`` is a count :func:`read_image` produces."""
    if channels not in _READ_MODES:
        raise ValueError(f"`channels` must be 1 (gray), 3 (RGB) or 4 (RGBA), got {channels!r}")


def read_image(
    path: str | os.PathLike[str],
    channels: int = 3,
    *,
    data: np.ndarray | None = None,
    exif_orientation: bool = True,
) -> torch.Tensor:
    """Decode an image file into a uint8 ``[channels, H, W]`` tensor, turned the way a viewer shows it.

    The first frame/page of animations and stacks. JPEG, PNG and WEBP photos are turned by their EXIF
    orientation tag (phones store portrait photos as landscape pixels plus that tag), so the tensor lines up
    with masks drawn in annotation tools, which show the turned image; ``exif_orientation=False`` reads the
    stored pixels. Masks are not turned (:func:`read_mask`).

    Args:
        path: The image file (named in errors).
        channels: 1 (gray), 3 (RGB) or 4 (RGBA).
        data: The file's bytes from :func:`read_bytes`, when the caller already read them.
        exif_orientation: Apply the EXIF orientation tag (JPEG, PNG, WEBP), as image viewers do.

    Raises:
        DecodeError: the file is unreadable, truncated, corrupt, not an image, or needs a missing TIFF codec.

    Example:
        >>> exif = Image.Exif()
        >>> exif[0x0112] = 6  # orientation "turn 90 degrees clockwise", as a phone held upright writes it
        >>> photo = io.BytesIO()
        >>> Image.new("RGB", (40, 30)).save(photo, "JPEG", exif=exif)  # stored 40 wide, 30 high
        >>> data = np.frombuffer(photo.getvalue(), np.uint8).copy()
        >>> tuple(read_image("portrait.jpg", data=data).shape), tuple(read_image("portrait.jpg", data=data,
        ...                                                                       exif_orientation=False).shape)
        ((3, 40, 30), (3, 30, 40))
    """
    path = Path(path)
    data = read_bytes(path) if data is None else data
    head = data[:32].tobytes()
    kind = _kind(head)
    if kind in ("png", "jpeg", "webp") and decode_image is not None and not (exif_orientation and _webp_has_exif(head)):
        mode = "RGB" if kind == "jpeg" and channels == 4 else _READ_MODES[channels]  # JPEG has no RGBA mode
        try:
            image = decode_image(
                torch.from_numpy(data), mode=ImageReadMode[mode], apply_exif_orientation=exif_orientation
            )
        except RuntimeError as err:
            raise _decode_error(path, err) from err
        if image.dtype == torch.uint16:  # 16-bit PNG
            image = (image.to(torch.int32) >> 8).to(torch.uint8)  # torch has no uint16 shift
        return _convert_channels(image, channels)
    if kind == "tiff":
        array = _to_uint8(_read_tiff(path), path)
        chw = torch.from_numpy(array).unsqueeze(0) if array.ndim == 2 else torch.from_numpy(array).permute(2, 0, 1)
        if not 1 <= chw.shape[0] <= 4:
            raise DecodeError(f"{path}: {chw.shape[0]} channels per pixel; expected 1 to 4 (gray, RGB, RGBA)")
        return _convert_channels(chw, channels)
    try:
        with Image.open(_in_memory(data)) as opened:
            pil: Image.Image = opened
            if exif_orientation and kind in ("png", "jpeg", "webp"):
                pil = ImageOps.exif_transpose(pil)
            if pil.mode in ("I", "F") or pil.mode.startswith("I;16"):
                array = _to_uint8(np.array(pil), path)
                return _convert_channels(torch.from_numpy(array).unsqueeze(0), channels)
            array = np.array(pil.convert(_PILLOW_MODES[channels]))
    except DecodeError:
        raise
    except Exception as err:
        raise _decode_error(path, err) from err
    return torch.from_numpy(array).unsqueeze(0) if array.ndim == 2 else torch.from_numpy(array).permute(2, 0, 1)


def _read_with_pillow(path: Path, data: np.ndarray, rgb: bool) -> np.ndarray:
    try:
        with Image.open(_in_memory(data)) as opened:
            pil: Image.Image = opened  # converted below: a plain Image, no longer the file's ImageFile
            if rgb and pil.mode not in ("RGB", "RGBA"):
                pil = pil.convert("RGB")
            elif pil.mode in ("LA", "PA", "CMYK", "YCbCr"):
                pil = pil.convert("RGB") if pil.mode in ("CMYK", "YCbCr") else pil.getchannel(0)
            if pil.mode == "1":  # 1-bit masks hold bits: 0/1, whatever Pillow's array of them looks like
                return (np.asarray(pil) != 0).astype(np.uint8)
            return np.asarray(pil)
    except Exception as err:
        raise _decode_error(path, err) from err


def read_mask(path: Path, *, rgb: bool = False, data: np.ndarray | None = None) -> np.ndarray:
    """Read a mask's stored values: ``[H, W]`` (palette indices, gray levels, 16-bit ids) or ``[H, W, 3]``.

    Args:
        path: The mask file.
        rgb: Return ``[H, W, 3]`` uint8 colours (palette and gray masks are expanded) for ``color_map``.
            Otherwise an ``[H, W, 3+]`` colour mask comes back as ``[H, W, 3]`` unless its channels are equal
            (a gray mask saved as RGB), which gives ``[H, W]``.
        data: The file's bytes from :func:`read_bytes`, when the caller already read them.

    Returns:
        The values, possibly a read-only array (Pillow's buffer is not copied): callers derive new arrays.

    Raises:
        DecodeError: the file is unreadable, truncated, corrupt, not an image, or needs a missing TIFF codec.
    """
    data = read_bytes(path) if data is None else data
    kind = _kind(data[:12].tobytes())
    if kind == "tiff":
        array = _read_tiff(path)
    elif kind == "png" and not rgb and decode_image is not None and _png_values_decodable(data):
        try:
            array = decode_image(torch.from_numpy(data), mode=ImageReadMode.UNCHANGED)[0].numpy()
        except RuntimeError as err:
            raise _decode_error(path, err) from err
    else:
        array = _read_with_pillow(path, data, rgb)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    if rgb and array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3:
        array = array[:, :, :3]
        if not rgb and array.shape[2] == 3 and (array[:, :, :1] == array[:, :, 1:]).all():
            array = np.ascontiguousarray(array[:, :, 0])
    return array


def pixel_format(path: Path, *, data: np.ndarray | None = None) -> tuple[str, int | None]:
    """How a file stores its pixels, read from its header: a mode name (``"RGB"``, ``"L"``, ``"P"``...) and
    the channel count a decoder produces before conversion (palette counts as 3, or 4 with transparency).

    ``("unknown", None)`` when neither Pillow nor tifffile can read the header. ``data``: the file's bytes from
    :func:`read_bytes`, when the caller already read them.
    """
    source = path if data is None else _in_memory(data)
    try:
        with Image.open(source) as pil:
            mode = pil.mode
            if mode == "P" and "transparency" in pil.info:
                return "P+transparency", 4
            return mode, _CHANNELS_OF_MODE.get(mode)
    except Exception:
        pass
    try:
        import tifffile

        with tifffile.TiffFile(path if data is None else _in_memory(data)) as tif:
            page = cast("tifffile.TiffPage", tif.pages[0])  # the first page is always a TiffPage, never a TiffFrame
            return f"TIFF {page.dtype}", int(page.samplesperpixel)
    except Exception:
        return "unknown", None
