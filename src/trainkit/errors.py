"""The exceptions trainkit raises on purpose.

Every error a user can cause is one of these (or a standard ``ValueError``/``TypeError`` naming the
argument). Each subclasses the standard exception a caller would already catch, so
``except ValueError`` keeps working.

Hierarchy::

    TrainkitError
    ├── DataError (ValueError)            a dataset folder or file is not usable
    │   ├── PairingError                  images without masks or masks without images
    │   ├── DecodeError                   unreadable, truncated or unsupported file
    │   └── MaskValueError                mask values outside the declared classes / colours
    ├── CheckpointError (RuntimeError)    a checkpoint cannot be written, read or applied
    ├── ExportError (RuntimeError)        a model cannot be exported, or its export computes otherwise
    └── TrainingError (RuntimeError)      a training step failed for a known, fixable reason
        └── NonFiniteLossError            the loss became NaN or infinite

Example:
    >>> import trainkit
    >>> try:
    ...     raise trainkit.errors.PairingError("3 images have no mask: a.png, b.png, c.png")
    ... except ValueError as err:
    ...     print(type(err).__name__)
    PairingError
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DataError",
    "DecodeError",
    "ExportError",
    "MaskValueError",
    "NonFiniteLossError",
    "PairingError",
    "TrainingError",
    "TrainkitError",
]


class TrainkitError(Exception):
    """Base class of every exception trainkit raises on purpose.

    Example:
        >>> issubclass(PairingError, TrainkitError)
        True
    """


class DataError(TrainkitError, ValueError):
    """A dataset folder or file cannot be used as given; the message names the file.

    Example:
        >>> raise DataError("masks/a.png: size 32x32 differs from images/a.png: 64x64")
        Traceback (most recent call last):
        ...
        trainkit.errors.DataError: masks/a.png: size 32x32 differs from images/a.png: 64x64
    """


class PairingError(DataError):
    """Images without a mask, or masks without an image (first few named, with a count).

    Example:
        >>> raise PairingError("1 image has no mask: img3.png")
        Traceback (most recent call last):
        ...
        trainkit.errors.PairingError: 1 image has no mask: img3.png
    """


class DecodeError(DataError):
    """A file is unreadable, truncated, or needs a codec that is not installed.

    Example:
        >>> raise DecodeError("stack.tif: LZW TIFF needs `pip install trainkit[tiff]`")
        Traceback (most recent call last):
        ...
        trainkit.errors.DecodeError: stack.tif: LZW TIFF needs `pip install trainkit[tiff]`
    """


class MaskValueError(DataError):
    """A mask holds values outside ``num_classes``, ``value_map`` or ``color_map``.

    Example:
        >>> raise MaskValueError("m.png: values [3, 7] >= num_classes=3")
        Traceback (most recent call last):
        ...
        trainkit.errors.MaskValueError: m.png: values [3, 7] >= num_classes=3
    """


class CheckpointError(TrainkitError, RuntimeError):
    """A checkpoint cannot be written, read, or applied to the given model.

    Example:
        >>> raise CheckpointError("runs/x/last.pt is truncated: re-save it or pick another checkpoint")
        Traceback (most recent call last):
        ...
        trainkit.errors.CheckpointError: runs/x/last.pt is truncated: re-save it or pick another checkpoint
    """


class ExportError(TrainkitError, RuntimeError):
    """A model could not be exported, or its export does not compute what the PyTorch model computes.

    Example:
        >>> issubclass(ExportError, RuntimeError)
        True
    """


class TrainingError(TrainkitError, RuntimeError):
    """A training or evaluation step failed for a known reason; the message says the fix.

    Example:
        >>> raise TrainingError("targets are float32; CrossEntropyLoss needs int64 class ids: `target.long()`")
        Traceback (most recent call last):
        ...
        trainkit.errors.TrainingError: targets are float32; CrossEntropyLoss needs int64 class ids: `target.long()`
    """


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the message names the step and the batch.

    Example:
        >>> raise NonFiniteLossError("loss is nan at step 12 (epoch 0, batch 12)")
        Traceback (most recent call last):
        ...
        trainkit.errors.NonFiniteLossError: loss is nan at step 12 (epoch 0, batch 12)
    """
