"""Nested batches: the one walker over their tensors, the roles of their keys, device moves and batch size.

A sample or a batch is a tensor, or tuples, lists, namedtuples and mappings of them, nested, with other
leaves (strings, numbers, paths) beside. Every traversal of one in trainkit goes through :func:`map_tensors`;
every decision about what an entry holds goes through the table below and :func:`key_role`.

=========== =====================================================================================
role        what the entry holds
=========== =====================================================================================
``batch``   the root: a whole sample or batch (a bare tensor there is the model's input)
``input``   model inputs: position 0 of a root tuple/list, a key of :data:`INPUT_KEYS` or any key the
            table does not name (ids, paths, weights), and everything inside an input
``target``  class-id targets: positions 1, 2, ... of a root tuple/list, a key of :data:`TARGET_KEYS`,
            and everything inside a target except the fields below
``keep``    the fields of a torchvision detection target (:data:`KEPT_KEYS`: instance ``masks``,
            ``boxes``, ``area``, ``iscrowd``, ``image_id``), and everything inside them: not class ids
=========== =====================================================================================

``masks`` is in two rows on purpose: at the root of a batch (``{"image": x, "masks": y}``) it names the
targets; inside a target dict it is a detection target's instance masks, kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "BATCH",
    "INPUT",
    "INPUT_KEYS",
    "KEEP",
    "KEPT_KEYS",
    "TARGET",
    "TARGET_KEYS",
    "batch_size_of",
    "key_for",
    "key_role",
    "map_tensors",
    "move_to_device",
]

BATCH, INPUT, TARGET, KEEP = "batch", "input", "target", "keep"
"""The roles of a batch's entries (see the module docstring)."""

INPUT_KEYS: tuple[str, ...] = ("image", "images", "input", "inputs", "x")
"""Dict keys that name the model's inputs, in order of preference (``split_batch``, ``BatchNormalize``)."""

TARGET_KEYS: tuple[str, ...] = ("mask", "masks", "target", "targets", "label", "labels", "y")
"""Dict keys that name class-id targets (made int64 by ``collate``), in order of preference."""

KEPT_KEYS: tuple[str, ...] = ("masks", "boxes", "area", "iscrowd", "image_id")
"""Fields of a detection target dict that are not class ids: their dtypes are kept."""

_TARGETS, _KEPT = frozenset(TARGET_KEYS), frozenset(KEPT_KEYS)
_Tensor = torch.Tensor


def key_role(key: Any, parent_role: str = BATCH) -> str:
    """The role of the entry at ``key`` (a dict key or a position) of a container whose role is ``parent_role``.

    Example:
        >>> key_role(0), key_role(1), key_role("image"), key_role("mask"), key_role("name")
        ('input', 'target', 'input', 'target', 'input')
        >>> key_role("labels", TARGET), key_role("boxes", TARGET), key_role(0, INPUT)
        ('target', 'keep', 'input')
    """
    if parent_role == TARGET:
        return KEEP if key in _KEPT else TARGET
    if parent_role == KEEP:
        return KEEP
    if parent_role == BATCH and type(key) is int:
        return INPUT if key == 0 else TARGET
    return TARGET if key in _TARGETS else INPUT


def key_for(batch: Mapping[Any, Any], role: str) -> Any:
    """The key of ``batch`` that holds its inputs (``role=INPUT``) or targets (``TARGET``), or ``None``.

    The first key of :data:`INPUT_KEYS` / :data:`TARGET_KEYS` present in ``batch``.

    Example:
        >>> batch = {"name": ["a"], "labels": 0, "image": 1, "mask": 2}
        >>> key_for(batch, INPUT), key_for(batch, TARGET), key_for({"x2": 0}, INPUT)
        ('image', 'mask', None)
    """
    return next((key for key in (INPUT_KEYS if role == INPUT else TARGET_KEYS) if key in batch), None)


def map_tensors(
    obj: Any,
    fn: Callable[..., Any],
    *,
    with_role: bool = False,
    role: str = BATCH,
    leaf_types: tuple[type, ...] = (),
) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples, lists, namedtuples and mappings; rebuild the rest.

    Containers keep their type (a mapping's own type when it can be rebuilt from its items, else a ``dict``;
    another ``Sequence`` becomes a list); tensor subclasses such as ``tv_tensors.Mask`` reach ``fn`` as
    they are, so they keep their type when ``fn`` keeps it. Other leaves (strings, numbers, paths, ``None``)
    are returned unchanged. Like Lightning's ``apply_to_collection``; plain tensors in a plain tuple or
    list (the usual ``(inputs, targets)`` batch) are mapped without a recursive call.

    Args:
        obj: A tensor or a nested container of them.
        fn: ``fn(tensor)``, or ``fn(tensor, role)`` with ``with_role``; returns the new leaf.
        with_role: Also pass each leaf's role (:func:`key_role`, from ``role`` at the root down).
        role: The role of ``obj`` itself.
        leaf_types: More leaf types to give ``fn``, e.g. ``(np.ndarray, np.generic)`` to convert them.

    Example:
        >>> map_tensors((torch.ones(2), {"mask": torch.zeros(1), "name": "a"}), lambda t: t + 1)
        (tensor([2., 2.]), {'mask': tensor([1.]), 'name': 'a'})
        >>> map_tensors((torch.ones(1), [torch.ones(1)]), lambda t, role: role, with_role=True)
        ('input', ['target'])
    """
    return _walk(obj, fn, role if with_role else None, leaf_types)


def _walk(obj: Any, fn: Callable[..., Any], role: str | None, leaf_types: tuple[type, ...]) -> Any:
    """The walker behind :func:`map_tensors`; ``role`` is ``None`` when ``fn`` takes no role."""
    kind = type(obj)
    if kind is tuple or kind is list:  # the usual batch, checked before the slower abstract-class checks below
        if role is None:
            items = [fn(v) if type(v) is _Tensor else _walk(v, fn, None, leaf_types) for v in obj]
        else:
            items = [_walk(v, fn, key_role(k, role), leaf_types) for k, v in enumerate(obj)]
        return items if kind is list else tuple(items)
    if isinstance(obj, _Tensor) or (leaf_types and isinstance(obj, leaf_types)):
        return fn(obj) if role is None else fn(obj, role)
    if isinstance(obj, Mapping):
        mapped = {k: _walk(v, fn, role and key_role(k, role), leaf_types) for k, v in obj.items()}
        return mapped if kind is dict else _rebuild(kind, mapped, dict)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        items = [_walk(v, fn, role and key_role(k, role), leaf_types) for k, v in enumerate(obj)]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return kind(*items)
        return _rebuild(kind, items, tuple if isinstance(obj, tuple) else list)
    return obj


def _rebuild(kind: type, items: Any, fallback: type) -> Any:
    """``kind(items)`` (OrderedDict, a user's dict or tuple subclass, torch.Size), or ``fallback(items)``."""
    try:
        return kind(items)
    except TypeError:
        return fallback(items)


def move_to_device(batch: Any, device: torch.device, non_blocking: bool | None = None) -> Any:
    """Move every tensor in a nested batch (tuple, list, dict, tv_tensors, namedtuple) to ``device``.

    Tensor subclasses such as ``tv_tensors.Image`` keep their type; tensors already on ``device`` are
    returned as they are, without a ``.to()`` call. Non-tensor leaves (strings, numbers, paths) are
    returned unchanged. ``non_blocking`` defaults to ``True`` on CUDA, where it overlaps the copy with
    compute when the source is pinned.

    Example:
        >>> batch = {"image": torch.zeros(2, 3, 4, 4), "meta": ["a.png", "b.png"]}
        >>> moved = move_to_device(batch, torch.device("meta"))
        >>> moved["image"].device, moved["meta"]
        (device(type='meta'), ['a.png', 'b.png'])
    """
    move = _movers.get((device, non_blocking))
    if move is None:  # built once per (device, non_blocking): `device.type` alone costs 0.2 us a read
        move = _movers[(device, non_blocking)] = _mover(
            device, device.type == "cuda" if non_blocking is None else non_blocking
        )
    return _walk(batch, move, None, ())


_movers: dict[tuple[torch.device, bool | None], Callable[[torch.Tensor], torch.Tensor]] = {}


def _mover(device: torch.device, non_blocking: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def move(tensor: torch.Tensor) -> torch.Tensor:
        # `.to()` returns the tensor itself when it is already there, but parsing its arguments costs
        # microseconds a call; comparing devices first is cheaper (a CPU loop moves nothing).
        return tensor if tensor.device == device else tensor.to(device, non_blocking=non_blocking)

    return move


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor (1 if none).

    A list of per-sample tensors or dicts inside the batch (``collate_instances``'s detection batches)
    counts its items; a root list of other leaves (strings, numbers) too. It follows the first entry
    down to a tensor rather than visiting every one, so it is not a :func:`map_tensors` walk.

    Example:
        >>> batch_size_of((torch.zeros(4, 3), torch.zeros(4))), batch_size_of({"image": torch.zeros(2, 3)})
        (4, 2)
        >>> batch_size_of(([torch.zeros(3, 8, 8), torch.zeros(3, 5, 5)], [{"labels": torch.ones(1)}] * 2))
        2
    """
    if type(batch) in (tuple, list) and batch and type(batch[0]) is _Tensor and batch[0].ndim:
        return batch[0].shape[0]  # the usual (inputs, targets) batch, before the general descent below
    if isinstance(batch, _Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        if batch and not isinstance(batch[0], (_Tensor, tuple, list, Mapping)):
            return len(batch)
        for item in batch:
            if isinstance(item, (tuple, list)) and item and isinstance(item[0], (_Tensor, Mapping)):
                return len(item)  # a list of per-sample tensors (detection batches)
            if isinstance(item, (_Tensor, Mapping, tuple, list)):
                return batch_size_of(item)
    return 1
