"""GPU benchmark: UNet training throughput, memory, overhead against a hand-written loop, and syncs per step.

One self-contained script for a machine with a CUDA GPU (it needs only torch, torchvision and this project).
On a machine without one it degrades to a CPU smoke run with tiny sizes, so it can be checked anywhere.

Measures, for UNet(3, 2, base_channels=64, depth=4) on 256x256 images (uint8 through a pinned DataLoader,
normalised on the device, DiceCE loss, AdamW, mIoU metric):

1. images/s and peak memory of ``Trainer.fit`` for fp32, AMP fp16 (GradScaler) and bf16, with
   channels_last off/on, and torch.compile on/off (bf16, channels_last);
2. trainkit vs the same hand-written loop (bf16), interleaved, median step time and ratio;
3. host-device synchronisations per training step in the steady state, counted with
   ``torch.cuda.set_sync_debug_mode("warn")`` (trainkit must have 0 with bf16).

    python benchmarks/gpu.py                 # full run on a GPU (< 8 minutes on an H100)
    python benchmarks/gpu.py --quick         # smaller, for a first check
    python benchmarks/gpu.py --json out.json # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import trainkit
from trainkit.data.transforms import BatchNormalize
from trainkit.losses import DiceCELoss
from trainkit.metrics import MeanIoU
from trainkit.models import UNet


def make_loader(n: int, size: int, batch_size: int, cuda: bool) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(size // 4, 3 * size // 4, (n, 2), generator=g)
    masks = (
        ((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2) < (size // 5) ** 2
    ).long()
    return DataLoader(
        TensorDataset(images, masks),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        pin_memory=cuda,
        num_workers=2 if cuda else 0,
        persistent_workers=cuda,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer(trainkit.callbacks.Callback):
    """Times batches [warmup, end) and counts synchronising CUDA calls in [warmup + 1, end - 1)."""

    def __init__(self, warmup: int, total: int, device: torch.device, count_syncs: bool):
        self.warmup, self.total, self.device, self.count_syncs = warmup, total, device, count_syncs
        self.start = self.seconds = 0.0
        self.syncs: int | None = None
        self._catch: Any = None
        self._records: list[Any] = []

    def on_train_batch_end(self, trainer, state, output):
        i = state.batch_idx  # batches done
        if i == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        if self.count_syncs and i == self.warmup + 1:
            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        if self.count_syncs and i == self.total - 1 and self._catch is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(None, None, None)
            self.syncs = sum("synchroniz" in str(r.message) for r in self._records)
            self.sync_steps = self.total - 1 - (self.warmup + 1)
        if i == self.total:
            sync(self.device)
            self.seconds = time.perf_counter() - self.start


def run_trainkit(args, device, amp, channels_last=False, compile_model=False, count_syncs=False) -> dict[str, Any]:
    torch.manual_seed(0)
    model = UNet(3, 2, base_channels=args.base_channels, depth=args.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    total = args.warmup + args.steps
    loader = make_loader(total * args.batch_size, args.size, args.batch_size, device.type == "cuda")
    timer = Timer(args.warmup, total, device, count_syncs and device.type == "cuda")
    trainer = trainkit.Trainer(
        model,
        opt,
        DiceCELoss(),
        metrics={"miou": MeanIoU(num_classes=2)},
        amp=amp,
        device=device,
        channels_last=channels_last,
        compile=compile_model,
        progress=False,
        callbacks=[timer],
        batch_transform=BatchNormalize(),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(loader, epochs=1)
    out = {"images_per_s": args.steps * args.batch_size / timer.seconds, "step_ms": 1000 * timer.seconds / args.steps}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if timer.syncs is not None:
        out["syncs_per_step"] = timer.syncs / max(1, timer.sync_steps)
    return out


def run_hand_loop(args, device, dtype: torch.dtype | None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = UNet(3, 2, base_channels=args.base_channels, depth=args.depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    loss_fn, metric, normalize = DiceCELoss(), MeanIoU(num_classes=2), BatchNormalize()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    total = args.warmup + args.steps
    loader = make_loader(total * args.batch_size, args.size, args.batch_size, device.type == "cuda")
    model.train()
    start = 0.0
    for i, (images, masks) in enumerate(loader):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        images = normalize(images.to(device, non_blocking=True))
        masks = masks.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
            loss = loss_fn(logits, masks)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        metric.update(logits.detach(), masks)
    sync(device)
    seconds = time.perf_counter() - start
    metric.compute()
    return {"images_per_s": args.steps * args.batch_size / seconds, "step_ms": 1000 * seconds / args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and no torch.compile")
    parser.add_argument("--json", help="write the figures to this file as JSON")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        args.size, args.batch_size, args.base_channels, args.depth = 256, 16, 64, 4
        args.warmup, args.steps, args.repeats = (5, 15, 2) if args.quick else (8, 30, 3)
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:  # CPU smoke run: checks the script end to end in seconds
        args.size, args.batch_size, args.base_channels, args.depth = 32, 2, 4, 2
        args.warmup, args.steps, args.repeats = 1, 2, 2
        args.no_compile = True
        name = "CPU (smoke run)"
    print(f"device: {name}; torch {torch.__version__}; trainkit {trainkit.__version__}")
    print(
        f"UNet(3, 2, base_channels={args.base_channels}, depth={args.depth}), {args.size}x{args.size}, "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up"
    )
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "config": vars(args).copy()}

    configs = [("fp32", False, False), ("bf16", False, False), ("bf16", True, False)]
    configs += [("fp16", False, False), ("fp16", True, False)] if cuda else []
    if not args.no_compile and not args.quick:
        configs.append(("bf16", True, True))
    print(
        f"\n{'precision':<10}{'channels_last':>14}{'compile':>9}{'images/s':>11}{'step ms':>9}{'peak GiB':>10}"
        f"{'syncs/step':>12}"
    )
    rows = []
    for amp, cl, comp in configs:
        r = run_trainkit(args, device, amp if amp != "fp32" else False, cl, comp, count_syncs=True)
        rows.append({"precision": amp, "channels_last": cl, "compile": comp, **r})
        print(
            f"{amp:<10}{cl!s:>14}{comp!s:>9}{r['images_per_s']:>11.1f}{r['step_ms']:>9.2f}"
            f"{r.get('peak_mem_gib', float('nan')):>10.2f}{r.get('syncs_per_step', float('nan')):>12.2f}",
            flush=True,
        )
    results["trainkit"] = rows

    print("\ntrainkit vs hand-written loop (bf16, interleaved, median step time)")
    hand, tk = [], []
    for _ in range(args.repeats):
        hand.append(run_hand_loop(args, device, torch.bfloat16)["step_ms"])
        tk.append(run_trainkit(args, device, "bf16")["step_ms"])
    ratio = statistics.median(tk) / statistics.median(hand)
    print(
        f"hand-written {statistics.median(hand):.2f} ms/step, trainkit {statistics.median(tk):.2f} ms/step, "
        f"ratio {ratio:.3f}"
    )
    results["overhead"] = {"hand_ms": hand, "trainkit_ms": tk, "ratio": ratio}

    print("\nnext-batch copy on a side stream (bf16, channels_last), median step time")
    from trainkit.engine import batches as _prefetch

    on, off = [], []
    for _ in range(args.repeats):
        _prefetch.OVERLAP = False
        off.append(run_trainkit(args, device, "bf16", channels_last=True)["step_ms"])
        _prefetch.OVERLAP = True
        on.append(run_trainkit(args, device, "bf16", channels_last=True)["step_ms"])
    print(f"without overlap {statistics.median(off):.2f} ms/step, with overlap {statistics.median(on):.2f} ms/step")
    results["prefetch"] = {"off_ms": off, "on_ms": on}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
