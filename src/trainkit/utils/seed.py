"""Seeding and RNG state that survives ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int, *, deterministic: bool = False) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device) with one number.

    Args:
        seed: any integer in ``[0, 2**32)``.
        deterministic: also ask PyTorch for deterministic kernels (``torch.use_deterministic_algorithms``)
            and turn off cuDNN autotuning; slower, but bitwise repeatable on GPU.

    Returns:
        The seed, so ``seed = seed_everything(0)`` reads naturally.

    Raises:
        ValueError: the seed is not an integer in range.

    Example:
        >>> seed_everything(0)
        0
        >>> a = torch.rand(1); _ = seed_everything(0); torch.equal(a, torch.rand(1))
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"`seed` must be an integer in [0, 2**32), got {seed!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return seed


def get_rng_state() -> dict[str, Any]:
    """Capture every global RNG as tensors and plain types, so it loads under ``weights_only=True``.

    Python's ``random`` state is a tuple of ints and NumPy's legacy state holds an ndarray; both
    are converted (ndarray → tensor) because ``weights_only`` refuses arbitrary objects. Peers
    that pickle the raw objects lose the RNG state once loading is made safe.

    Example:
        >>> state = get_rng_state(); a = torch.rand(2)
        >>> set_rng_state(state); torch.equal(a, torch.rand(2))
        True
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`get_rng_state`.

    CUDA states are restored only when a GPU is present and the counts match; a checkpoint made on
    a GPU machine therefore still resumes on a CPU one.

    Example:
        >>> set_rng_state(get_rng_state())
    """
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
