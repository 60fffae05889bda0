"""What the CRC-32 check of ``load_checkpoint`` costs on a checkpoint of about 100 MB.

    python benchmarks/checkpoint_verify.py --runs 9
    python benchmarks/checkpoint_verify.py --runs 9 --cold   # the file dropped from the page cache before each load

Saves a model of ~100 MB of float32 parameters (24 ``Linear(1024, 1024)``) with ``save_checkpoint`` into a
temporary folder, then times, interleaved round by round so drift on a shared machine hits all alike:

- ``load_checkpoint(path, model)``: read the file and copy the weights into a model, with the check and
  without it (``_verify_crc32`` replaced by a no-op);
- ``load_checkpoint(path)``: the read alone (``torch.load``), with and without the check;
- the check alone.

Prints the median of each (and the minimum), and what the check adds. ``--cold`` asks the kernel to drop the
file's cached pages before each timed call (``posix_fadvise(DONTNEED)``; no effect on tmpfs), as after a
reboot or for a file just copied in; the check then reads the file from disk and ``torch.load`` from the cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from trainkit.engine import checkpoint


def _drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(call: Callable[[], object], path: Path, cold: bool) -> float:
    if cold:
        _drop_from_cache(path)
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--cold", action="store_true", help="drop the file from the page cache before each load")
    parser.add_argument("--dir", help="folder for the checkpoint (default: a temporary folder)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(24)])
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = checkpoint.save_checkpoint(Path(folder) / "last.pt", {"model": model.state_dict(), "epoch": 1})
        no_check = mock.patch.object(checkpoint, "_verify_crc32", lambda path: None)

        def into_model_unchecked() -> None:
            with no_check:
                checkpoint.load_checkpoint(path, model)

        def read_unchecked() -> None:
            with no_check:
                checkpoint.load_checkpoint(path)

        variants: dict[str, Callable[[], object]] = {
            "load_checkpoint(path, model), checked": lambda: checkpoint.load_checkpoint(path, model),
            "load_checkpoint(path, model), unchecked": into_model_unchecked,
            "load_checkpoint(path), checked": lambda: checkpoint.load_checkpoint(path),
            "load_checkpoint(path), unchecked": read_unchecked,
            "the check alone": lambda: checkpoint._verify_crc32(path),
        }
        for call in variants.values():  # warm-up: imports, allocator, page cache
            call()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, call in variants.items():
                times[name].append(_timed(call, path, args.cold))
        file_mb = path.stat().st_size / 1e6

    print(
        f"{size_mb:.1f} MB of float32 parameters, file {file_mb:.1f} MB; {args.runs} runs"
        f"{', cold page cache' if args.cold else ''}; torch {torch.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    )
    print(f"{'':42}{'median ms':>10}{'min ms':>9}")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(f"{name:42}{medians[name] * 1e3:>10.1f}{min(values) * 1e3:>9.1f}")
    for what in ("load_checkpoint(path, model)", "load_checkpoint(path)"):
        checked, unchecked = medians[f"{what}, checked"], medians[f"{what}, unchecked"]
        print(f"the check adds {(checked - unchecked) * 1e3:+.1f} ms to {what} ({checked / unchecked - 1:+.0%})")


if __name__ == "__main__":
    main()
