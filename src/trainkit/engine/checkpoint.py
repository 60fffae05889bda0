"""Checkpoints: written atomically, checked against their CRC-32s, read with ``weights_only=True`` (never run code).

Format (a plain dict of tensors and plain Python types)::

    {"trainkit_format": 1, "trainkit_version": "...", "model": state_dict, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "epoch": completed epochs, "global_step": ..., "batch_idx": batches done in the epoch
     (0 at an epoch boundary), "rng": RNG states, "loader": sampler state at epoch start, "history": [...],
     "callbacks": {...}, "epoch_state": running sums for a mid-epoch resume}
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from trainkit.engine.step import first_line as _first_line
from trainkit.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "load_checkpoint", "save_checkpoint", "unwrap_model"]

FORMAT_VERSION = 1
_CHUNK = 1 << 20  # bytes read at a time by the CRC-32 check


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside ``DistributedDataParallel`` / ``torch.compile`` wrappers.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> unwrap_model(m) is m
        True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(
            orig := getattr(model, "_orig_mod", None), nn.Module
        ):
            model = orig  # torch.compile's wrapper
        else:  # a user's module that happens to have a `.module` attribute stays whole
            return model


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    *,
    opener: Callable[[str], BinaryIO] | None = None,
) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file, ``fsync``, then ``os.replace``.

    A crash, a kill or a full disk during the write leaves the previous file at ``path`` intact.
    ``trainkit_format`` is added when missing. Temporary files that a killed process left next to
    ``path`` (``.<name>.tmp-<pid>``, pid no longer running) are removed after a successful write.

    Args:
        path: the destination; its folder is created.
        state: tensors and plain Python types only (anything else would not load with ``weights_only``).
        opener: opens the temporary file for writing (tests pass a failing one to simulate a full disk).

    Raises:
        CheckpointError: the file could not be written; the previous checkpoint is kept.

    Example:
        >>> import tempfile
        >>> p = save_checkpoint(tempfile.mkdtemp() + "/w.pt", {"model": torch.nn.Linear(2, 2).state_dict()})
        >>> sorted(load_checkpoint(p))
        ['model', 'trainkit_format', 'trainkit_version']
    """
    path = Path(path)
    payload = dict(state)
    payload.setdefault("trainkit_format", FORMAT_VERSION)
    payload.setdefault("trainkit_version", _version())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create the checkpoint folder {path.parent}: {err.strerror or err}") from err
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    open_tmp = opener or (lambda p: open(p, "wb"))  # noqa: SIM115 - closed below
    try:
        with open_tmp(str(tmp)) as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _remove_stale_temps(path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write of its zip container as a RuntimeError whose context is the OSError.
        os_err = err if isinstance(err, OSError) else err.__context__
        if not isinstance(os_err, OSError):
            raise
        kept = "the previous checkpoint there is kept" if path.exists() else "no checkpoint was written"
        raise CheckpointError(
            f"could not write checkpoint {path} ({os_err.strerror or os_err}); {kept}. Free disk space "
            "or choose another `run_dir`"
        ) from os_err
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    map_location: str | torch.device | None = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and load it into the objects given.

    A file written by trainkit, or a plain ``torch.save(model.state_dict())`` file, can be loaded.
    A file that would run code when unpickled is refused, never executed. Before anything is read, every
    entry of the file's zip container is checked against the CRC-32 that ``torch.save`` recorded for it,
    so bit rot or a bad copy is an error rather than silently wrong weights (files saved with
    ``torch.serialization.set_crc32_options(False)`` have no CRC-32s and load unchecked).

    Args:
        path: the checkpoint file.
        model: receives ``checkpoint["model"]`` (DDP/compiled wrappers are unwrapped).
        optimizer: receives ``checkpoint["optimizer"]``.
        scheduler: receives ``checkpoint["scheduler"]``.
        scaler: a ``GradScaler`` or :class:`MixedPrecision`; receives ``checkpoint["scaler"]``.
        map_location: where tensors are loaded (default CPU; ``load_state_dict`` then copies them
            to the parameters' devices).
        strict: require the model's keys to match exactly; ``False`` loads the keys both have. Shapes must
            match either way (the error for a mismatch shows how to load only the tensors that fit).

    Returns:
        The checkpoint dict (for a plain state_dict file: ``{"model": state_dict}``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt (a CRC-32 mismatch), not a checkpoint,
            unsafe, from a newer trainkit, or does not fit the model (missing/unexpected keys and shape
            mismatches listed).

    Example:
        >>> import tempfile
        >>> model = torch.nn.Linear(2, 2)
        >>> p = save_checkpoint(tempfile.mkdtemp() + "/w.pt", {"model": model.state_dict(), "epoch": 3})
        >>> load_checkpoint(p, model)["epoch"]
        3
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_folder_message(path))
    if not path.is_file():
        hint = " (did training write a checkpoint? `run_dir` must be set)" if path.suffix == ".pt" else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    ckpt = _read(path, map_location)
    fmt = ckpt.get("trainkit_format")
    if isinstance(fmt, int) and fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by trainkit {ckpt.get('trainkit_version', '?')} (checkpoint format {fmt}); this is "
            f"trainkit {_version()} (format {FORMAT_VERSION}): upgrade trainkit with `pip install -U trainkit`"
        )
    if model is not None:
        load_model_state(unwrap_model(model), ckpt["model"], path=path, strict=strict)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if ckpt.get(name) is None:
            raise CheckpointError(f"{path} holds no {name} state; pass `{name}=None` or resume from a full checkpoint")
        try:
            obj.load_state_dict(ckpt[name])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: the saved {name} state does not fit the given {name}: {err}") from err
    return ckpt


def load_model_state(
    model: nn.Module,
    state: Mapping[str, Any],
    *,
    path: str | os.PathLike[str] = "checkpoint",
    strict: bool = True,
) -> None:
    """``model.load_state_dict`` with a readable error listing missing/unexpected keys and shape mismatches.

    ``strict=False`` skips missing and unexpected keys; a shape mismatch is an error either way.

    Example:
        >>> load_model_state(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).state_dict())
    """
    own = model.state_dict()
    state = _strip_prefixes(state, own)
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        if mismatched:  # `strict=False` skips missing and unexpected keys, never a shape mismatch
            fix = (
                "Build the model with the same architecture arguments as when it was saved (e.g. the number of "
                "classes, channels, width or depth); to reuse the weights in another architecture (e.g. a new head), "
                f'load only the tensors that fit: `state = trainkit.load_checkpoint({str(path)!r})["model"]; own = '
                "model.state_dict(); model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape "
                "== own[k].shape}, strict=False)` (`strict=False` alone does not skip shape mismatches)"
            )
        else:
            fix = (
                "Build the model with the same architecture arguments as when it was saved, or pass `strict=False` to "
                "load the keys both have"
            )
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + "; ".join(parts) + ". " + fix)
    model.load_state_dict(state, strict=strict)


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    _verify_crc32(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _global_refused(err)
        if detail is None:  # random bytes or a damaged pickle, not a payload
            raise CheckpointError(
                f"{path} is damaged or not a PyTorch checkpoint (its pickle data does not parse); use another "
                "checkpoint (e.g. `best.pt` or an earlier `last-*.pt`)"
            ) from err
        raise CheckpointError(
            f"{path} refused: it contains Python objects that `weights_only=True` does not load ({detail}); a "
            "checkpoint from an untrusted source could run code this way. Only open it with "
            "`torch.load(weights_only=False)` if you trust who made it"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as err:
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({_first_line(err)}); the write may have been cut "
            "short: use another checkpoint (e.g. `best.pt` or an earlier `last-*.pt`)"
        ) from err
    if isinstance(obj, Mapping) and "trainkit_format" in obj:
        return dict(obj)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": dict(obj)}  # a plain `torch.save(model.state_dict())` file
    raise CheckpointError(
        f"{path} is not a trainkit checkpoint or a model state_dict (it holds a {type(obj).__name__}); save models "
        "with `trainkit.save_checkpoint` or `torch.save(model.state_dict(), path)`"
    )


def _verify_crc32(path: Path) -> None:
    """Compare each zip entry of ``path`` with the CRC-32 its header records; raise on a mismatch.

    ``torch.save`` records a CRC-32 for every entry but ``torch.load`` never checks it, so flipped bytes inside
    a tensor would load as wrong weights. An entry whose CRC-32 is 0 is not checked: files saved with
    ``torch.serialization.set_crc32_options(False)`` have 0 for every entry. A file that is no readable zip
    (truncated, torch's legacy format, not a checkpoint) is left to ``torch.load``, whose error names the problem.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with archive:
        for info in archive.infolist():
            if info.CRC == 0:
                continue
            try:
                with archive.open(info) as entry:  # raises BadZipFile at the end of an entry whose CRC-32 differs
                    while entry.read(_CHUNK):
                        pass
            except (NotImplementedError, RuntimeError):  # a compression or encryption torch does not write either
                return
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
                if isinstance(err, OSError):
                    what = f"reading its entry {info.filename} failed ({err.strerror or err})"
                elif "Bad CRC-32" in str(err):
                    what = f"the CRC-32 of its entry {info.filename} does not match its bytes"
                else:
                    what = f"its entry {info.filename} is damaged ({_first_line(err)})"
                raise CheckpointError(
                    f"{path} is corrupt: {what} (a disk or copy error); its weights cannot be trusted. Use an older "
                    f"checkpoint: {_older_checkpoints(path)}, or copy the file again from where it came from"
                ) from err


def _folder_message(folder: Path) -> str:
    """What to pass instead of a folder: the checkpoints in it or in its ``checkpoints/`` (``last.pt`` first)."""
    try:
        found = [p for p in (*folder.glob("*.pt"), *folder.glob("checkpoints/*.pt")) if p.is_file()]
    except OSError:
        found = []
    if not found:
        return (
            f"checkpoint {folder} is a folder, not a checkpoint file, and holds no checkpoints; pass a checkpoint "
            f"file, e.g. `{folder / 'checkpoints' / 'last.pt'}` of a run directory"
        )
    found.sort(key=lambda p: (p.name != "last.pt", p.name != "best.pt", str(p)))
    more = f" (or {', '.join(map(str, found[1:3]))}{' ...' if len(found) > 3 else ''})" if len(found) > 1 else ""
    return f"checkpoint {folder} is a folder, not a checkpoint file; pass a checkpoint file in it: {found[0]}{more}"


def _older_checkpoints(path: Path) -> str:
    """The other checkpoints next to ``path``, newest first, or the names a run writes."""
    try:
        others = sorted(
            (p for p in path.parent.glob("*.pt") if p.name != path.name and p.is_file()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        others = []
    if not others:
        return "`best.pt` or `last-step<N>.pt` of the same run (none are next to it)"
    return ", ".join(p.name for p in others[:3]) + (" ..." if len(others) > 3 else "") + f" in {path.parent}"


def _global_refused(err: BaseException) -> str | None:
    """The line of a ``weights_only`` error that names a refused Python global, if there is one."""
    for line in str(err).splitlines():
        if "unsupported global" in line.lower():
            return line.strip().rstrip(".")
    return None


def _strip_prefixes(state: Mapping[str, Any], own: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept state dicts saved from DDP (``module.``) or compiled (``_orig_mod.``) models."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _remove_stale_temps(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` files of processes that no longer run (killed mid-write)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_running(int(pid)):
            tmp.unlink(missing_ok=True)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists, owned by someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _version() -> str:
    from trainkit._version import __version__

    return __version__
