"""Per-step cost of ``trainkit.Trainer`` over a hand-written PyTorch loop, and over peers when they are installed.

Every contender trains the same MLP (64 -> 256 -> 256 -> 10, same initial weights) with Adam on the same
in-memory ``TensorDataset`` through a ``DataLoader(shuffle=True)`` and computes the epoch's mean loss and
accuracy on the device:

* ``hand loop``: the loop a practitioner writes (``zero_grad(set_to_none=True)``, forward, loss, backward,
  step; loss and correct counts summed on the device with ``argmax``/``sum``, read once an epoch);
* ``hand+tk.acc``: the same loop with ``trainkit.metrics.Accuracy`` for the accuracy, which separates the
  engine's cost from the metric's;
* ``trainkit``: ``Trainer.fit`` with ``progress=True`` and ``metrics={"acc": trainkit.metrics.Accuracy(10)}``;
* ``lightning`` / ``ignite`` / ``accelerate``: the same training in each framework, when importable
  (skipped otherwise, with a note), with their bars off and one accuracy metric.

Runs are interleaved (hand, trainkit, peers, hand, trainkit, ...) after one warm-up round, so drifts in
machine load hit every contender alike; the table shows the median seconds per run, the per-step time
and the ratio to the hand loop of the same variant. Variants: ``fp32``; ``bf16`` (autocast);
``accum4`` (``grad_accum=4``); ``callbacks`` (EarlyStopping + LearningRateMonitor + ModelCheckpoint writing
into a temporary ``run_dir``, which also writes ``metrics.csv`` and ``curves.png`` once a fit).

tqdm draws bars only on a terminal. With ``--display tty`` (the default) the Trainer's stdout is a
pseudo-terminal drained by a thread, so the bars are really drawn; ``--display stdout`` keeps the real
stdout (bars when it is a terminal, one line an epoch otherwise). The table says which was used.

Target (issue 2): trainkit <= 1.03x the hand loop.

Usage:
    .venv/bin/python benchmarks/loop_overhead.py --reps 9 --epochs 3 --threads 1
    .venv/bin/python benchmarks/loop_overhead.py --device cuda --variants fp32 bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainkit
from trainkit.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from trainkit.metrics import Accuracy

DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the script


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def make_loader(n: int, batch_size: int, pin_memory: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, pin_memory=pin_memory)


def hand_loop(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    *,
    device: torch.device,
    amp: str | None,
    grad_accum: int,
    metric: Accuracy | None = None,
) -> None:
    """The loop a practitioner writes, summing loss and correct counts on the device like the Trainer."""
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    dtype = torch.bfloat16 if amp == "bf16" else None
    model.train()
    for _ in range(epochs):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        if metric is not None:
            metric.reset()
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if i % grad_accum == 0:
                opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(x)
                loss = loss_fn(out, y)
            (loss / grad_accum if grad_accum > 1 else loss).backward()
            if (i + 1) % grad_accum == 0 or i + 1 == len(loader):
                opt.step()
            loss_sum += loss.detach() * len(y)
            if metric is None:
                correct += (out.argmax(1) == y).sum()
            else:
                metric.update(out.detach(), y)
            seen += len(y)
        acc = float(metric.compute()) if metric is not None else int(correct) / seen
        print(f"loss {float(loss_sum) / seen:.4f}  acc {acc:.4f}", file=DEVNULL)


def trainkit_fit(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    *,
    device: torch.device,
    amp: str | None,
    grad_accum: int,
    callbacks: bool,
) -> None:
    """``Trainer.fit`` with its progress bar and one metric; with ``callbacks``, the built-in ones and a run_dir."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        if callbacks:
            extra["run_dir"] = stack.enter_context(tempfile.TemporaryDirectory())
            extra["callbacks"] = [
                EarlyStopping("train/loss", patience=5),
                LearningRateMonitor(),
                ModelCheckpoint(monitor="train/loss"),
            ]
        trainer = trainkit.Trainer(
            model,
            opt,
            nn.CrossEntropyLoss(),
            metrics={"acc": Accuracy(num_classes=10)},
            amp=amp or False,
            grad_accum=grad_accum,
            device=device,
            progress=True,
            **extra,
        )
        trainer.fit(loader, epochs=epochs)


def lightning_fit(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    import lightning as L
    from torchmetrics.classification import MulticlassAccuracy

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.acc = model, MulticlassAccuracy(10, average="micro")

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            out = self.model(x)
            loss = nn.functional.cross_entropy(out, y)
            self.acc(out, y)
            self.log("acc", self.acc, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), loader)


def ignite_fit(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    from ignite.engine import create_supervised_trainer
    from ignite.metrics import Accuracy as IgniteAccuracy

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = create_supervised_trainer(
        model, opt, nn.CrossEntropyLoss(), output_transform=lambda x, y, y_pred, loss: (y_pred, y)
    )
    IgniteAccuracy().attach(trainer, "acc")
    trainer.run(loader, max_epochs=epochs)


def accelerate_fit(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    model.train()
    for _ in range(epochs):
        correct = torch.zeros((), dtype=torch.int64)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            accelerator.backward(nn.functional.cross_entropy(out, y))
            opt.step()
            correct += (out.argmax(1) == y).sum()
        print(int(correct), file=DEVNULL)


PEERS: dict[str, Callable[[nn.Module, DataLoader, int], None]] = {
    "lightning": lightning_fit,
    "ignite": ignite_fit,
    "accelerate": accelerate_fit,
}


@contextlib.contextmanager
def pseudo_terminal() -> Iterator[Any]:
    """A text stream whose ``isatty()`` is true (a pty), drained by a thread so tqdm never blocks."""
    import pty

    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w", buffering=1)

    def drain() -> None:
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield stream
    finally:
        stream.close()
        thread.join(timeout=1)
        os.close(master)


def contenders_for(
    variant: str, base: nn.Module, loader: DataLoader, epochs: int, device: torch.device, peers: bool
) -> dict[str, Callable[[], None]]:
    """The runs of one variant, each on a fresh copy of the same initial model."""
    amp = "bf16" if variant == "bf16" else None
    accum = 4 if variant == "accum4" else 1
    runs: dict[str, Callable[[], None]] = {
        "hand loop": lambda: hand_loop(copy.deepcopy(base), loader, epochs, device=device, amp=amp, grad_accum=accum),
        "trainkit": lambda: trainkit_fit(
            copy.deepcopy(base), loader, epochs, device=device, amp=amp, grad_accum=accum,
            callbacks=variant == "callbacks",
        ),
    }  # fmt: skip
    if variant == "fp32":
        runs["hand+tk.acc"] = lambda: hand_loop(
            copy.deepcopy(base), loader, epochs, device=device, amp=None, grad_accum=1, metric=Accuracy(num_classes=10)
        )
        if peers and device.type == "cpu":
            for name, runner in PEERS.items():
                if importlib.util.find_spec(name) is not None:
                    runs[name] = lambda r=runner: r(copy.deepcopy(base), loader, epochs)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="timed rounds (after one warm-up round)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: least noise)")
    parser.add_argument("--display", choices=("tty", "stdout"), default="tty")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (peers run on the CPU only)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process time (shared hosts)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "accum4", "callbacks"])
    parser.add_argument("--no-peers", action="store_true", help="leave Lightning, Ignite and Accelerate out")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    loader = make_loader(args.samples, args.batch_size, pin_memory=device.type == "cuda")
    steps = args.epochs * len(loader)
    base = make_model()
    contenders = {v: contenders_for(v, base, loader, args.epochs, device, not args.no_peers) for v in args.variants}

    times: dict[tuple[str, str], list[float]] = {}
    failed: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if args.display == "tty" and hasattr(os, "openpty"):
            stdout: Any = stack.enter_context(pseudo_terminal())
        else:
            stdout = sys.stdout
        display = "tqdm bars" if stdout.isatty() else "one line an epoch (stdout is not a terminal)"
        for rep in range(args.reps + 1):  # round 0 warms up
            for variant, runs in contenders.items():
                for name, run in runs.items():
                    if name in failed:
                        continue
                    gc.collect()
                    with contextlib.redirect_stdout(stdout):
                        start = clock()
                        try:
                            run()
                        except Exception as err:  # a peer's API change must not cost the other figures
                            if name not in PEERS:
                                raise
                            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0]
                            continue
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        elapsed = clock() - start
                    if rep > 0:
                        times.setdefault((variant, name), []).append(elapsed)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, trainkit {trainkit.__version__}, Python {platform.python_version()}")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}; device {where}")
    print(f"clock: {args.clock} time; load average before: {load_before}; trainkit display: {display}")
    print(
        f"MLP 64-256-256-10, Adam, {args.samples} samples, batch {args.batch_size}, {args.epochs} epochs "
        f"({steps} steps) a run, {args.reps} interleaved rounds after a warm-up"
    )
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    for name, error in failed.items():
        print(f"{name} failed, left out: {error}")
    print()
    print(f"{'variant':<10} {'contender':<12} {'median s':>9} {'ms/step':>8} {'min s':>7} {'ratio':>7}")
    for variant, runs in contenders.items():
        hand = statistics.median(times[(variant, "hand loop")])
        for name in (n for n in runs if n not in failed):
            samples = times[(variant, name)]
            median = statistics.median(samples)
            print(
                f"{variant:<10} {name:<12} {median:>9.3f} {1000 * median / steps:>8.3f} {min(samples):>7.3f} "
                f"{median / hand:>6.3f}x"
            )


if __name__ == "__main__":
    main()
