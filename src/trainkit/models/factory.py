"""The model factory: a model from a name and plain options, so a checkpoint can record how to rebuild it.

===================================  ==================================================================
name                                 builds
===================================  ==================================================================
``"unet"``                           trainkit's :class:`~trainkit.models.UNet` (``base_channels``,
                                     ``depth``, ``bilinear``)
``"torchvision:<builder>"``          ``torchvision.models.segmentation.<builder>``: ``fcn_resnet50``,
                                     ``fcn_resnet101``, ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
                                     ``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``
                                     (``weights``, ``weights_backbone``, ``aux_loss``)
``"smp:<Arch>"``                     ``segmentation_models_pytorch.create_model(<Arch>, ...)``: ``Unet``,
                                     ``UnetPlusPlus``, ``FPN``, ``DeepLabV3Plus``, ``Segformer``...
                                     with any encoder (``encoder_name``, timm ones as ``"tu-<name>"``)
a name given to :func:`register`     your own builder, called as ``fn(num_classes=, in_channels=, **options)``
===================================  ==================================================================

Nothing is downloaded by surprise: ``weights``, ``weights_backbone`` and ``encoder_weights`` default to
``None`` here (torchvision's own default for ``weights_backbone`` and smp's for ``encoder_weights`` download
ImageNet weights). Pretrained weights that are asked for are read from the standard caches (``TORCH_HOME``,
the Hugging Face cache); a missing file is a ``FileNotFoundError`` whose one line says how to get it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ModelSpec", "available_models", "create_model", "register"]

TORCHVISION_MODELS = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
_WEIGHT_OPTIONS = ("weights", "weights_backbone", "encoder_weights")  # dropped when rebuilding from a checkpoint
_PLAIN = (str, int, float, bool, type(None))

_registry: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model: a factory name, the number of classes, the input channels and plain options.

    The spec is plain data (``to_dict``), so it goes into a checkpoint and ``trainkit predict``, ``summary``
    and ``evaluate`` rebuild the model from it; see :class:`~trainkit.models.CheckpointSpec`.

    Args:
        name: ``"unet"``, ``"torchvision:<builder>"``, ``"smp:<Arch>"`` or a name given to :func:`register`.
        num_classes: output channels, one logit per class.
        in_channels: image channels (torchvision's models take 3).
        options: keyword arguments of the builder (strings, numbers, booleans, ``None``, lists and dicts
            of them), e.g. ``{"encoder_name": "resnet34", "encoder_depth": 3}`` for smp.

    Raises:
        ValueError: an unknown name, an option that is not plain data, or a class/channel count below 1.

    Example:
        >>> spec = ModelSpec("smp:Unet", num_classes=3, options={"encoder_name": "resnet18", "encoder_depth": 3})
        >>> spec.to_dict()["options"]
        {'encoder_name': 'resnet18', 'encoder_depth': 3}
        >>> ModelSpec.from_dict(spec.to_dict()) == spec
        True
    """

    name: str
    num_classes: int
    in_channels: int = 3
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        family, _ = _split(self.name)  # raises for an unknown family
        for what, value in (("num_classes", self.num_classes), ("in_channels", self.in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{what}` must be an int >= 1, got {value!r}")
        _check_plain(dict(self.options), f"the options of {self.name!r}")
        if family == "torchvision" and self.in_channels != 3:
            raise ValueError(
                f"{self.name} takes 3-channel images, got `in_channels={self.in_channels}`; convert the images "
                f"to RGB, or use an smp model, which adapts its first layer (e.g. `smp:Unet` with "
                f"`in_channels={self.in_channels}`)"
            )
        object.__setattr__(self, "options", dict(self.options))

    def build(self, *, pretrained: bool = True) -> nn.Module:
        """Build the model; ``pretrained=False`` leaves out the pretrained-weight options (the checkpoint has them).

        Example:
            >>> model = ModelSpec("unet", num_classes=2, options={"base_channels": 4, "depth": 2}).build()
            >>> type(model).__name__, model.depth
            ('UNet', 2)
        """
        options = dict(self.options)
        if not pretrained:
            options = {k: v for k, v in options.items() if k not in _WEIGHT_OPTIONS}
        family, name = _split(self.name)
        if family == "unet":
            return _build_unet(self.num_classes, self.in_channels, options)
        if family == "torchvision":
            return _build_torchvision(name, self.num_classes, options)
        if family == "smp":
            return _build_smp(name, self.num_classes, self.in_channels, options)
        return _build_registered(name, self.num_classes, self.in_channels, options)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what a checkpoint stores).

        Example:
            >>> ModelSpec("unet", num_classes=2).to_dict()
            {'name': 'unet', 'num_classes': 2, 'in_channels': 3, 'options': {}}
        """
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec that :meth:`to_dict` wrote.

        Example:
            >>> ModelSpec.from_dict({"name": "unet", "num_classes": 4}).in_channels
            3
        """
        missing = [k for k in ("name", "num_classes") if k not in data]
        if missing:
            raise ValueError(f"a model spec needs {' and '.join(map(repr, missing))}, got the keys {sorted(data)}")
        return cls(data["name"], data["num_classes"], data.get("in_channels", 3), dict(data.get("options") or {}))


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a model by its factory name; the same as ``ModelSpec(name, num_classes, in_channels, options).build()``.

    Args:
        name: ``"unet"``, ``"torchvision:<builder>"``, ``"smp:<Arch>"`` or a registered name.
        num_classes: output channels, one logit per class.
        in_channels: image channels.
        **options: the builder's keyword arguments. Pretrained weights are off unless asked for
            (``weights=``, ``weights_backbone=``, ``encoder_weights=``), and then read from the cache.

    Raises:
        ValueError: an unknown name or option, or options the builder refuses.
        ImportError: ``smp:`` models without segmentation_models_pytorch (``pip install trainkit[smp]``).
        FileNotFoundError: pretrained weights that are not in the cache (the message says how to get them).

    Example:
        >>> import torch
        >>> model = create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=3)
        >>> sorted(model(torch.randn(1, 3, 64, 64)))
        ['out']
        >>> create_model("smp:Unet", num_classes=2, encoder_name="resnet18", encoder_depth=3,
        ...              decoder_channels=[32, 16, 8])(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """
    return ModelSpec(name, num_classes, in_channels, options).build()


def register(name: str, build_fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Give your own model a factory name, so checkpoints of it rebuild it (``trainkit predict --import ...``).

    ``build_fn(num_classes=..., in_channels=..., **options)`` returns the model; a class works as it is
    when its ``__init__`` takes these keywords. Registering a name again replaces the builder. Returns
    ``build_fn``, so it also works as a decorator: ``@functools.partial(register, "my_net")``.

    Raises:
        ValueError: a name that is empty, holds ``:`` (kept for the built-in families) or is ``"unet"``.
        TypeError: ``build_fn`` is not callable or takes no ``num_classes`` keyword.

    Example:
        >>> class TinyNet(nn.Sequential):
        ...     def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8):
        ...         super().__init__(nn.Conv2d(in_channels, width, 3, padding=1), nn.Conv2d(width, num_classes, 1))
        >>> _ = register("tiny_net", TinyNet)
        >>> create_model("tiny_net", num_classes=5, width=4)[1].out_channels
        5
        >>> "tiny_net" in available_models()
        True
    """
    if not isinstance(name, str) or not name or ":" in name or name.lower() == "unet":
        raise ValueError(
            f"a registered model name must be a non-empty string without ':' and not 'unet' (built in), got "
            f"{name!r}; e.g. `trainkit.models.register('my_net', MyNet)`"
        )
    if not callable(build_fn):
        raise TypeError(f"`build_fn` must be callable (a class or function returning the model), got {build_fn!r}")
    params = _parameters(build_fn)  # None: **kwargs or no signature, trusted
    if params is not None and "num_classes" not in params:
        raise TypeError(
            f"`build_fn` {getattr(build_fn, '__qualname__', build_fn)} takes no `num_classes` keyword; the "
            "factory calls `build_fn(num_classes=..., in_channels=..., **options)`: add it, or wrap the builder, "
            "e.g. `register(name, lambda num_classes, in_channels=3: MyNet(classes=num_classes))`"
        )
    _registry[name] = build_fn
    return build_fn


def available_models() -> list[str]:
    """Every name the factory builds: ``"unet"``, the torchvision ones, ``"smp:<Arch>"`` (when smp is installed)
    and the registered names.

    Example:
        >>> [n for n in available_models() if n.startswith("torchvision:")][:2]
        ['torchvision:fcn_resnet50', 'torchvision:fcn_resnet101']
    """
    names = ["unet", *(f"torchvision:{n}" for n in TORCHVISION_MODELS)]
    try:
        smp = importlib.import_module("segmentation_models_pytorch")
        names += [f"smp:{arch}" for arch in _smp_architectures(smp)]
    except ImportError:
        pass
    return names + sorted(_registry)


# -- the families --------------------------------------------------------------------------------


def _split(name: str) -> tuple[str, str]:
    """``(family, builder)``: ``("unet", "unet")``, ``("torchvision", fn)``, ``("smp", Arch)`` or ``("", name)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty string such as 'unet' or 'smp:Unet', got {name!r}")
    family, sep, rest = name.partition(":")
    if not sep:
        return ("unet", "unet") if name.lower() == "unet" else ("", name)  # a registered name: checked when built
    if family == "torchvision":
        if rest not in TORCHVISION_MODELS:
            raise ValueError(
                f"unknown torchvision segmentation model {rest!r}; choose one of {', '.join(TORCHVISION_MODELS)}"
            )
        return family, rest
    if family == "smp" and rest:
        return family, rest
    raise ValueError(f"unknown model family {family!r} in {name!r}: use 'torchvision:<builder>' or 'smp:<Arch>'")


def _build_unet(num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    from trainkit.models.unet import UNet

    allowed = {"base_channels", "depth", "bilinear"}
    _refuse_unknown("unet", options, allowed)
    return UNet(in_channels=in_channels, out_channels=num_classes, **options)


def _build_torchvision(name: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    from torchvision.models import segmentation

    from trainkit.models import _pretrained

    builder = getattr(segmentation, name)
    allowed = {"weights", "weights_backbone", "aux_loss"} if "lraspp" not in name else {"weights", "weights_backbone"}
    _refuse_unknown(f"torchvision:{name}", options, allowed)
    weights = _pretrained.torchvision_weights(builder, "weights", options.get("weights"))
    backbone = _pretrained.torchvision_weights(builder, "weights_backbone", options.get("weights_backbone"))
    kwargs: dict[str, Any] = {"weights": weights, "weights_backbone": backbone}
    if "aux_loss" in options:
        kwargs["aux_loss"] = options["aux_loss"]
    if weights is None:
        return builder(num_classes=num_classes, **kwargs)
    # Whole-model weights come with their own head (21 VOC classes): load them, then give the head num_classes.
    model = builder(**kwargs)
    categories = len(weights.meta["categories"])
    if num_classes != categories:
        _replace_heads(model, num_classes)
    return model


def _replace_heads(model: nn.Module, num_classes: int) -> None:
    """Swap the last 1x1 convolution of each head for one with ``num_classes`` outputs (fine-tuning)."""
    heads = [getattr(model, "classifier", None), getattr(model, "aux_classifier", None)]
    for head in heads:
        if head is None:
            continue
        for parent in [head, *head.modules()]:
            for key, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and _is_last_conv(parent, key):
                    setattr(parent, key, nn.Conv2d(child.in_channels, num_classes, 1))


def _is_last_conv(parent: nn.Module, key: str) -> bool:
    """The class-logit convolutions: the last layer of an FCN/DeepLab head, LRASPP's low/high classifiers."""
    names = [k for k, _ in parent.named_children()]
    return key in ("low_classifier", "high_classifier") or (isinstance(parent, nn.Sequential) and key == names[-1])


def _build_smp(arch: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    from trainkit.models import _pretrained

    try:
        smp = importlib.import_module("segmentation_models_pytorch")
    except ImportError as err:
        raise ImportError(
            f"`smp:{arch}` needs segmentation_models_pytorch: `pip install 'trainkit[smp]'` (or "
            "`pip install segmentation-models-pytorch`)"
        ) from err
    known = {a.lower(): a for a in _smp_architectures(smp)}
    if arch.lower() not in known:
        raise ValueError(f"unknown smp architecture {arch!r}; choose one of {', '.join(known.values())}")
    options = dict(options)
    encoder = options.pop("encoder_name", "resnet34")
    encoder_weights = options.pop("encoder_weights", None)
    for reserved, use in (("classes", "num_classes"), ("in_channels", "in_channels")):
        if reserved in options:
            raise ValueError(f"give smp's `{reserved}` as the spec's `{use}`, not as an option")
    if not encoder.startswith("tu-") and encoder not in smp.encoders.encoders:
        raise ValueError(
            f"unknown smp encoder {encoder!r}: choose one of smp's (e.g. resnet18, resnet34, efficientnet-b0, mit_b0; "
            "`segmentation_models_pytorch.encoders.get_encoder_names()` lists them) or a timm one as 'tu-<name>' "
            "(e.g. 'tu-convnext_tiny')"
        )
    with _pretrained.smp_encoder_weights(encoder, encoder_weights) as weights:
        try:
            return smp.create_model(
                known[arch.lower()],
                encoder_name=encoder,
                encoder_weights=weights,
                in_channels=in_channels,
                classes=num_classes,
                **options,
            )
        except (KeyError, TypeError, RuntimeError) as err:  # smp's and timm's words for an unknown name or option
            raise ValueError(f"smp:{arch} refused its options {options} (encoder {encoder!r}): {err}") from err


def _build_registered(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    if name not in _registry:
        raise ValueError(
            f"unknown model {name!r}: give 'unet', 'torchvision:<builder>' (e.g. "
            "'torchvision:deeplabv3_mobilenet_v3_large'), 'smp:<Arch>' (e.g. 'smp:Unet'), or register your own "
            f"with `trainkit.models.register({name!r}, build_fn)` first (registered: {sorted(_registry) or 'none'})"
        )
    build_fn = _registry[name]
    params = _parameters(build_fn)
    kwargs = {"num_classes": num_classes, **options}
    if params is None or "in_channels" in params:
        kwargs["in_channels"] = in_channels
    elif in_channels != 3:
        raise ValueError(f"the builder of {name!r} takes no `in_channels`, so it cannot build one for {in_channels}")
    model = build_fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the builder registered as {name!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _parameters(fn: Callable[..., Any]) -> set[str] | None:
    """The keyword names ``fn`` takes, ``None`` when it takes ``**kwargs`` or has no signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _smp_architectures(smp: Any) -> list[str]:
    return [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]


def _refuse_unknown(name: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(map(repr, unknown))}; it takes {sorted(allowed)}")


def _check_plain(value: Any, where: str) -> None:
    """Options are stored in checkpoints loaded with ``weights_only=True``: plain data only."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, where)
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for item in value.values():
            _check_plain(item, where)
        return
    raise ValueError(
        f"{where} must be plain data (str, int, float, bool, None, lists and dicts of them) so that a checkpoint "
        f"can record them, got {type(value).__name__} {value!r}; pass a name instead (e.g. "
        "`activation='sigmoid'`) or register a builder that takes one"
    )
