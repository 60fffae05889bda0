"""The types of the ``trainkit`` command's options: each parses one value or says what is allowed.

argparse turns the ``ArgumentTypeError`` into one line naming the option, e.g.
``trainkit train: error: argument --lr: expected a finite number > 0 (e.g. 0.001), got 'inf'``, exit status 2.
Every numeric option has one of these types, so no NaN, infinity or out-of-range number reaches training.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "COUNT_LIMIT",
    "SEED_LIMIT",
    "SHAPES_MIN_SIZE",
    "amp_mode",
    "channels",
    "class_names",
    "finite_float",
    "fraction",
    "integer",
    "model_option",
    "non_negative_int",
    "num_classes",
    "positive_float",
    "positive_int",
    "seed",
    "shapes_size",
    "size",
]

COUNT_LIMIT = 2**31  # counts (epochs, batch size, workers...) stay below it, so torch and itertools take them
SEED_LIMIT = 2**32  # seeds are drawn and stored as 32-bit numbers (`trainkit.engine.seeding`)
SHAPES_MIN_SIZE = 16  # `make_shapes` needs 16 pixels a side for its shapes to be recognisable
IGNORE_INDEX = 255  # the recipe's "don't care" label, so class ids stop below it


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """A parser of integers in ``[low, high]`` (``high=None``: below ``2**31``, a count no option needs to exceed).

    Example:
        >>> integer(2, 255)("4")
        4
        >>> integer(2, 255)("1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer from 2 to 255, got '1'
        >>> integer(1)("99999999999")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a positive integer below 2**31, got '99999999999'
    """
    if high is not None:
        allowed = f"an integer from {low} to {high}"
    else:
        high = COUNT_LIMIT - 1
        allowed = ("a positive integer" if low == 1 else f"an integer >= {low}") + " below 2**31"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    parse.__name__ = allowed  # argparse's fallback message names the type by it
    return parse


positive_int = integer(1)
"""``epochs``, ``batch_size``, ``n``, ``depth``...: an integer >= 1."""

num_classes = integer(2, IGNORE_INDEX)
"""Classes including background: at least 2, at most 255 (the label 255 means "ignore")."""

seed = integer(0, SEED_LIMIT - 1)
"""A seed in ``[0, 2**32)``."""

non_negative_int = integer(0)
"""``--workers``: an integer >= 0 (0 loads the data in the main process)."""

shapes_size = integer(SHAPES_MIN_SIZE)
"""The side of the synthetic shapes images: at least 16 pixels."""


def channels(text: str) -> int:
    """The channel count images are read with: 1 (gray), 3 (RGB) or 4 (RGBA).

    Example:
        >>> channels("3")
        3
    """
    if text.strip() not in ("1", "3", "4"):
        raise argparse.ArgumentTypeError(f"expected 1 (gray), 3 (RGB) or 4 (RGBA), got {text!r}")
    return int(text)


def _finite(text: str, allowed: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r} (not finite)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0, such as a learning rate.

    Example:
        >>> positive_float("3e-4")
        0.0003
        >>> positive_float("inf")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a finite number > 0 (e.g. 0.001), got 'inf' (not finite)
    """
    allowed = "a finite number > 0 (e.g. 0.001)"
    value = _finite(text, allowed)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A fraction in ``[0, 1)``, such as the share of the data held out for validation.

    Example:
        >>> fraction("0.2")
        0.2
        >>> fraction("1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a fraction from 0 (inclusive) to 1 (exclusive), e.g. 0.2, got '1'
    """
    allowed = "a fraction from 0 (inclusive) to 1 (exclusive), e.g. 0.2"
    value = _finite(text, allowed)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
    return value


def finite_float(low: float, *, inclusive: bool, example: str) -> Callable[[str], float]:
    """A parser of finite numbers above ``low`` (``>= low`` when ``inclusive``), ``example`` shown in its error.

    Example:
        >>> finite_float(1, inclusive=False, example="4.0")("4")
        4.0
        >>> finite_float(1, inclusive=False, example="4.0")("1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a finite number > 1 (e.g. 4.0), got '1'
    """
    allowed = f"a finite number {'>=' if inclusive else '>'} {low:g} (e.g. {example})"

    def parse(text: str) -> float:
        value = _finite(text, allowed)
        if not (value >= low if inclusive else value > low):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    parse.__name__ = allowed
    return parse


def class_names(text: str) -> list[str]:
    """Comma-separated class names, one per class id from 0: ``background,car,person``.

    Example:
        >>> class_names("background, car,person")
        ['background', 'car', 'person']
        >>> class_names("a,,b")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected comma-separated names, ... got an empty name in 'a,,b'
    """
    names = [name.strip() for name in text.split(",")]
    allowed = "comma-separated names, one per class id from 0 (e.g. background,car)"
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected {allowed}, got an empty name in {text!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"expected {allowed}, each once; {', '.join(repeated)} repeated in {text!r}")
    return names


def size(text: str) -> tuple[int, int]:
    """A size ``N`` (square) or ``HxW`` (also ``H,W``) in pixels, each at least 1.

    Example:
        >>> size("256"), size("240x320")
        ((256, 256), (240, 320))
    """
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive numbers, got {text!r}")
    return parts[0], parts[1]


def model_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE``, a builder option: the value read as a Python literal (number, bool, None, list), else a string.

    Example:
        >>> model_option("encoder_depth=3"), model_option("decoder_channels=[32, 16, 8]")
        (('encoder_depth', 3), ('decoder_channels', [32, 16, 8]))
        >>> model_option("activation=sigmoid")
        ('activation', 'sigmoid')
        >>> model_option("3")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected KEY=VALUE, e.g. encoder_depth=3, got '3'
    """
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. encoder_depth=3, got {text!r}")
    try:
        parsed: object = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    return key.strip(), parsed


def amp_mode(text: str) -> str | bool:
    """A mixed-precision mode: ``auto``, ``fp16``, ``bf16``, or ``off`` (``False``).

    Example:
        >>> amp_mode("bf16"), amp_mode("off")
        ('bf16', False)
    """
    if text in ("off", "false", "no", "fp32"):
        return False
    if text not in ("auto", "fp16", "bf16"):
        raise argparse.ArgumentTypeError(f"--amp must be auto, fp16, bf16 or off, got {text!r}")
    return text
