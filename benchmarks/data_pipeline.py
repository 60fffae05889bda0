"""Samples/s of trainkit's data pipeline against the notes' hand-written one and against decoding alone.

Writes ``--n`` synthetic 512x384 RGB PNG images with palette instance masks (``trainkit.data.make_shapes``,
the Penn-Fudan layout) to a temporary folder, then runs every pipeline through a ``DataLoader``
(batch size ``--batch-size``) with each ``--workers`` count and prints a table:

* ``decode only``: ``torchvision.io.decode_image`` on the images alone, stacked — the limit;
* ``notes semantic`` / ``notes instance``: the practitioner notes' pipeline (Penn-Fudan tutorial):
  ``Image.open`` -> ``np.array`` -> ``TF.to_tensor``; ``obj_ids = np.unique(mask)[1:]``,
  ``masks = mask == obj_ids[:, None, None]``, boxes from ``np.where`` per object;
* ``trainkit semantic`` / ``trainkit instance``: ``SegmentationDataset`` + ``collate`` / ``collate_instances``;
* ``trainkit semantic + train_preset``: the same with ``train_preset(256, normalize=False)`` (random scale,
  crop to 256x256, flip, colour jitter) under per-sample seeding, as in training.

Workers are persistent and each configuration gets one warm-up epoch, so the figures are steady state:
samples/s is the median over ``--repeats`` epochs (wall clock), with the pipelines' epochs alternating so that
a change in machine load hits all of them alike; CPU ms/sample adds the CPU time of the main process and the
workers, which a busy machine hardly changes (ratios: higher is better for trainkit).
Targets (issue 3): trainkit >= 1.5x the notes' pipeline and >= 0.8x decode only, at the same worker count.

``--seeding`` instead prints the cost of sample-stable seeding a sample (``trainkit.engine.Seeding``), in
microseconds, for each mode: what a DataLoader worker pays in the default ``"workers"`` mode, what the main
process pays in ``"workers"`` and ``"always"`` modes, against an unseeded ``__getitem__`` (the budget is
15 us a sample in a worker).

Usage:
    python benchmarks/data_pipeline.py --n 64 --workers 0 2
    python benchmarks/data_pipeline.py --seeding
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from natsort import natsorted
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.io import decode_image, read_file

from trainkit.data import SegmentationDataset, collate, collate_instances, make_shapes
from trainkit.data.transforms import train_preset

DECODE = "decode only (torchvision.io)"
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)


class DecodeOnly(Dataset):
    """The images alone, decoded by torchvision.io: what any pipeline must at least do."""

    def __init__(self, root: Path) -> None:
        self.paths = natsorted((root / "PNGImages").iterdir())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_image(read_file(str(self.paths[index])))


class NotesPipeline(Dataset):
    """The notes' pipeline, as in the Penn-Fudan tutorial they quote."""

    def __init__(self, root: Path, instance: bool) -> None:
        self.root = root
        self.instance = instance
        self.imgs = list(natsorted(os.listdir(os.path.join(root, "PNGImages"))))
        self.masks = list(natsorted(os.listdir(os.path.join(root, "PedMasks"))))

    def __len__(self) -> int:
        return len(self.imgs)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, Any]:
        img = Image.open(os.path.join(self.root, "PNGImages", self.imgs[idx])).convert("RGB")
        mask = np.array(Image.open(os.path.join(self.root, "PedMasks", self.masks[idx])))
        img = TF.to_tensor(np.array(img))
        if not self.instance:
            return img, torch.as_tensor(mask, dtype=torch.int64)
        obj_ids = np.unique(mask)[1:]
        masks = mask == obj_ids[:, None, None]
        boxes = []
        for i in range(len(obj_ids)):
            pos = np.where(masks[i])
            boxes.append([np.min(pos[1]), np.min(pos[0]), np.max(pos[1]), np.max(pos[0])])
        boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
        target = {
            "boxes": boxes_t,
            "labels": torch.ones((len(obj_ids),), dtype=torch.int64),
            "masks": torch.as_tensor(masks, dtype=torch.uint8),
            "image_id": torch.tensor([idx]),
            "area": (boxes_t[:, 3] - boxes_t[:, 1]) * (boxes_t[:, 2] - boxes_t[:, 0]),
            "iscrowd": torch.zeros((len(obj_ids),), dtype=torch.int64),
        }
        return img, target


def tuple_collate(batch: list[Any]) -> tuple[Any, ...]:
    """The tutorial's ``utils.collate_fn``."""
    return tuple(zip(*batch, strict=True))


def cpu_seconds() -> float:
    """CPU time of this process and its live children (DataLoader workers), from ``/proc`` on Linux.

    Unlike wall-clock time it hardly changes when other programs load the machine, so the ratios built on it
    are the stable ones on a shared machine. Elsewhere it counts this process only.
    """
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime and stime, fields 14 and 15 of stat
    return total


def epoch(loader: DataLoader) -> tuple[float, float]:
    """One pass over ``loader``: (wall seconds, CPU seconds of this process and the workers)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in loader:
        pass
    return time.perf_counter() - wall, cpu_seconds() - cpu


Pipeline = tuple[str, Dataset, Callable]  # name, dataset, collate_fn


def measure(pipelines: list[Pipeline], workers: int, batch_size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per pipeline: median samples/s (wall) and CPU ms per sample over the repeats.

    Epochs of all pipelines alternate, so load changes hit them alike.
    """
    loaders = {
        name: DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=fn, persistent_workers=workers > 0
        )
        for name, dataset, fn in pipelines
    }
    for loader in loaders.values():  # warm-up: worker start, file cache, allocator
        epoch(loader)
    walls: dict[str, list[float]] = {name: [] for name in loaders}
    cpus: dict[str, float] = dict.fromkeys(loaders, 0.0)
    for _ in range(repeats):
        for name, loader in loaders.items():
            wall, cpu = epoch(loader)
            walls[name].append(wall)
            cpus[name] += cpu
    return {
        name: (len(loader.dataset) / statistics.median(walls[name]), 1e3 * cpus[name] / (repeats * len(loader.dataset)))
        for name, loader in loaders.items()
    }


def seeding_costs(repeats: int = 7, n: int = 20000) -> dict[str, float]:
    """Microseconds a sample (median of ``repeats`` runs of ``n`` samples) of each seeding mode's ``__getitem__``."""
    from unittest import mock

    from trainkit.engine import seeding as loaders

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> int:
            return i

    plain = Plain()
    keys = [(i, 3, i) for i in range(n)]
    worker = loaders.SeededDataset(plain, seed=0, always=False)
    always = loaders.SeededDataset(plain, seed=0, always=True)
    cases: dict[str, Callable[[], None]] = {
        "unseeded __getitem__": lambda: [plain[i] for i in range(n)],
        '"workers", in a worker': lambda: [worker[k] for k in keys],
        '"workers", main process': lambda: [worker[k] for k in keys],
        '"always", main process': lambda: [always[k] for k in keys],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():  # alternating, so machine load hits every case alike
            worker_info = object() if "in a worker" in name else None
            with mock.patch.object(loaders, "get_worker_info", lambda info=worker_info: info):
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="number of image/mask pairs (default 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers (default 0 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per configuration (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the main process (default 1, as DataLoader workers use): with more, "
        "every batch-sized torch op waits for the other threads, which on a busy machine costs milliseconds",
    )
    parser.add_argument("--seeding", action="store_true", help="print the cost of per-sample seeding instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.seeding:
        print(f"python {' '.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, numpy {np.__version__}"
        )
        costs = seeding_costs()
        base = costs["unseeded __getitem__"]
        for name, us in costs.items():
            print(f"{name:28s} {us:8.2f} us/sample   seeding adds {us - base:7.2f} us")
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = make_shapes(Path(tmp) / "shapes", n=args.n, size=(384, 512), seed=0)
        pipelines: list[Pipeline] = [
            (DECODE, DecodeOnly(root), default_collate),
            ("notes semantic", NotesPipeline(root, instance=False), default_collate),
            ("trainkit semantic", semantic(root), collate),
            ("trainkit semantic + train_preset", semantic(root, train_preset(256, normalize=False)), collate),
            ("notes instance", NotesPipeline(root, instance=True), tuple_collate),
            ("trainkit instance", instance(root), collate_instances),
        ]
        print(f"python {' '.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start), "
            f"torch {torch.__version__}, {args.threads} intra-op thread(s) in the main process;\n"
            f"n={args.n} pairs of 512x384 PNG, batch {args.batch_size}, median of "
            f"{args.repeats} epochs, pipelines alternating"
        )
        header = (
            f"{'pipeline':34s} {'workers':>7s} {'samples/s':>10s} {'vs notes':>9s} {'vs decode':>10s}"
            f" {'CPU ms/sample':>14s} {'vs notes':>9s} {'vs decode':>10s}"
        )
        print(header)
        print(f"{'':34s} {'':7s} {'(wall clock)':>30s} {'(all processes)':>36s}")
        print("-" * len(header))
        for workers in args.workers:
            results = measure(pipelines, workers, args.batch_size, args.repeats)
            for name, (rate, cpu_ms) in results.items():
                kind = name.split()[1]  # semantic / instance; augmented rows have no notes twin
                notes = results.get(f"notes {kind}") if name.startswith("trainkit") and "preset" not in name else None
                decode = results[DECODE] if name != DECODE else None
                print(
                    f"{name:34s} {workers:7d} {rate:10.1f} {_ratio(rate, notes and notes[0]):>9s} "
                    f"{_ratio(rate, decode and decode[0]):>10s} {cpu_ms:14.2f} "
                    f"{_ratio(notes and notes[1], cpu_ms):>9s} {_ratio(decode and decode[1], cpu_ms):>10s}"
                )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else ""


def semantic(root: Path, transforms: Callable | None = None) -> SegmentationDataset:
    return SegmentationDataset(
        root / "PNGImages", root / "PedMasks", mask_suffix="_mask", target="semantic", transforms=transforms
    )


def instance(root: Path) -> SegmentationDataset:
    return SegmentationDataset(root / "PNGImages", root / "PedMasks", mask_suffix="_mask", target="instance")


if __name__ == "__main__":
    main()
