"""Pretrained weights from the standard caches only: a missing file is one line saying how to get it.

torchvision reads ``<TORCH_HOME>/hub/checkpoints/<file of the weights' URL>`` (``torch.hub.get_dir()``) and
downloads it when it is missing; smp and timm read the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``) and
download too. Before a model with pretrained weights is built, the file is looked up here; when it is
missing nothing is built and nothing downloaded. smp and timm then build with the Hugging Face Hub in
offline mode, so a cached file is used as it is, without asking the Hub for a newer revision.
"""

from __future__ import annotations

import contextlib
import os
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["smp_encoder_weights", "torch_hub_file", "torchvision_weights"]

_FLAGS = {"weights": "--weights", "weights_backbone": "--encoder-weights"}  # the `trainkit train` flags


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and looks for) the file of ``url``.

    Example:
        >>> torch_hub_file("https://download.pytorch.org/models/resnet50-11ad3fa6.pth").name
        'resnet50-11ad3fa6.pth'
    """
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_weights(builder: Callable[..., Any], option: str, value: Any) -> Any:
    """The weights enum ``builder`` takes for ``option`` (``"weights"``/``"weights_backbone"``), checked in the cache.

    ``value`` is ``None``, an enum member, its name (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or its full name
    (``"ResNet50_Weights.IMAGENET1K_V1"``).

    Raises:
        ValueError: a name the enum does not have (the message lists them).
        FileNotFoundError: the weights' file is not in the torch hub cache.

    Example:
        >>> from torchvision.models.segmentation import lraspp_mobilenet_v3_large
        >>> torchvision_weights(lraspp_mobilenet_v3_large, "weights", None) is None
        True
    """
    if value is None:
        return None
    enum = _weights_enum(builder, option)
    try:
        weights = enum.verify(value)
    except (KeyError, TypeError, ValueError) as err:
        names = ", ".join(["DEFAULT", *(member.name for member in enum)])  # iteration skips the DEFAULT alias
        raise ValueError(
            f"`{option}={value!r}` is not a weights name of {builder.__name__}; choose one of {names} (or None)"
        ) from err
    path = torch_hub_file(weights.url)
    if not path.is_file():
        full = f"{type(weights).__name__}.{weights.name}"
        raise FileNotFoundError(
            f"the pretrained weights {full} (`{option}`) are not in the torch hub cache: {path} is missing, and "
            f'trainkit never downloads by surprise. Fetch them once, online: `python -c "import torchvision; '
            f"torchvision.models.get_weight('{full}').get_state_dict()\"` (or download {weights.url} to that "
            f"path), or set TORCH_HOME to the folder that holds hub/checkpoints/{path.name}; or pass "
            f"`{option}=None` (leave out `{_FLAGS[option]}` on the command line) to start from random weights"
        )
    return weights


@contextlib.contextmanager
def smp_encoder_weights(encoder: str, weights: Any) -> Iterator[Any]:
    """Check that an smp encoder's pretrained weights are in the cache; yield the ``encoder_weights`` for smp.

    Inside the block the Hugging Face Hub is offline, so smp and timm load the cached file and never
    download. ``tu-`` (timm) encoders get ``True`` for any weights name: timm picks the weights by the name's
    tag (``"tu-resnet18.a1_in1k"``).

    Raises:
        FileNotFoundError: the weights' file is not in the cache.

    Example:
        >>> with smp_encoder_weights("resnet18", None) as weights:
        ...     weights is None
        True
    """
    if weights is None or weights is False:
        yield None
        return
    if encoder.startswith("tu-"):
        _require_timm_file(encoder, weights)
        weights = True
    else:
        _require_smp_file(encoder, weights)
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True  # the file is cached (checked above): no request to the Hub for a newer revision
    try:
        yield weights
    finally:
        hub.HF_HUB_OFFLINE = offline


def _weights_enum(builder: Callable[..., Any], option: str) -> Any:
    """The enum class in ``builder``'s annotation ``Optional[<Enum>]`` for ``option``."""
    hints = typing.get_type_hints(builder)
    return next(arg for arg in typing.get_args(hints[option]) if arg is not type(None))


def _require_smp_file(encoder: str, weights: Any) -> None:
    from segmentation_models_pytorch.encoders import encoders

    if encoder not in encoders:
        return  # smp names the unknown encoder itself, with the list of known ones
    settings = encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        raise ValueError(
            f"`encoder_weights={weights!r}` is not available for the smp encoder {encoder!r}; choose one of "
            f"{sorted(settings)} (or None)"
        )
    repo, revision = settings[weights]["repo_id"], settings[weights]["revision"]
    missing = [f for f in ("config.json", "model.safetensors") if _hf_cached(repo, f, revision) is None]
    if missing:
        raise FileNotFoundError(_hf_message(f"encoder_weights={weights!r} of {encoder}", repo, revision, missing))


def _require_timm_file(encoder: str, weights: Any) -> None:
    import timm

    name = encoder[3:]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        cfg = None
    if cfg is None:
        raise ValueError(f"timm knows no pretrained weights for {name!r}; pass `encoder_weights=None`")
    repo, url = cfg.hf_hub_id, cfg.url
    if repo:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if all(_hf_cached(repo, f, None) is None for f in files):
            raise FileNotFoundError(_hf_message(f"encoder_weights of {encoder}", repo, None, files[:1]))
    elif isinstance(url, str) and not torch_hub_file(url).is_file():
        raise FileNotFoundError(
            f"the pretrained weights of {encoder} are not in the torch hub cache: {torch_hub_file(url)} is "
            f"missing, and trainkit never downloads by surprise. Download {url} to that path once, or pass "
            "`encoder_weights=None` (leave out `--encoder-weights`) to start from random weights"
        )


def _hf_cached(repo: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return found if isinstance(found, str) else None


def _hf_message(what: str, repo: str, revision: str | None, files: list[str]) -> str:
    from huggingface_hub import constants

    pinned = f" --revision {revision}" if revision else ""
    return (
        f"the pretrained weights ({what}) are not in the Hugging Face cache {constants.HF_HUB_CACHE}: "
        f"{', '.join(files)} of {repo} missing, and trainkit never downloads by surprise. Fetch them once, "
        f"online: `hf download {repo} {' '.join(files)}{pinned}`, or set HF_HOME to the folder that holds them; "
        "or pass `encoder_weights=None` (leave out `--encoder-weights`) to start from random weights"
    )
