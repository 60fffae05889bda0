"""Sliding-window inference: throughput and peak memory of ``trainkit.inference.sliding_window`` against MONAI's
``sliding_window_inference`` on the same model, image, windows, overlap and blending, and the peak memory of a
10,000 × 10,000 image accumulated on the CPU.

    python benchmarks/inference.py                          # CPU: a 1024² image, 3 interleaved runs
    python benchmarks/inference.py --big 10000              # also the 10,000² image, output on the CPU
    python benchmarks/inference.py --device cuda --size 4096 --big 10000 --monai-big

Comparison: ``UNet(3, 2, base_channels=16, depth=3)`` (``--model light``: two 3x3 convolutions, where the
stitching's own cost shows) in eval mode, a float32 ``[1, 3, S, S]`` image, windows of
256 with overlap 0.25, 4 windows a forward pass, constant and Gaussian blending, everything under
``torch.inference_mode()``; the two outputs are compared (max absolute difference). Runs are interleaved
(MONAI, trainkit, MONAI, ...) after one warm-up each, so drifts in machine load hit both alike; the table
shows the median megapixels a second (wall clock), the median CPU seconds of the process (the fairer figure
on a shared machine) and the peak memory of the call above what was allocated before it: the process's
resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) on the CPU, ``max_memory_allocated``
on a GPU. MONAI is skipped, with a note, when it is not installed (``pip install monai``: a benchmark-only
dependency, never trainkit's).

Big image (``--big N``): an ``[1, 3, N, N]`` uint8 image on the CPU, a two-layer convolution net (3 → 8 → 2
classes), windows of 512 with overlap 0.25, Gaussian blending, normalised per window batch on the compute
device (``BatchNormalize``), the float32 output accumulated on the CPU. Printed: the output's size, the
memory of one window batch's forward pass, and the call's peak above its start; the bound is the output
plus a few windows. ``--monai-big`` runs MONAI on it too (on a float32 copy of the image: MONAI computes and
returns in the input's dtype).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import trainkit
from trainkit.data.transforms import BatchNormalize
from trainkit.inference import sliding_window
from trainkit.models import UNet

MIB = 2**20
MODELS = {"unet": "UNet(3, 2, base_channels=16, depth=3)", "light": "Conv(3, 8, 3x3), ReLU, Conv(8, 2, 3x3)"}
# In the processes that measure memory, every allocation of 64 KiB or more is its own mapping, returned to the
# system when freed, so the resident size follows the live tensors instead of what malloc keeps for reuse.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status(key: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"{key}:\s+(\d+) kB", handle.read()).group(1)) * 1024  # type: ignore[union-attr]


def measure(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float, int, int, torch.Tensor]:
    """Wall seconds, CPU seconds, peak host bytes and peak device bytes above the start, and the output."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    gpu_base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM (the resident high-water mark) to the current resident size
    host_base = _status("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gpu_peak = torch.cuda.max_memory_allocated(device) - gpu_base if device.type == "cuda" else 0
    return wall, cpu, _status("VmHWM") - host_base, gpu_peak, out


def _monai() -> Any:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    return sliding_window_inference


def _contender(name: str, blend: str, args: argparse.Namespace, device: torch.device) -> Callable[[], torch.Tensor]:
    """The comparison's call of ``name`` (``"trainkit"`` or ``"monai"``) on its model and image, built here."""
    torch.manual_seed(0)
    model = (UNet(3, 2, base_channels=16, depth=3) if args.model == "unet" else _light()).to(device).eval()
    image = torch.rand(1, 3, args.size, args.size, device=device)
    if name == "monai":
        monai = _monai()
        return lambda: monai(image, (args.window,) * 2, args.sw_batch_size, model, args.overlap, blend)
    return lambda: sliding_window(
        model, image, window=args.window, overlap=args.overlap, blend=blend, sw_batch_size=args.sw_batch_size
    )


def _light() -> nn.Module:
    """Two 3x3 convolutions, 3 -> 8 -> 2 channels: cheap enough for the stitching's own cost to show."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))


def _big_contender(name: str, args: argparse.Namespace, device: torch.device) -> Callable[[], torch.Tensor]:
    """The big image's call: uint8 on the CPU, normalised per window batch (MONAI: a float32 copy made first)."""
    torch.manual_seed(0)
    model = _light().to(device).eval()
    normalize = BatchNormalize()
    image = torch.randint(0, 256, (1, 3, args.big, args.big), dtype=torch.uint8)  # 3 bytes a pixel
    if name == "window batch":  # one forward pass of a window batch: the "few windows" of the bound
        window = image[:, :, :512, :512].expand(args.sw_batch_size, -1, -1, -1)
        return lambda: model(normalize(window.to(device)))
    if name == "monai":
        monai, floats = _monai(), normalize(image)  # MONAI computes and returns in the input's dtype
        del image
        return lambda: monai(
            floats, (512, 512), args.sw_batch_size, model, 0.25, "gaussian", sw_device=device, device="cpu"
        )
    return lambda: sliding_window(
        model, image, window=512, overlap=0.25, blend="gaussian", sw_batch_size=args.sw_batch_size,
        device=device, output_device="cpu", transform=normalize,
    )  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """Measure one call in this fresh process and print its figures as JSON (``--child``)."""
    name, blend = args.child.split(":")
    device = torch.device(args.device)
    fn = _big_contender(name, args, device) if blend == "big" else _contender(name, blend, args, device)
    wall, cpu, host, gpu, out = measure(fn, device)
    print(json.dumps({"seconds": wall, "cpu_s": cpu, "peak_host_mib": host / MIB, "peak_gpu_mib": gpu / MIB,
                      "shape": list(out.shape), "output_device": str(out.device)}))  # fmt: skip


def in_child(name: str, blend: str, argv: list[str]) -> dict[str, Any]:
    """Run ``--child name:blend`` in a fresh process (allocator settings of ``MEMORY_ENV``) and read its figures."""
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--child", f"{name}:{blend}"],
        capture_output=True, text=True, env={**os.environ, **MEMORY_ENV}, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the {name} {blend} measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, device: torch.device, argv: list[str]) -> list[dict[str, Any]]:
    names = ["monai", "trainkit"] if _monai() is not None else ["trainkit"]
    megapixels = args.size**2 / 1e6
    rows = []
    for blend in ("constant", "gaussian"):
        calls = {name: _contender(name, blend, args, device) for name in names}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        outputs = {name: measure(fn, device)[-1] for name, fn in calls.items()}  # warm-up (allocator, cuDNN)
        for _ in range(args.runs):
            for name, fn in calls.items():  # interleaved
                wall, cpu, *_ = measure(fn, device)
                runs[name].append((wall, cpu))
        diff = (outputs["trainkit"] - outputs["monai"]).abs().max().item() if "monai" in outputs else float("nan")
        del outputs, calls
        for name in names:
            memory = in_child(name, blend, argv)
            rows.append({
                "blend": blend, "impl": name, "max_abs_diff": diff,
                "mp_per_s": megapixels / statistics.median(r[0] for r in runs[name]),
                "cpu_s": statistics.median(r[1] for r in runs[name]),
                "peak_host_mib": memory["peak_host_mib"], "peak_gpu_mib": memory["peak_gpu_mib"],
            })  # fmt: skip
    if len(names) == 1:
        print("MONAI is not installed (`pip install monai`): trainkit alone, no comparison")
    return rows


def big(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "size": args.big,
        "output_mib": 2 * args.big**2 * 4 / MIB,
        "image_mib": 3 * args.big**2 / MIB,
    }
    result["window batch"] = in_child("window batch", "big", argv)
    result["trainkit"] = in_child("trainkit", "big", argv)
    if args.monai_big and _monai() is not None:
        result["monai"] = in_child("monai", "big", argv)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1024, help="side of the comparison image")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--model", choices=("unet", "light"), default="unet", help="light: two 3x3 convolutions")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as torch chooses)")
    parser.add_argument("--big", type=int, default=0, help="side of the big image (0: skip it)")
    parser.add_argument("--monai-big", action="store_true", help="run MONAI on the big image too")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # NAME:BLEND, one measurement in a fresh process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    argv = [
        f"--{k}={getattr(args, k.replace('-', '_'))}"
        for k in ("device", "size", "window", "model", "overlap", "sw-batch-size", "threads", "big")
    ]
    device = torch.device(args.device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, trainkit {trainkit.__version__} at {commit}"
    )
    rows = compare(args, device, argv)
    print(
        f"\n{args.size}x{args.size} image, window {args.window}, overlap {args.overlap}, sw_batch_size "
        f"{args.sw_batch_size}, {MODELS[args.model]}; MP/s and CPU s: medians of {args.runs} "
        "interleaved runs; peak: one run in a fresh process"
    )
    print(
        f"{'blend':<10}{'impl':<10}{'MP/s':>8}{'CPU s':>8}{'peak host MiB':>15}{'peak GPU MiB':>14}{'max |diff|':>12}"
    )
    for r in rows:
        print(
            f"{r['blend']:<10}{r['impl']:<10}{r['mp_per_s']:>8.3f}{r['cpu_s']:>8.2f}{r['peak_host_mib']:>15.1f}"
            f"{r['peak_gpu_mib']:>14.1f}{r['max_abs_diff']:>12.2e}"
        )
    by = {(r["blend"], r["impl"]): r for r in rows}
    memory = "peak_gpu_mib" if device.type == "cuda" else "peak_host_mib"
    for blend in ("constant", "gaussian"):
        if (blend, "monai") in by:
            tk, mo = by[blend, "trainkit"], by[blend, "monai"]
            print(
                f"{blend}: trainkit/MONAI throughput {tk['mp_per_s'] / mo['mp_per_s']:.2f}x (CPU time "
                f"{mo['cpu_s'] / tk['cpu_s']:.2f}x), peak memory {tk[memory] / mo[memory]:.2f}x"
            )
    result: dict[str, Any] = {"compare": rows}
    if args.big:
        result["big"] = b = big(args, argv)
        w = b["window batch"]
        print(
            f"\n{b['size']}x{b['size']} uint8 image ({b['image_mib']:.0f} MiB, allocated before the call), 2 classes, "
            f"output float32 on the CPU: {b['output_mib']:.0f} MiB; one forward pass of {args.sw_batch_size} windows "
            f"of 512: {w['peak_host_mib']:.0f} MiB host, {w['peak_gpu_mib']:.0f} MiB GPU"
        )
        for name in ("trainkit", "monai"):
            if name in b:
                r = b[name]
                print(
                    f"{name:<9} {r['seconds']:7.1f} s, peak host {r['peak_host_mib']:7.0f} MiB = output "
                    f"+ {r['peak_host_mib'] - b['output_mib']:.0f} MiB "
                    f"({r['peak_host_mib'] / b['output_mib']:.2f}x the output), peak GPU {r['peak_gpu_mib']:.0f} MiB"
                )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
