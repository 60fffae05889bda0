"""Time to quality: the demo's validation mIoU against wall time on this machine.

    python benchmarks/time_to_quality.py                 # the demo's defaults
    python benchmarks/time_to_quality.py --epochs 16     # other settings

Runs `trainkit demo` in-process with a fresh run directory, then prints, per epoch, the elapsed
time since the start (data generation included) and the validation mIoU, and the first moment the
target (mIoU >= 0.90) was reached. Target: within 180 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from trainkit.cli.demo import run_demo
from trainkit.engine.callbacks import Callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--run-dir", help="keep the demo's outputs here (default: a temporary folder)")
    args = parser.parse_args()
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="ttq-")) / "demo"
    start = time.perf_counter()
    stamps: list[float] = []

    class Stamp(Callback):
        def on_epoch_end(self, trainer, logs):
            stamps.append(time.perf_counter() - start)

    kwargs = {"epochs": args.epochs} if args.epochs else {}
    result = run_demo(run_dir, device=args.device, progress=False, extra_callbacks=[Stamp()], **kwargs)
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    print(f"\n{'epoch':>5}{'elapsed s':>11}{'val mIoU':>10}")
    reached = None
    for row, elapsed in zip(rows, stamps, strict=True):
        miou = float(row["val/miou"])
        print(f"{row['epoch']:>5}{elapsed:>11.1f}{miou:>10.3f}")
        if reached is None and miou >= args.target:
            reached = (int(row["epoch"]), elapsed)
    total = result["seconds"]
    if reached:
        print(f"val mIoU >= {args.target} at epoch {reached[0]} after {reached[1]:.1f} s; whole demo {total:.1f} s")
    else:
        print(f"val mIoU never reached {args.target} (best {result['miou']:.3f}); whole demo {total:.1f} s")


if __name__ == "__main__":
    main()
