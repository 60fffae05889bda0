"""What a checkpoint records so that it alone rebuilds and uses its model: the checkpoint spec.

Stored as plain data under ``checkpoint["extra"]["spec"]`` (``trainer.extra_state["spec"]``)::

    {"format": 1,                                        # this record's version (SPEC_FORMAT)
     "model": {"name": "smp:Unet", "num_classes": 4, "in_channels": 3,
               "options": {"encoder_name": "resnet34"}},  # a ModelSpec: the factory rebuilds it
     "preprocessing": {"size": [256, 256], "scale": 0.00392156862745098,   # 1/255: uint8 -> [0, 1]
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "exif_orientation": True},            # photos turned by their EXIF tag, as viewers show them
     "classes": {"names": ["background", "car"], "target": "semantic", "ignore_index": 255,
                 "color_map": [[0, 0, 0, 0], [255, 0, 0, 1]],         # [r, g, b, class id] rows, or None
                 "mask_suffix": "_mask"}}                             # mask stem = image stem + it

``trainkit train`` writes it; from Python it is one line,
``trainer.extra_state["spec"] = CheckpointSpec(spec, Preprocessing(size=256)).to_dict()``.
Checkpoints written by ``trainkit train`` before the spec existed (``extra["recipe"]``) are read as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from trainkit.errors import CheckpointError
from trainkit.models.factory import ModelSpec

__all__ = ["SPEC_FORMAT", "SPEC_KEY", "CheckpointSpec", "Preprocessing", "from_checkpoint"]

SPEC_FORMAT = 1
SPEC_KEY = "spec"  # checkpoint["extra"][SPEC_KEY]
# ImageNet statistics, as trainkit.data.transforms.IMAGENET_MEAN/STD (models does not import data; a test checks).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for the model: resized to ``size``, times ``scale``, minus ``mean``, over ``std``.

    Args:
        size: ``(height, width)`` the model is used at (one int for a square).
        scale: factor from stored pixel values to the range ``mean``/``std`` refer to (1/255 for uint8 images).
        mean: per-channel mean, after ``scale``.
        std: per-channel standard deviation, after ``scale``, each > 0.
        exif_orientation: the training images were turned by their EXIF orientation tag, as viewers show photos
            (``False``: read as stored, ``trainkit train --no-exif-orientation``); ``trainkit predict`` and
            ``evaluate`` read images the same way.

    Example:
        >>> prep = Preprocessing(size=64)
        >>> prep.size, round(prep.scale * 255, 6), prep.mean
        ((64, 64), 1.0, (0.485, 0.456, 0.406))
    """

    size: tuple[int, int] | int
    scale: float = 1 / 255
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD
    exif_orientation: bool = True

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ValueError(f"`size` must be an int or (height, width) of ints >= 1, got {self.size!r}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"`mean` and `std` need one value per channel, got {self.mean!r} and {self.std!r}")
        if any(s <= 0 for s in self.std) or not self.scale > 0:
            raise ValueError(f"`std` values and `scale` must be > 0, got std={self.std!r}, scale={self.scale!r}")
        if not isinstance(self.exif_orientation, bool):
            raise ValueError(f"`exif_orientation` must be True or False, got {self.exif_orientation!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint.

        Example:
            >>> Preprocessing((32, 48), mean=(0.5,), std=(0.5,)).to_dict()["size"]
            [32, 48]
        """
        return {
            "size": list(self.size),  # type: ignore[arg-type]
            "scale": float(self.scale),
            "mean": list(self.mean),
            "std": list(self.std),
            "exif_orientation": bool(self.exif_orientation),
        }


@dataclass(frozen=True)
class CheckpointSpec:
    """Everything a checkpoint needs to be used alone: the model spec, the preprocessing, the classes.

    Args:
        model: how to rebuild the model (:class:`~trainkit.models.ModelSpec`).
        preprocessing: how images are prepared (:class:`Preprocessing`).
        class_names: one name per class id (may be empty).
        color_map: ``{(r, g, b): class_id}`` of colour-coded masks (the map itself, not a path), or ``None``.
        target: ``"semantic"`` or ``"binary"``: how the training masks were read.
        ignore_index: the label that means "not scored".
        mask_suffix: how the training masks were named: image stem + ``mask_suffix`` (``trainkit predict
            --encoding training`` names its masks so).

    Example:
        >>> spec = CheckpointSpec(ModelSpec("unet", num_classes=2), Preprocessing(32), class_names=["bg", "cell"],
        ...                       color_map={(0, 0, 0): 0, (255, 255, 255): 1})
        >>> record = spec.to_dict()
        >>> record["format"], record["classes"]["color_map"]
        (1, [[0, 0, 0, 0], [255, 255, 255, 1]])
        >>> CheckpointSpec.from_dict(record) == spec
        True
    """

    model: ModelSpec
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=list)
    color_map: dict[tuple[int, int, int], int] | None = None
    target: str = "semantic"
    ignore_index: int = 255
    mask_suffix: str = ""

    def __post_init__(self) -> None:
        if self.target not in ("semantic", "binary"):
            raise ValueError(f"`target` must be 'semantic' or 'binary', got {self.target!r}")
        if not isinstance(self.mask_suffix, str) or any(sep in self.mask_suffix for sep in ("/", "\\", "\0")):
            raise ValueError(
                f"`mask_suffix` must be a file-name part such as '_mask' (no path separator), got {self.mask_suffix!r}"
            )
        if self.class_names and len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for a model of {self.model.num_classes} classes; give one "
                "name per class id (or none)"
            )

    @property
    def num_classes(self) -> int:
        """The model's number of classes.

        Example:
            >>> CheckpointSpec(ModelSpec("unet", num_classes=3), Preprocessing(32)).num_classes
            3
        """
        return self.model.num_classes

    def colors(self) -> list[tuple[int, int, int]]:
        """One colour per id 0..255 for mask PNGs: the colour map's colour of each class, else trainkit's palette.

        Example:
            >>> spec = CheckpointSpec(ModelSpec("unet", num_classes=2), Preprocessing(32),
            ...                       color_map={(0, 0, 0): 0, (255, 255, 0): 1})
            >>> spec.colors()[:3]
            [(0, 0, 0), (255, 255, 0), (0, 128, 0)]
        """
        from trainkit.utils.plots import palette

        colours = palette(256)
        seen: set[int] = set()
        for rgb, class_id in (self.color_map or {}).items():
            if 0 <= class_id < 256 and class_id not in seen:  # the first colour of a class is the one written
                colours[class_id] = tuple(rgb)  # type: ignore[assignment]
                seen.add(class_id)
        return colours

    def to_dict(self) -> dict[str, Any]:
        """The record stored under ``checkpoint["extra"]["spec"]`` (plain data, loads with ``weights_only``).

        Example:
            >>> sorted(CheckpointSpec(ModelSpec("unet", num_classes=2), Preprocessing(32)).to_dict())
            ['classes', 'format', 'model', 'preprocessing']
        """
        color_map = [[*map(int, rgb), int(i)] for rgb, i in self.color_map.items()] if self.color_map else None
        return {
            "format": SPEC_FORMAT,
            "model": self.model.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "classes": {
                "names": list(self.class_names),
                "target": self.target,
                "ignore_index": self.ignore_index,
                "color_map": color_map,
                "mask_suffix": self.mask_suffix,
            },
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CheckpointSpec:
        """Read a record written by :meth:`to_dict`.

        Raises:
            CheckpointError: a record of a newer format (upgrade trainkit) or a damaged one.

        Example:
            >>> CheckpointSpec.from_dict({"format": 9})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            trainkit.errors.CheckpointError: ...spec has format 9 and this trainkit reads formats up to 1: upgrade ...
        """
        fmt = record.get("format")
        if not isinstance(fmt, int) or fmt > SPEC_FORMAT:
            raise CheckpointError(
                f"the checkpoint's spec has format {fmt} and this trainkit reads formats up to {SPEC_FORMAT}: "
                "upgrade trainkit with `pip install -U trainkit`"
            )
        try:
            prep, classes = record["preprocessing"], record.get("classes") or {}
            rows = classes.get("color_map") or None
            return cls(
                model=ModelSpec.from_dict(record["model"]),
                preprocessing=_preprocessing(prep),
                class_names=list(classes.get("names") or []),
                color_map={(r, g, b): i for r, g, b, i in rows} if rows else None,
                target=classes.get("target", "semantic"),
                ignore_index=int(classes.get("ignore_index", 255)),
                mask_suffix=str(classes.get("mask_suffix", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"the checkpoint's spec is damaged ({type(err).__name__}: {err}): {record}") from err

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> CheckpointSpec:
        """The spec of a loaded checkpoint; one written by ``trainkit train`` before specs existed is converted.

        Raises:
            CheckpointError: the checkpoint records no spec (a model you saved from Python: record one).

        Example:
            >>> record = CheckpointSpec(ModelSpec("unet", num_classes=2), Preprocessing(32)).to_dict()
            >>> CheckpointSpec.from_checkpoint({"model": {}, "extra": {"spec": record}}).preprocessing.size
            (32, 32)
        """
        if not isinstance(checkpoint, Mapping):
            raise TypeError(
                f"`checkpoint` must be a loaded checkpoint dict, got {type(checkpoint).__name__}; read the file "
                "first: `trainkit.load_checkpoint(path)`"
            )
        extra = checkpoint.get("extra") or {}
        if SPEC_KEY in extra:
            spec = cls.from_dict(extra[SPEC_KEY])
            suffix = _recipe_mask_suffix(extra.get("recipe"))
            if "mask_suffix" not in (extra[SPEC_KEY].get("classes") or {}) and suffix:  # written before the field
                spec = replace(spec, mask_suffix=suffix)
            return spec
        if extra.get("recipe"):
            return _from_recipe(extra["recipe"])
        raise CheckpointError(
            "the checkpoint records no model spec, so its model cannot be rebuilt from it alone. Record one when "
            "training: `trainer.extra_state['spec'] = trainkit.models.CheckpointSpec(trainkit.models.ModelSpec("
            "name, num_classes=...), trainkit.models.Preprocessing(size=...)).to_dict()` (register your own model "
            "first with `trainkit.models.register(name, build_fn)`); or load the weights into your model with "
            "`trainkit.load_checkpoint(path, model)`"
        )


def from_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[nn.Module, CheckpointSpec]:
    """Rebuild a checkpoint's model from its spec and load its weights; return the model (in eval mode) and spec.

    Pretrained-weight options are left out when rebuilding (the checkpoint holds every weight), so this
    never reads a weights cache nor downloads.

    Args:
        checkpoint: the dict ``trainkit.load_checkpoint(path)`` returns.

    Raises:
        CheckpointError: no spec in the checkpoint, or weights that do not fit the rebuilt model.

    Example:
        >>> model = ModelSpec("unet", num_classes=2, options={"base_channels": 4, "depth": 2}).build()
        >>> spec = CheckpointSpec(ModelSpec("unet", num_classes=2, options={"base_channels": 4, "depth": 2}),
        ...                       Preprocessing(32))
        >>> rebuilt, _ = from_checkpoint({"model": model.state_dict(), "extra": {"spec": spec.to_dict()}})
        >>> type(rebuilt).__name__, rebuilt.training
        ('UNet', False)
    """
    spec = CheckpointSpec.from_checkpoint(checkpoint)
    model = spec.model.build(pretrained=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"the checkpoint's weights do not fit the model its spec builds ({spec.model.name}): {err}. Was the "
            "registered builder changed since? Register the builder the checkpoint was trained with"
        ) from err
    return model.eval(), spec


def _from_recipe(recipe: Mapping[str, Any]) -> CheckpointSpec:
    """The spec of a checkpoint that ``trainkit train``/``demo`` wrote before specs (``extra["recipe"]``)."""
    model, data = dict(recipe["model"]), recipe["data"]
    if model.pop("name", None) != "UNet":
        raise CheckpointError(f"the checkpoint's recipe names a model trainkit does not know: {recipe['model']}")
    names: Sequence[str] = data.get("class_names") or []
    return CheckpointSpec(
        model=ModelSpec("unet", int(model.pop("out_channels")), int(model.pop("in_channels", 3)), model),
        preprocessing=_preprocessing(data),
        class_names=list(names),
        target=data.get("target", "semantic"),
        mask_suffix=_recipe_mask_suffix(recipe),
    )


def _recipe_mask_suffix(recipe: Any) -> str:
    """The ``--mask-suffix`` that ``trainkit train`` recorded among its arguments (``extra["recipe"]["train"]``)."""
    train = recipe.get("train") if isinstance(recipe, Mapping) else None
    suffix = train.get("mask_suffix") if isinstance(train, Mapping) else None
    return suffix if isinstance(suffix, str) and not any(sep in suffix for sep in ("/", "\\", "\0")) else ""


def _preprocessing(data: Mapping[str, Any]) -> Preprocessing:
    """A :class:`Preprocessing` from its stored dict (``size``, ``mean``, ``std`` and, when stored, ``scale`` and
    ``exif_orientation``: records written before them mean 1/255 and turned photos)."""
    size = data["size"]
    return Preprocessing(
        (int(size[0]), int(size[1])),
        float(data.get("scale", 1 / 255)),
        tuple(data["mean"]),
        tuple(data["std"]),
        data.get("exif_orientation", True),  # a damaged value is refused by Preprocessing, not read as truthy
    )
