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

Variants with one metric at its default arguments, each against a hand loop that computes the same
number itself (SGD, batch 32, fp32): ``acc``, a tiny MLP (32 -> 64 -> 4) with ``Accuracy()`` against
``correct += (out.argmax(1) == y).sum()``; ``miou`` and ``dice``, a tiny conv net on ``[N, 3, 16, 16]``
images and ``[N, 16, 16]`` int64 masks (4 classes) with ``MeanIoU(num_classes=4)`` / ``Dice(num_classes=4)``
against a hand loop that keeps a ``torch.bincount`` confusion matrix and computes IoU / Dice from it at
the end of each epoch. ``hand+tk.metric`` is the hand loop with the trainkit metric in place of its own.

``--micro`` times ``metric.update(logits, target)`` alone (plus one ``compute()`` per round) against the
hand-written update, for each built-in metric at its default arguments and a few other arguments.

tqdm draws bars only on a terminal. With ``--display tty`` (the default) the Trainer's stdout is a
pseudo-terminal drained by a thread, so the bars are really drawn; ``--display stdout`` keeps the real
stdout (bars when it is a terminal, one line an epoch otherwise). The table says which was used.

Targets (issues 2 and 11): trainkit <= 1.03x the hand loop; a metric update <= 1.1x the hand-written one.

Usage:
    .venv/bin/python benchmarks/loop_overhead.py --reps 9 --epochs 3 --threads 1
    .venv/bin/python benchmarks/loop_overhead.py --variants acc miou dice --no-peers --threads 1
    .venv/bin/python benchmarks/loop_overhead.py --micro --threads 1
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
import subprocess
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
from trainkit.metrics import Accuracy, ConfusionMatrix, Dice, MeanIoU, Metric, PixelAccuracy

DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the script


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def make_loader(n: int, batch_size: int, pin_memory: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, pin_memory=pin_memory)


CLASSES = 4  # of the one-metric variants


def make_scored_setup(variant: str, n: int) -> tuple[nn.Module, DataLoader, Callable[[], Metric]]:
    """The model, loader (batch 32) and trainkit metric of a one-metric variant (``acc``, ``miou``, ``dice``)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if variant == "acc":
        model: nn.Module = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, CLASSES))
        data = TensorDataset(torch.randn(n, 32, generator=g), torch.randint(0, CLASSES, (n,), generator=g))
        return model, DataLoader(data, batch_size=32, shuffle=True), Accuracy
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, CLASSES, 1))
    n //= 4  # a conv step costs more; keep runs of similar length
    data = TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (n, 16, 16), generator=g))
    return (
        model,
        DataLoader(data, batch_size=32, shuffle=True),
        lambda: {"miou": MeanIoU, "dice": Dice}[variant](CLASSES),
    )


def hand_scored_loop(
    model: nn.Module, loader: DataLoader, epochs: int, *, device: torch.device, score: str, metric: Metric | None
) -> None:
    """A plain SGD loop computing its score by hand (``metric=None``) or with a trainkit metric."""
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    k = CLASSES
    model.train()
    for _ in range(epochs):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        confmat = torch.zeros(k * k, dtype=torch.int64, device=device)
        seen = 0
        if metric is not None:
            metric.reset()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            if metric is not None:
                metric.update(out.detach(), y)
            elif score == "acc":
                correct += (out.argmax(1) == y).sum()
            else:
                confmat += torch.bincount(y.reshape(-1) * k + out.argmax(1).reshape(-1), minlength=k * k)
        if metric is not None:
            value = float(metric.compute())
        elif score == "acc":
            value = int(correct) / seen
        else:
            matrix = confmat.view(k, k).double()
            tp, predicted, actual = matrix.diagonal(), matrix.sum(0), matrix.sum(1)
            per_class = tp / (predicted + actual - tp) if score == "miou" else 2 * tp / (predicted + actual)
            value = float(per_class.nanmean())
        print(f"loss {float(loss_sum) / seen:.4f}  {score} {value:.4f}", file=DEVNULL)


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
    metrics: dict[str, Metric] | None = None,
    sgd: bool = False,
) -> None:
    """``Trainer.fit`` with its progress bar and one metric; with ``callbacks``, the built-in ones and a run_dir."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if sgd else torch.optim.Adam(model.parameters(), lr=1e-3)
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
            metrics=metrics if metrics is not None else {"acc": Accuracy(num_classes=10)},
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


SCORED = ("acc", "miou", "dice")

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
) -> tuple[dict[str, Callable[[], None]], int]:
    """The runs of one variant, each on a fresh copy of the same initial model, and the steps of a run."""
    runs: dict[str, Callable[[], None]]
    if variant in SCORED:
        model, data, make_metric = make_scored_setup(variant, len(loader.dataset))  # type: ignore[arg-type]
        runs = {
            "hand loop": lambda: hand_scored_loop(
                copy.deepcopy(model), data, epochs, device=device, score=variant, metric=None
            ),
            "hand+tk.metric": lambda: hand_scored_loop(
                copy.deepcopy(model), data, epochs, device=device, score=variant, metric=make_metric()
            ),
            "trainkit": lambda: trainkit_fit(
                copy.deepcopy(model), data, epochs, device=device, amp=None, grad_accum=1, callbacks=False,
                metrics={variant: make_metric()}, sgd=True,
            ),
        }  # fmt: skip
        return runs, epochs * len(data)
    amp = "bf16" if variant == "bf16" else None
    accum = 4 if variant == "accum4" else 1
    runs = {
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
    return runs, epochs * len(loader)


def micro_cases() -> dict[str, tuple[Callable[[], Metric], Callable[[torch.Tensor, torch.Tensor], Any], str]]:
    """Name -> (trainkit metric, hand-written update returning its counts, input kind)."""
    k = CLASSES
    state: dict[str, torch.Tensor] = {}

    def hand_accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state["correct"] += (out.argmax(1) == y).sum()
        return state["correct"]

    def hand_accuracy_ignoring(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kept = y != -100
        state["correct"] += ((out.argmax(1) == y) & kept).sum()
        state["total"] += kept.sum()
        return state["correct"]

    def hand_top2(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state["correct"] += (out.topk(2, 1).indices == y.unsqueeze(1)).any(1).sum()
        return state["correct"]

    def hand_confmat(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state["confmat"] += torch.bincount(y.reshape(-1) * k + out.argmax(1).reshape(-1), minlength=k * k)
        return state["confmat"]

    def start(update: Callable[[torch.Tensor, torch.Tensor], Any]) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        def first(out: torch.Tensor, y: torch.Tensor) -> Any:  # zeroed counts, like a fresh metric
            state.update(correct=torch.zeros((), dtype=torch.int64), total=torch.zeros((), dtype=torch.int64))
            state["confmat"] = torch.zeros(k * k, dtype=torch.int64)
            return update(out, y)

        first.update = update  # type: ignore[attr-defined]
        return first

    def counted_each_batch() -> Metric:
        # The same metric with its kept ids counted after every update: what the one path would cost
        # without counting batches in groups (a setting for this measurement only).
        metric = Accuracy()
        metric._COUNT_EVERY = 1  # type: ignore[misc]
        return metric

    return {
        "Accuracy()": (Accuracy, start(hand_accuracy), "classes"),
        "MeanIoU(4)": (lambda: MeanIoU(k), start(hand_confmat), "pixels"),
        "Dice(4)": (lambda: Dice(k), start(hand_confmat), "pixels"),
        "PixelAccuracy(4)": (lambda: PixelAccuracy(k), start(hand_confmat), "pixels"),
        "ConfusionMatrix(4)": (lambda: ConfusionMatrix(k), start(hand_confmat), "pixels"),
        "Accuracy(num_classes=4)": (lambda: Accuracy(k), start(hand_accuracy), "classes"),
        "Accuracy(ignore_index=-100)": (lambda: Accuracy(ignore_index=-100), start(hand_accuracy_ignoring), "classes"),
        "Accuracy(top_k=2)": (lambda: Accuracy(top_k=2), start(hand_top2), "classes"),
        "MeanIoU(4, ignore_index=None)": (lambda: MeanIoU(k, ignore_index=None), start(hand_confmat), "pixels"),
        "Accuracy(), counted each batch": (counted_each_batch, start(hand_accuracy), "classes"),
    }


def metric_epoch(metric: Metric, out: torch.Tensor, y: torch.Tensor, n: int) -> None:
    metric.reset()
    for _ in range(n):
        metric.update(out, y)
    metric.compute()


def hand_epoch(hand: Any, out: torch.Tensor, y: torch.Tensor, n: int) -> None:
    counts = hand(out, y)  # the first call zeroes the counts
    for _ in range(n - 1):
        counts = hand.update(out, y)
    counts.tolist()


def micro_benchmark(reps: int, clock: Callable[[], float]) -> None:
    """Time ``metric.update`` against the hand-written update, interleaved.

    A round is an epoch of each: ``reset()``, 512 updates (32 for pixels) and one read of the value, against
    zeroed counts, the same updates by hand and one read. Which of the two goes first alternates between
    rounds. Garbage is collected once a round, before both, and not during it: right after a collection
    the caches are cold, which costs the side that runs more Python more (up to 10% here).
    """
    g = torch.Generator().manual_seed(0)
    inputs = {
        "classes": (torch.randn(32, CLASSES, generator=g), torch.randint(0, CLASSES, (32,), generator=g)),
        "pixels": (torch.randn(32, CLASSES, 16, 16, generator=g), torch.randint(0, CLASSES, (32, 16, 16), generator=g)),
    }
    updates = {"classes": 512, "pixels": 32}
    cases = micro_cases()
    metrics = {name: make_metric() for name, (make_metric, _, _) in cases.items()}
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
    for rep in range(reps + 1):  # round 0 warms up
        for name, (_, hand, kind) in cases.items():
            out, y = inputs[kind]
            n, metric = updates[kind], metrics[name]

            epochs = {
                "trainkit": lambda m=metric, out=out, y=y, n=n: metric_epoch(m, out, y, n),
                "hand": lambda h=hand, out=out, y=y, n=n: hand_epoch(h, out, y, n),
            }
            elapsed = {}
            gc.collect()
            gc.disable()
            for who in sorted(epochs, reverse=rep % 2 == 1):
                start = clock()
                epochs[who]()
                elapsed[who] = clock() - start
            gc.enable()
            if rep > 0:
                results[name][0].append(1e6 * elapsed["trainkit"] / n)
                results[name][1].append(1e6 * elapsed["hand"] / n)
    print(f"{'metric (inputs)':<56} {'us/update':>10} {'hand us':>8} {'ratio':>7}")
    for name, (mine_us, hand_us) in results.items():
        shape = "[32, 4] logits" if cases[name][2] == "classes" else "[32, 4, 16, 16] logits"
        ratio = statistics.median(m / h for m, h in zip(mine_us, hand_us, strict=True))
        print(
            f"{name + ' (' + shape + ')':<56} {statistics.median(mine_us):>10.2f} {statistics.median(hand_us):>8.2f} "
            f"{ratio:>6.3f}x"
        )


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
    parser.add_argument("--micro", action="store_true", help="time metric updates alone against hand-written ones")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    here = os.path.dirname(os.path.abspath(__file__))
    git = ["git", "-C", here, "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False)
    header = (
        f"torch {torch.__version__}, trainkit {trainkit.__version__} ({trainkit.__file__}, commit "
        f"{commit.stdout.strip() or '?'}), Python {platform.python_version()}\n"
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}; clock: {args.clock} time; "
        f"load average before: {load_before}"
    )
    if args.micro:
        micro_benchmark(args.reps, clock)
        print(header)
        print(
            f"{args.reps} interleaved rounds after a warm-up; a round: reset, 512 updates ([32, 4] logits) or 32 "
            "([32, 4, 16, 16] logits) and one read, for trainkit and by hand; ratio: median of the rounds' ratios"
        )
        return
    loader = make_loader(args.samples, args.batch_size, pin_memory=device.type == "cuda")
    base = make_model()
    contenders: dict[str, dict[str, Callable[[], None]]] = {}
    steps: dict[str, int] = {}
    for v in args.variants:
        contenders[v], steps[v] = contenders_for(v, base, loader, args.epochs, device, not args.no_peers)

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
    print(header)
    print(f"device {where}; trainkit display: {display}")
    print(
        f"MLP 64-256-256-10, Adam, {args.samples} samples, batch {args.batch_size}, {args.epochs} epochs a run, "
        f"{args.reps} interleaved rounds after a warm-up; one-metric variants: SGD, batch 32, {args.samples} "
        f"samples (acc) or {args.samples // 4} (miou, dice)"
    )
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    for name, error in failed.items():
        print(f"{name} failed, left out: {error}")
    print()
    print(f"{'variant':<10} {'contender':<14} {'median s':>9} {'ms/step':>8} {'min s':>7} {'ratio':>7}")
    for variant, runs in contenders.items():
        hand = statistics.median(times[(variant, "hand loop")])
        for name in (n for n in runs if n not in failed):
            samples = times[(variant, name)]
            median = statistics.median(samples)
            print(
                f"{variant:<10} {name:<14} {median:>9.3f} {1000 * median / steps[variant]:>8.3f} "
                f"{min(samples):>7.3f} {median / hand:>6.3f}x"
            )


if __name__ == "__main__":
    main()
