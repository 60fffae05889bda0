"""Fine-tuning helpers: find a model's encoder, give it its own learning rate, freeze and unfreeze it.

The encoder is the pretrained part: smp's ``.encoder``, torchvision's ``.backbone``, trainkit UNet's
``.encoder``. The rest (decoder, heads) starts from random weights and usually trains at a higher rate.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ENCODER_ATTRIBUTES", "find_encoder", "param_groups", "set_encoder_trainable"]

ENCODER_ATTRIBUTES = ("encoder", "backbone")
"""The attribute names :func:`find_encoder` looks for, in this order."""


def find_encoder(model: nn.Module) -> nn.Module:
    """The model's encoder: its ``.encoder`` (smp, trainkit's UNet) or ``.backbone`` (torchvision) submodule.

    DDP and ``torch.compile`` wrappers are looked through.

    Raises:
        ValueError: no such submodule; pass the encoder yourself (``encoder=model.features``).

    Example:
        >>> from trainkit.models import create_model
        >>> model = create_model("torchvision:lraspp_mobilenet_v3_large", num_classes=2)
        >>> type(find_encoder(model)).__name__
        'IntermediateLayerGetter'
    """
    inner = model
    for wrapper in ("module", "_orig_mod"):  # DistributedDataParallel, torch.compile
        while isinstance(getattr(inner, wrapper, None), nn.Module) and not _encoder_attr(inner):
            inner = getattr(inner, wrapper)
    name = _encoder_attr(inner)
    if name is None:
        raise ValueError(
            f"found no encoder in {type(model).__name__}: it has no `.encoder` (smp, trainkit's UNet) or "
            "`.backbone` (torchvision) submodule; pass the pretrained part yourself, e.g. "
            "`encoder=model.features`"
        )
    return getattr(inner, name)


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    encoder_lr: float,
    encoder: nn.Module | None = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: the decoder and heads at ``lr``, the encoder's parameters at ``encoder_lr``.

    Every parameter is in exactly one group, frozen ones included (so an encoder unfrozen later trains).
    Each group carries a ``"name"`` (``"decoder"``, ``"encoder"``) that optimizers keep and ignore; the decoder's
    comes first, so the learning rate a ``Trainer`` logs (``"lr"``, the first group's) is ``lr``.

    Args:
        model: the model.
        lr: learning rate of the decoder and heads.
        encoder_lr: learning rate of the encoder, often 10x lower than ``lr`` for a pretrained one.
        encoder: the encoder module, when :func:`find_encoder` does not find it.
        **group_options: other options of both groups (``weight_decay=1e-4``...).

    Raises:
        ValueError: no encoder found, a rate that is not a finite number > 0, or an encoder that is not
            part of the model.

    Example:
        >>> from trainkit.models import create_model
        >>> model = create_model("unet", num_classes=2, base_channels=4, depth=2)
        >>> groups = param_groups(model, lr=1e-3, encoder_lr=1e-4)
        >>> [(g["name"], g["lr"], len(g["params"])) for g in groups]
        [('decoder', 0.001, 18), ('encoder', 0.0001, 18)]
        >>> import torch
        >>> torch.optim.AdamW(groups).param_groups[1]["lr"]
        0.0001
    """
    for what, value in (("lr", lr), ("encoder_lr", encoder_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"`{what}` must be a finite number > 0, got {value!r}")
    encoder = find_encoder(model) if encoder is None else encoder
    encoder_ids = {id(p) for p in encoder.parameters()}
    all_params = list(model.parameters())
    if not encoder_ids or not encoder_ids <= {id(p) for p in all_params}:
        raise ValueError(
            "the encoder's parameters are not the model's (or it has none): pass a submodule of the model as `encoder`"
        )
    # The decoder's group first: the Trainer logs `param_groups[0]["lr"]` as the run's "lr".
    return [
        {"params": [p for p in all_params if id(p) not in encoder_ids], "lr": lr, "name": "decoder", **group_options},
        {
            "params": [p for p in all_params if id(p) in encoder_ids],
            "lr": encoder_lr,
            "name": "encoder",
            **group_options,
        },
    ]


def set_encoder_trainable(model: nn.Module, trainable: bool, *, encoder: nn.Module | None = None) -> int:
    """Freeze (``False``) or unfreeze (``True``) the encoder's parameters; return how many tensors changed.

    A frozen parameter gets no gradient, so the optimizer leaves it (and its weight decay) alone. Its
    BatchNorm layers still update their running statistics in train mode.

    Example:
        >>> from trainkit.models import create_model
        >>> model = create_model("unet", num_classes=2, base_channels=4, depth=2)
        >>> set_encoder_trainable(model, False), any(p.requires_grad for p in model.encoder.parameters())
        (18, False)
        >>> set_encoder_trainable(model, True)
        18
    """
    encoder = find_encoder(model) if encoder is None else encoder
    changed = 0
    for p in encoder.parameters():
        if p.requires_grad != trainable:
            p.requires_grad_(trainable)
            changed += 1
    return changed


def _encoder_attr(module: nn.Module) -> str | None:
    return next((n for n in ENCODER_ATTRIBUTES if isinstance(getattr(module, n, None), nn.Module)), None)
